"""AMSGrad (Reddi, Kale & Kumar, ICLR 2018): Adam with a non-decreasing second moment."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from ..quantization.formats import DEFAULT_MIN_COMPRESSED_NUMEL
from ..quantization.state import decode, encode, init_storage, state_layout
from ._validation import check_bool, check_choice
from .adam import Adam
from .generic import ParamGroup, ParamState
from .weight_decay import WeightDecay

__all__ = ["AMSGrad", "MAX_OF_CHOICES"]

#: Where the running maximum is taken: over raw v_t, or over bias-corrected v_t / (1 - β2^t).
MAX_OF_CHOICES = ("raw", "corrected")


class AMSGrad(Adam):
    r"""AMSGrad: Adam whose denominator uses the running maximum of the second moment.

    Adam's step can *grow* when a large, rare gradient leaves :math:`v_t` and its effect
    decays; on the paper's online problem this drives Adam to the worst point. AMSGrad keeps
    :math:`\hat{v}_t = \max(\hat{v}_{t-1}, v_t)`, so every element's effective step size
    :math:`α / \sqrt{\hat{v}_t}` never increases. Per element, at step :math:`t`:

    .. math::

        m_t &= β_1 m_{t-1} + (1 - β_1) g_t \\
        v_t &= β_2 v_{t-1} + (1 - β_2) g_t^2 \\
        \hat{v}_t &= \max(\hat{v}_{t-1}, v_t) \\
        θ_t &= θ_{t-1} - α \frac{\sqrt{1 - β_2^t}}{1 - β_1^t} \cdot \frac{m_t}{\sqrt{\hat{v}_t} + \hat{ε}}
              && \text{optimized_update=True (default)} \\
        θ_t &= θ_{t-1} - \frac{α}{1 - β_1^t} \cdot \frac{m_t}{\sqrt{\hat{v}_t / (1 - β_2^t)} + ε}
              && \text{optimized_update=False}

    with :math:`m_0 = v_0 = \hat{v}_0 = 0` and :math:`\hat{ε} = ε\sqrt{1 - β_2^t}` relating the
    two forms (see :class:`~amsgrad.Adam`). :math:`\hat{v}_t` is the state ``max_exp_avg_sq``.

    Variants, each a per-group setting:

    * ``max_of="raw"`` (default): the maximum of raw :math:`v_t`, as in ``torch.optim.Adam``
      (``amsgrad=True``) and labml_nn.
    * ``max_of="corrected"``: the maximum of :math:`v_t / (1 - β_2^t)`, as optax's
      ``scale_by_amsgrad``; ``max_exp_avg_sq`` then holds the corrected maximum and the update
      applies no further correction to it. The variants differ only while :math:`β_2^t` is not
      negligible, but there the raw maximum can keep an early, under-corrected value.
    * ``bias_correction=False``: the paper's Algorithm 2 exactly,
      :math:`θ_t = θ_{t-1} - α_t m_t / (\sqrt{\hat{v}_t} + ε)`, where ``eps=0`` is allowed
      (the paper has no ε). The paper's step size :math:`α_t = α/\sqrt{t}` is an LR scheduler::

          opt = AMSGrad(params, lr=alpha, eps=0.0, bias_correction=False)
          sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: (k + 1) ** -0.5)
          # call sched.step() after every opt.step()

      The paper's decaying :math:`β_{1,t} = β_1 λ^{t-1}` is ``beta1_decay=λ`` (see
      :class:`~amsgrad.Adam`); :class:`~amsgrad.AdamX` is the variant whose maximum accounts for it.
    * ``amsgrad=False``: plain :class:`~amsgrad.Adam`.

    Low-memory state: ``state_precision=torch.bfloat16``, ``"int8"`` or ``"int4"`` stores the
    three moments in 6, 3.05 or 1.59 bytes per parameter (torch's AMSGrad: 12). The maximum is
    stored never below its previous decoded value (bfloat16: rounded up; int8/int4: to nearest
    where that allows), so its decoded value never decreases, element by element, at any step
    and in every format, as AMSGrad's analysis needs (see :class:`~amsgrad.Adam` and
    :mod:`amsgrad.quantization`). bitsandbytes refuses 8-bit AMSGrad; torchao rounds the
    maximum to nearest, which lets it decrease.

    Non-finite gradients: the maximum is sticky. One ``inf`` in a gradient makes that element's
    :math:`\hat{v}_t` infinite forever, so its step is 0 and the parameter silently freezes;
    one ``NaN`` poisons :math:`\hat{v}_t` (and the parameter) for good. ``nonfinite="skip"``
    skips such steps (counted in ``skipped_steps``) and ``nonfinite="raise"`` names the
    parameter; the default ``"propagate"`` does what ``torch.optim`` does. See
    :mod:`amsgrad.optimizers.nonfinite`.

    Switching an Adam run to AMSGrad: a ``torch.optim.Adam(amsgrad=False)`` checkpoint (or a
    group with ``amsgrad=False``) loads as plain Adam, since the saved settings win (with a
    warning, when this optimizer was built with ``amsgrad=True``); :meth:`enable_amsgrad`
    turns every such group into AMSGrad in one call, starting :math:`\hat{v}` from the
    loaded :math:`v`.

    Compared with others: with ``optimized_update=False, eps=1e-8`` this is exactly
    ``torch.optim.Adam(..., amsgrad=True)`` (``AdamW`` with ``weight_decay=WeightDecay(λ)``), and
    the state dicts load both ways. optax's ``amsgrad`` is ``max_of="corrected",
    optimized_update=False``. The paper's Algorithm 2 has no bias correction (above).

    Args:
        params, lr, betas, eps, weight_decay, optimized_update, maximize, bias_correction,
        foreach, fused, nonfinite, state_precision, stochastic_rounding, min_compressed_numel, capturable,
        differentiable, beta1_decay: as for
        :class:`~amsgrad.Adam` (implementations too: a subclass that overrides a hook runs on the
        readable path).
        amsgrad: keep the running maximum (``False`` falls back to Adam).
        defaults: extra param-group settings, for subclasses (never modified).
        max_of: ``"raw"`` or ``"corrected"``, as above.

    References:
        Sashank J. Reddi, Satyen Kale and Sanjiv Kumar. *On the Convergence of Adam and
        Beyond*. ICLR 2018. arXiv:1904.09237.

    Example — the same numbers as ``torch.optim.Adam(amsgrad=True)``:
        >>> import torch, amsgrad
        >>> w1 = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
        >>> w2 = torch.nn.Parameter(w1.detach().clone())
        >>> ours = amsgrad.AMSGrad([w1], lr=0.1, eps=1e-8, optimized_update=False)
        >>> theirs = torch.optim.Adam([w2], lr=0.1, amsgrad=True)
        >>> for _ in range(100):
        ...     for w, opt in ((w1, ours), (w2, theirs)):
        ...         opt.zero_grad()
        ...         (w ** 4).sum().backward()
        ...         _ = opt.step()
        >>> bool((w1 - w2).abs().max() < 1e-12)
        True
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[ParamGroup],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: WeightDecay | float | None = None,
        optimized_update: bool = True,
        amsgrad: bool = True,
        defaults: dict[str, Any] | None = None,
        *,
        maximize: bool = False,
        max_of: str = "raw",
        bias_correction: bool = True,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str = "propagate",
        state_precision: Any = None,
        stochastic_rounding: bool = False,
        min_compressed_numel: int = DEFAULT_MIN_COMPRESSED_NUMEL,
        capturable: bool = False,
        differentiable: bool = False,
        beta1_decay: float = 1.0,
    ):
        defaults = {} if defaults is None else dict(defaults)
        defaults.update(amsgrad=amsgrad, max_of=max_of)
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            optimized_update,
            defaults,
            maximize=maximize,
            bias_correction=bias_correction,
            nonfinite=nonfinite,
            foreach=foreach,
            fused=fused,
            state_precision=state_precision,
            stochastic_rounding=stochastic_rounding,
            min_compressed_numel=min_compressed_numel,
            capturable=capturable,
            differentiable=differentiable,
            beta1_decay=beta1_decay,
        )

    #: The values of ``max_of`` this class takes.
    MAX_OF = MAX_OF_CHOICES

    def validate_group(self, group: ParamGroup) -> None:
        super().validate_group(group)
        check_bool("amsgrad", group["amsgrad"])
        check_choice("max_of", group["max_of"], self.MAX_OF)

    def _max_of(self, group: ParamGroup) -> str | None:
        return group["max_of"] if group["amsgrad"] else None

    def _complete_loaded_group(self, saved: ParamGroup, current: ParamGroup) -> ParamGroup:
        """A group saved without ``amsgrad`` (by :class:`~amsgrad.Adam`) ran plain Adam; one saved by
        ``torch.optim`` with ``amsgrad=True`` holds the maximum of raw :math:`v_t` (``max_of="raw"``).
        Without a maximum, ``max_of`` keeps the constructor's value, for :meth:`enable_amsgrad`."""
        saved.setdefault("amsgrad", False)
        if saved["amsgrad"]:
            saved.setdefault("max_of", "raw")
        return super()._complete_loaded_group(saved, current)

    def _loaded_setting_changes(self, before: ParamGroup, after: ParamGroup) -> list[str]:
        changes = super()._loaded_setting_changes(before, after)
        if before["amsgrad"] and not after["amsgrad"]:
            changes.append(
                "was saved with amsgrad=False and continues as plain Adam, although this optimizer was built with "
                "amsgrad=True; call optimizer.enable_amsgrad() to continue as AMSGrad (its maximum starts from the "
                "loaded v)."
            )
        elif after["amsgrad"] and not before["amsgrad"]:
            changes.append(
                "was saved with amsgrad=True and continues as AMSGrad, although this optimizer was built with "
                "amsgrad=False; set amsgrad=False in the param group to continue as plain Adam."
            )
        return changes

    def enable_amsgrad(self) -> list[int]:
        r"""Turn every group that runs plain Adam (``amsgrad=False``) into AMSGrad, from now on.

        The usual case: a ``torch.optim.Adam(amsgrad=False)`` checkpoint (or one of
        :class:`~amsgrad.Adam`) loaded into ``AMSGrad``, which keeps the saved ``amsgrad=False``.
        For every parameter of such a group that has a state, the running maximum starts from
        the current second moment,

        .. math::

            \hat{v} = v \quad (\text{max_of="raw"}), \qquad
            \hat{v} = v / (1 - β_2^t) \quad (\text{max_of="corrected"}, t \text{ its step count}),

        (with ``bias_correction=False``, :math:`\hat{v} = v`), replacing any stale
        ``max_exp_avg_sq``; then ``amsgrad=True`` is set in the group, whose ``max_of`` says
        which maximum. In a compressed ``state_precision`` (bfloat16, int8, int4) :math:`\hat{v}`
        is computed from the decoded :math:`v` and stored in the same format, rounded up, so
        that the decoded :math:`\hat{v}` is never below it. The next steps, on any implementation, are AMSGrad's:
        :math:`\hat{v}_t = \max(\hat{v}_{t-1}, v_t)`. Parameters without a state start from
        :math:`\hat{v}_0 = 0` at their first step, as usual. Returns the indices of the groups
        switched (the others already ran AMSGrad).

        Example:
            >>> import warnings, torch, amsgrad
            >>> w = torch.nn.Parameter(torch.ones(2))
            >>> adam = torch.optim.Adam([w], lr=0.1)
            >>> w.grad = torch.tensor([1.0, -2.0])
            >>> adam.step()
            >>> opt = amsgrad.AMSGrad([w], lr=0.1, eps=1e-8, optimized_update=False)
            >>> with warnings.catch_warnings(record=True):  # "... call optimizer.enable_amsgrad() ..."
            ...     opt.load_state_dict(adam.state_dict())
            >>> opt.enable_amsgrad()
            [0]
            >>> torch.equal(opt.state[w]["max_exp_avg_sq"], opt.state[w]["exp_avg_sq"])
            True
        """
        switched = []
        for index, group in enumerate(self.param_groups):
            if group["amsgrad"]:
                continue
            corrected = group["max_of"] == "corrected"
            for param in group["params"]:
                state = self.state.get(param)
                layout = state_layout(state, "exp_avg_sq", param.numel()) if state else None
                if layout is None:
                    continue
                storage = self._storage(group, param)
                compressed = storage.kind != "float" or layout.kind != "float"
                # a float state: v itself; a compressed one: v decoded (float32)
                v = decode(state, "exp_avg_sq", layout, param) if compressed else state["exp_avg_sq"]
                if corrected:
                    _, correction2 = super().bias_corrections(state, group)
                    maximum = v / correction2 if correction2 > 0.0 else torch.zeros_like(v)
                else:
                    maximum = v if compressed else v.clone(memory_format=torch.preserve_format)
                if compressed:  # encoded in the group's storage, rounded up: the decoded v̂ is never below v
                    for name in ("max_exp_avg_sq", "max_exp_avg_sq_codes", "max_exp_avg_sq_scales"):
                        state.pop(name, None)
                    init_storage(state, storage, param, keys=("max_exp_avg_sq",))
                    encode(state, "max_exp_avg_sq", storage, maximum)
                else:
                    state["max_exp_avg_sq"] = maximum
            group["amsgrad"] = True
            switched.append(index)
        return switched

    def init_state(self, state: ParamState, group: ParamGroup, param: torch.Tensor) -> None:
        """Adam's state, plus :math:`\\hat{v}_0 = 0` (``max_exp_avg_sq``) when ``amsgrad``."""
        super().init_state(state, group, param)
        if group["amsgrad"]:
            init_storage(state, self._storage(group, param), param, keys=("max_exp_avg_sq",))

    def get_mv(self, state: ParamState, group: ParamGroup, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:math:`(m_t, \\hat{v}_t)`; Adam's :math:`(m_t, v_t)` when ``amsgrad`` is off."""
        m, v = super().get_mv(state, group, grad)
        if not group["amsgrad"]:
            return m, v
        v_max = state.get("max_exp_avg_sq")
        if v_max is None:  # a group switched to amsgrad, or a plain Adam state dict loaded
            v_max = state["max_exp_avg_sq"] = torch.zeros_like(v, memory_format=torch.preserve_format)
        candidate = v
        if group["max_of"] == "corrected":
            _, correction2 = super().bias_corrections(state, group)
            candidate = v / correction2
        if torch.is_grad_enabled():  # recorded by autograd (differentiable=True): no out=, and what
            # maximum() saves for backward must not be the moments that the next step updates in place
            v_max.copy_(torch.maximum(v_max.clone(), candidate.clone() if candidate is v else candidate))
        else:
            torch.maximum(v_max, candidate, out=v_max)
        return m, v_max

    def bias_corrections(self, state: ParamState, group: ParamGroup) -> tuple[float, float]:
        """As Adam's, except that a maximum of corrected :math:`v_t` needs no second correction."""
        correction1, correction2 = super().bias_corrections(state, group)
        if group["amsgrad"] and group["max_of"] == "corrected":
            correction2 = 1.0
        return correction1, correction2
