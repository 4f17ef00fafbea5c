"""AdamX (Tran & Phong, IEEE Access 2019): AMSGrad whose maximum accounts for a decaying β1."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from ..quantization.formats import DEFAULT_MIN_COMPRESSED_NUMEL
from .adam import Adam
from .amsgrad import AMSGrad
from .generic import ParamGroup, ParamState
from .schedules import adamx_factor
from .weight_decay import WeightDecay

__all__ = ["AdamX"]


class AdamX(AMSGrad):
    r"""AdamX: AMSGrad with the running maximum rescaled as β1 decays.

    Tran & Phong show that the convergence proof of AMSGrad (Reddi et al., Theorem 4) treats
    :math:`β_{1,t}` and :math:`β_{1,t-1}` as equal where they are not, and fix it with this
    algorithm (their Algorithm 2). Per element, at step :math:`t = 1, 2, \dots`, with
    :math:`β_{1,t} = β_1 λ^{t-1}` (``beta1_decay=λ``):

    .. math::

        m_t &= β_{1,t} m_{t-1} + (1 - β_{1,t}) g_t \\
        v_t &= β_2 v_{t-1} + (1 - β_2) g_t^2 \\
        \hat{v}_1 &= v_1, \qquad
        \hat{v}_t = \max\Big(\frac{(1 - β_{1,t})^2}{(1 - β_{1,t-1})^2} \hat{v}_{t-1},\; v_t\Big) \\
        θ_t &= θ_{t-1} - α_t \frac{m_t}{\sqrt{\hat{v}_t} + ε}

    with :math:`m_0 = v_0 = 0`: the paper's algorithm, with an ε added (``eps=0`` gives theirs
    exactly, as long as no :math:`\hat{v}_t` is 0) and its step size :math:`α_t` an LR scheduler
    (α/√t, say, as for :class:`~amsgrad.AMSGrad`'s Algorithm 2). :math:`\hat{v}_t` is the state
    ``max_exp_avg_sq``, so state dicts have ``torch.optim.Adam(amsgrad=True)``'s keys.

    With a constant β1 (λ = 1, the default) the factor is exactly 1 and AdamX *is* AMSGrad's
    Algorithm 2, ``AMSGrad(bias_correction=False)``, bit for bit, on every implementation (C
    kernel included). With λ < 1 the factor is above 1, so :math:`\hat{v}` grows as
    :math:`β_{1,t}` shrinks, and the step runs multi-tensor (no fused kernel has the factor).

    ``bias_correction=True`` applies Adam's corrections to this update (:class:`~amsgrad.Adam`,
    with :math:`1 - \prod_{k \le t} β_{1,k}` for the first moment); not in the paper.

    Args:
        params, lr, betas, eps, weight_decay, optimized_update, maximize, foreach, fused,
        nonfinite, state_precision, stochastic_rounding, min_compressed_numel, capturable,
        differentiable: as for :class:`~amsgrad.Adam`.
        beta1_decay: λ in ``(0, 1]``: :math:`β_{1,t} = β_1 λ^{t-1}` (1: constant).
        bias_correction: ``False`` (default), the paper's algorithm; ``True`` adds Adam's.
        defaults: extra param-group settings, for subclasses (never modified).

    The group setting ``max_of`` is ``"adamx"`` (``AMSGrad`` takes ``"raw"`` or ``"corrected"``).

    References:
        Phuong Thi Tran and Le Trieu Phong. *On the Convergence Proof of AMSGrad and a New
        Version*. IEEE Access 7, 2019. arXiv:1904.03590.
        Sashank J. Reddi, Satyen Kale and Sanjiv Kumar. *On the Convergence of Adam and
        Beyond*. ICLR 2018. arXiv:1904.09237.

    Example — with a constant β1, the paper's AMSGrad:
        >>> import torch, amsgrad
        >>> w1 = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
        >>> w2 = torch.nn.Parameter(w1.detach().clone())
        >>> adamx = amsgrad.AdamX([w1], lr=0.1)
        >>> paper = amsgrad.AMSGrad([w2], lr=0.1, bias_correction=False)
        >>> for _ in range(50):
        ...     for w, opt in ((w1, adamx), (w2, paper)):
        ...         opt.zero_grad()
        ...         (w ** 4).sum().backward()
        ...         _ = opt.step()
        >>> torch.equal(w1, w2)
        True
    """

    MAX_OF = ("adamx",)

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[ParamGroup],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: WeightDecay | float | None = None,
        optimized_update: bool = True,
        defaults: dict[str, Any] | None = None,
        *,
        beta1_decay: float = 1.0,
        bias_correction: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str = "propagate",
        state_precision: Any = None,
        stochastic_rounding: bool = False,
        min_compressed_numel: int = DEFAULT_MIN_COMPRESSED_NUMEL,
        capturable: bool = False,
        differentiable: bool = False,
    ):
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            optimized_update,
            True,
            defaults,
            maximize=maximize,
            max_of="adamx",
            bias_correction=bias_correction,
            foreach=foreach,
            fused=fused,
            nonfinite=nonfinite,
            state_precision=state_precision,
            stochastic_rounding=stochastic_rounding,
            min_compressed_numel=min_compressed_numel,
            capturable=capturable,
            differentiable=differentiable,
            beta1_decay=beta1_decay,
        )

    def _max_of(self, group: ParamGroup) -> str | None:
        """For the kernels: with a constant β1 the factor is 1, and the maximum is AMSGrad's raw one."""
        if not group["amsgrad"]:
            return None
        return "raw" if group["beta1_decay"] == 1.0 else "adamx"

    def _complete_loaded_group(self, saved: ParamGroup, current: ParamGroup) -> ParamGroup:
        """A ``torch.optim.Adam(amsgrad=True)`` state dict holds the maximum of raw :math:`v_t`, which is
        AdamX's for a constant β1: it continues as AdamX."""
        if saved.get("amsgrad", False):
            saved.setdefault("max_of", "adamx")
        return super()._complete_loaded_group(saved, current)

    def get_mv(self, state: ParamState, group: ParamGroup, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:math:`(m_t, \\hat{v}_t)` with :math:`\\hat{v}_t = \\max(((1 - β_{1,t})/(1 - β_{1,t-1}))^2 \\hat{v}_{t-1}, v_t)`."""
        m, v = Adam.get_mv(self, state, group, grad)
        if not group["amsgrad"]:
            return m, v
        v_max = state.get("max_exp_avg_sq")
        if v_max is None:  # a plain Adam state dict loaded
            v_max = state["max_exp_avg_sq"] = torch.zeros_like(v, memory_format=torch.preserve_format)
        beta1 = group["betas"][0]
        factor = adamx_factor(beta1, group["beta1_decay"], float(state["step"]))
        if torch.is_grad_enabled():  # recorded by autograd (differentiable=True): out of place, as AMSGrad's
            v_max.copy_(torch.maximum(v_max * factor, v.clone()))
        else:
            if factor != 1.0:
                v_max.mul_(factor)
            torch.maximum(v_max, v, out=v_max)
        return m, v_max
