"""AdamNC (Reddi, Kale & Kumar, ICLR 2018, Algorithm 3): Adam with a non-constant β2,t."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from ..quantization.formats import DEFAULT_MIN_COMPRESSED_NUMEL
from .adam import Adam
from .generic import ParamGroup, ParamState
from .schedules import beta1_at, scheduled_beta2
from .weight_decay import WeightDecay

__all__ = ["AdamNC"]

_FUNCTION = "function "  # how a state dict names a beta2_schedule function, which it cannot hold


class AdamNC(Adam):
    r"""AdamNC: Adam whose second-moment average remembers more as t grows, :math:`β_{2,t} = 1 - 1/t`.

    The AMSGrad paper's second fix for Adam (its Algorithm 3) keeps Adam's exponential averages
    but lets :math:`β_2` change with t so that the effective step never grows. Per element, at
    step :math:`t = 1, 2, \dots`, with :math:`β_{1,t} = β_1 λ^{t-1}` (``beta1_decay=λ``):

    .. math::

        m_t &= β_{1,t} m_{t-1} + (1 - β_{1,t}) g_t \\
        v_t &= β_{2,t} v_{t-1} + (1 - β_{2,t}) g_t^2 \\
        θ_t &= θ_{t-1} - α_t \frac{m_t}{\sqrt{v_t} + ε}

    with :math:`m_0 = v_0 = 0` and no bias correction, as in the paper (ε added; ``eps=0`` gives
    the paper's update as long as no :math:`v_t` is 0; its step size :math:`α_t` is an LR
    scheduler, α/√t say). With the default :math:`β_{2,t} = 1 - 1/t`, the choice the paper
    gives for its Theorem 5, :math:`v_t = \frac1t \sum_{k \le t} g_k^2` is the plain mean of the
    squared gradients, and with :math:`β_1 = 0` and :math:`α_t = α/\sqrt{t}` the update is
    Adagrad's, :math:`θ_t = θ_{t-1} - α\, g_t / \sqrt{\sum_{k \le t} g_k^2}` (exactly, for ε = 0;
    ``torch.optim.Adagrad`` with ``lr=α``).

    ``beta2_schedule`` gives another :math:`β_{2,t}`: a function of t (a float, 1, 2, …)
    returning a number in [0, 1]. Theorem 5 asks of it (with :math:`α_t`) that
    :math:`\sqrt{v_t}/α_t` never decrease; :math:`1 - 1/t` with :math:`α_t = α/\sqrt t` is its
    example. A function cannot be saved in a state dict for ``torch.load(weights_only=True)``:
    ``state_dict()`` stores its name, and ``load_state_dict`` takes the function from the
    optimizer being loaded, which must have been built with the same one. It is called on the
    host, before each step (once per distinct step count, so that a value outside [0, 1] is
    refused before anything changes) and in it (per parameter; multi-tensor: per distinct step
    count), so a group with a function cannot be ``capturable``; the default schedule can.

    The state has ``torch.optim.Adam``'s keys (``step``, ``exp_avg``, ``exp_avg_sq``); the group
    keeps ``betas = (β1, 0)`` (the second is unused) and ``beta2_schedule``.

    Args:
        params: the parameters to optimize, or param-group dicts.
        lr: α, a number ``>= 0`` or a one-element tensor.
        beta1: β1 in ``[0, 1)``.
        beta1_decay: λ in ``(0, 1]``: :math:`β_{1,t} = β_1 λ^{t-1}` (1: constant).
        eps: ε, ``>= 0``.
        weight_decay: as for :class:`~amsgrad.Adam`.
        defaults: extra param-group settings, for subclasses (never modified).
        beta2_schedule: ``None`` (:math:`1 - 1/t`) or a function ``t -> β2,t``.
        maximize, foreach, fused, nonfinite, state_precision, stochastic_rounding,
        min_compressed_numel, capturable, differentiable: as for
            :class:`~amsgrad.Adam` (fused kernels have no β2 schedule: the fast path is
            multi-tensor, and ``fused=True`` is refused at the first step).

    References:
        Sashank J. Reddi, Satyen Kale and Sanjiv Kumar. *On the Convergence of Adam and
        Beyond*. ICLR 2018. arXiv:1904.09237 (Algorithm 3, Theorem 5).
        John Duchi, Elad Hazan and Yoram Singer. *Adaptive Subgradient Methods for Online
        Learning and Stochastic Optimization*. JMLR 12, 2011 (Adagrad).

    Example — with β1 = 0 and α/√t, Adagrad:
        >>> import torch, amsgrad
        >>> w1 = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
        >>> w2 = torch.nn.Parameter(w1.detach().clone())
        >>> nc = amsgrad.AdamNC([w1], lr=0.1, beta1=0.0, eps=0.0)
        >>> schedule = torch.optim.lr_scheduler.LambdaLR(nc, lambda k: (k + 1) ** -0.5)
        >>> adagrad = torch.optim.Adagrad([w2], lr=0.1, eps=0.0)
        >>> for _ in range(100):
        ...     for w, opt in ((w1, nc), (w2, adagrad)):
        ...         opt.zero_grad()
        ...         (w ** 4).sum().backward()
        ...         _ = opt.step()
        ...     schedule.step()
        >>> bool((w1 - w2).abs().max() < 1e-12)
        True
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[ParamGroup],
        lr: float | torch.Tensor = 1e-3,
        beta1: float = 0.9,
        beta1_decay: float = 1.0,
        eps: float = 1e-16,
        weight_decay: WeightDecay | float | None = None,
        defaults: dict[str, Any] | None = None,
        *,
        beta2_schedule: Callable[[float], float] | None = None,
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
        defaults = {} if defaults is None else dict(defaults)
        defaults.update(beta2_schedule=beta2_schedule)
        super().__init__(
            params,
            lr,
            (beta1, 0.0),
            eps,
            weight_decay,
            True,
            defaults,
            maximize=maximize,
            bias_correction=False,
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

    def validate_group(self, group: ParamGroup) -> None:
        super().validate_group(group)
        if group["bias_correction"]:
            raise ValueError("Invalid bias_correction: True (AdamNC, the paper's Algorithm 3, has no bias correction)")
        schedule = group["beta2_schedule"]
        if schedule is not None and not callable(schedule):
            if isinstance(schedule, str) and schedule.startswith(_FUNCTION):
                raise ValueError(
                    f"Invalid beta2_schedule: {schedule!r}, the name a state dict keeps of a function: build the "
                    f"optimizer with that function before loading the state dict"
                )
            raise TypeError(f"beta2_schedule must be None (1 - 1/t) or a function of t, got {schedule!r}")
        if schedule is not None and group.get("capturable", False):
            raise ValueError(
                "Invalid beta2_schedule: a function with capturable=True: it takes t as a number, which a "
                "capturable step never reads on the host; use the default (1 - 1/t), a tensor operation"
            )

    def _plan_group(self, group: ParamGroup, params: list[torch.Tensor], grads: list[torch.Tensor | None], **options):
        """Adam's plan, after the schedule's values for this step are checked (so that a bad one
        changes nothing)."""
        schedule = group["beta2_schedule"]
        if schedule is not None and not options.get("report", False):
            steps = {float(self.state[p]["step"]) + 1.0 if self.state.get(p) else 1.0
                     for p, g in zip(params, grads) if g is not None}
            for t in steps:
                scheduled_beta2(schedule, t)
        return super()._plan_group(group, params, grads, **options)

    def _moment_betas(self, state: ParamState, group: ParamGroup) -> tuple[Any, float]:
        """:math:`(β_{1,t}, β_{2,t})`: :math:`β_1 λ^{t-1}` and the schedule's :math:`β_{2,t}` (:math:`1 - 1/t`)."""
        t = float(state["step"])
        beta1 = group["betas"][0]
        decay = group["beta1_decay"]
        if decay != 1.0:
            beta1 = beta1_at(beta1, decay, t)
        return beta1, scheduled_beta2(group["beta2_schedule"], t)

    # ------------------------------------------------------------ state dicts
    def state_dict(self) -> dict[str, Any]:
        """As ``torch.optim``'s, with a ``beta2_schedule`` function replaced by its name (see the class)."""
        state = super().state_dict()
        groups = []
        for group in state["param_groups"]:
            schedule = group.get("beta2_schedule")
            groups.append({**group, "beta2_schedule": _name(schedule)} if callable(schedule) else group)
        return {**state, "param_groups": groups}

    def _complete_loaded_group(self, saved: ParamGroup, current: ParamGroup) -> ParamGroup:
        """A saved function's name is replaced by the function of the group it loads into, if that has it."""
        schedule = saved.get("beta2_schedule")
        if isinstance(schedule, str) and schedule.startswith(_FUNCTION):
            mine = current.get("beta2_schedule")
            if callable(mine) and _name(mine) == schedule:
                saved["beta2_schedule"] = mine
            elif callable(mine):
                raise ValueError(
                    f"Invalid beta2_schedule: the state dict was saved with {schedule[len(_FUNCTION):]}, this "
                    f"optimizer has {_name(mine)[len(_FUNCTION):]}"
                )
        saved.setdefault("bias_correction", False)
        return super()._complete_loaded_group(saved, current)


def _name(function: Callable) -> str:
    module = getattr(function, "__module__", None) or "?"
    qualname = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{_FUNCTION}{module}.{qualname}"

