"""Adam (Kingma & Ba, ICLR 2015), written per parameter in the paper's notation."""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

import torch

from .. import kernels
from ._validation import check_bool, check_decay, check_non_negative, check_state_dtype
from .generic import GenericAdaptiveOptimizer, ParamGroup, ParamState
from .schedules import beta1_at, beta1_product
from .weight_decay import WeightDecay

__all__ = ["Adam"]


class Adam(GenericAdaptiveOptimizer):
    r"""Adam, with the bias correction folded into the step size or applied to :math:`v_t`.

    For every element, with gradient :math:`g_t` at step :math:`t = 1, 2, \dots`:

    .. math::

        m_t &= β_1 m_{t-1} + (1 - β_1) g_t \\
        v_t &= β_2 v_{t-1} + (1 - β_2) g_t^2 \\
        θ_t &= θ_{t-1} - α \frac{\sqrt{1 - β_2^t}}{1 - β_1^t} \cdot \frac{m_t}{\sqrt{v_t} + \hat{ε}}
              && \text{optimized_update=True (default)} \\
        θ_t &= θ_{t-1} - \frac{α}{1 - β_1^t} \cdot \frac{m_t}{\sqrt{v_t / (1 - β_2^t)} + ε}
              && \text{optimized_update=False (torch.optim.Adam)}

    with :math:`m_0 = v_0 = 0`. The two updates are the same when
    :math:`\hat{ε} = ε \sqrt{1 - β_2^t}`: the optimized form saves one pass over
    :math:`v_t`, and its ε̂ shrinks, relative to ε, as :math:`t` grows from 1. ``eps`` is ε̂ or
    ε, according to ``optimized_update``.

    With ``bias_correction=False`` both corrections are dropped,
    :math:`θ_t = θ_{t-1} - α_t m_t / (\sqrt{v_t} + ε)`, which is the form the AMSGrad paper
    analyses (see :class:`~amsgrad.AMSGrad`).

    ``beta1_decay=λ`` (default 1) makes β1 decay, :math:`β_{1,t} = β_1 λ^{t-1}`, the schedule of
    the AMSGrad paper's convergence results (Reddi et al., Corollary 1): step t uses
    :math:`β_{1,t}` in place of β1 in :math:`m_t`, and the first-moment correction becomes

    .. math::

        1 - \prod_{k \le t} β_{1,k} = 1 - β_1^t λ^{t(t-1)/2},

    which is :math:`1 - β_1^t` for λ = 1 (bit for bit: λ = 1 is the constant-β1 optimizer).
    (The paper itself states its theorems without bias correction, ``bias_correction=False``.)

    Symbols and arguments: α = ``lr``, (β1, β2) = ``betas``, ε̂ or ε = ``eps``; weight decay
    is described by :class:`~amsgrad.WeightDecay` and applied before the update. Every one of
    these settings (and ``maximize``, ``optimized_update``, ``bias_correction``) is stored in
    each param group, so it can differ per group and is saved by ``state_dict()``.

    Compared with others:

    * ``torch.optim.Adam``: identical with ``optimized_update=False, eps=1e-8`` (torch's
      defaults) and ``weight_decay=λ`` (coupled L2); ``torch.optim.AdamW`` is
      ``weight_decay=WeightDecay(λ)``. The state uses torch's keys (``step``, ``exp_avg``,
      ``exp_avg_sq``), so state dicts load both ways.
    * optax ``adam``: the ``optimized_update=False`` form, with ε outside the square root.
    * the default ``eps=1e-16`` is that of labml_nn's annotated implementation, whose
      ``optimized_update=True`` form this class keeps as its default.

    Args:
        params: the parameters to optimize, or param-group dicts.
        lr: α, a number ``>= 0`` or a one-element tensor.
        betas: (β1, β2), each in ``[0, 1)``.
        eps: ε̂ (``optimized_update=True``) or ε (``False``), ``>= 0``.
        weight_decay: a :class:`~amsgrad.WeightDecay`, or a number λ for coupled L2, or None.
        optimized_update: fold the bias correction of :math:`v_t` into the step size.
        defaults: extra param-group settings, for subclasses (never modified).
        maximize: ascend the objective instead of descending it.
        bias_correction: apply the :math:`1 - β^t` corrections.
        beta1_decay: λ in ``(0, 1]``, for :math:`β_{1,t} = β_1 λ^{t-1}` (1: a constant β1). A
            decaying β1 runs the multi-tensor path (no fused kernel computes it).
        foreach: ``True`` runs the multi-tensor (``torch._foreach_*``) step; ``False`` with
            ``fused`` not ``True``, the readable per-tensor loop.
        fused: ``True`` runs a fused single-pass kernel and is an error where none exists;
            ``False``, the multi-tensor step. Both ``None`` (default): the fastest correct path.
        nonfinite: ``"propagate"``, ``"skip"`` or ``"raise"``: what a step does when a gradient
            holds ``inf``/``NaN`` (see :mod:`amsgrad.optimizers.nonfinite`).
        state_dtype: ``None`` (default): the state has the parameter's dtype, as in
            ``torch.optim``; ``torch.float32`` or ``torch.float64``: the state (``exp_avg``,
            ``exp_avg_sq``, ``max_exp_avg_sq``) and the arithmetic of the step are at least
            that wide, never narrower than the parameter (so float64 parameters keep float64
            state). Anything else is an error.
        capturable: as in ``torch.optim.Adam``: the step counters live on the parameters'
            device and a step never synchronises with the host (the bias corrections are tensor
            operations; :mod:`amsgrad.kernels.tensor_steps`), so it can be captured in a CUDA
            graph. Unlike torch's, it works on CPU too. It runs the multi-tensor path, so
            ``fused=True``, ``foreach=False``, a ``state_dtype``, ``differentiable=True``, a
            subclass's hooks and ``nonfinite="skip"``/``"raise"`` (whose check is a
            synchronisation) are refused with it. To change α inside a captured graph, give
            ``lr`` as a tensor on the device.
        differentiable: as in ``torch.optim.Adam``: autograd records the step, so that the
            updated parameters and state can be differentiated with respect to the parameters,
            gradients and state before it (not α or β, which enter as numbers). It runs the
            readable path; ``fused=True``, ``foreach=True`` and ``capturable=True`` are refused
            with it.

    Low-precision parameters: with float16 or bfloat16 parameters and ``state_dtype=None`` the
    moments are float16/bfloat16 too, and in float16 the default ``eps=1e-16`` is 0 while
    :math:`v_t` underflows, so the update divides by 0 (NaN within a few steps).
    ``state_dtype=torch.float32`` keeps the moments in float32 and computes the step there, on a
    float32 copy of θ that is rounded back to the parameter's dtype once per step (round to
    nearest even). It is not a float32 master copy of the parameters: an update smaller than
    half a unit in the last place of θ is still lost, which is why bfloat16 parameters (8
    significant bits) stall at about twice float32's loss with either state dtype. The groups
    where it widens a parameter's state run on the readable path (``foreach=True`` and
    ``fused=True`` are refused with a ``state_dtype``); groups whose parameters are already as
    wide keep the fast path and are bit-identical to ``state_dtype=None``. The setting lives in
    the param groups, and ``load_state_dict`` keeps such a state in its dtype (``torch.optim``
    would round it to the parameter's).

    Extension points (override any, in a subclass): :meth:`init_state`, :meth:`get_mv`,
    :meth:`get_lr`, :meth:`bias_corrections`, :meth:`adam_update`, :meth:`step_param`.

    Implementations: these hooks, one tensor at a time, are the readable reference. By default
    the built-in classes run a fast path that computes the same numbers (tested in float64):
    a fused single-pass kernel (ours in C on CPU, torch's fused Adam kernel elsewhere) or a
    multi-tensor step; :mod:`amsgrad.kernels` has the map, and :meth:`implementations` (or the
    ``repr``) tells which one each group runs. A subclass that overrides any hook runs on the
    readable path automatically (``foreach=True``/``fused=True`` are refused for it).
    ``torch.compile(optimizer.step)`` compiles once: no recompilation as the step count or a
    scheduled α, β, ε or λ changes (see :mod:`amsgrad.kernels`).

    Checkpoints: ``load_state_dict`` follows ``torch.optim`` (the saved settings win), fills in
    what a ``torch.optim.Adam``/``AdamW`` state dict lacks with torch's meaning (so such a
    checkpoint continues with torch's update, ``optimized_update=False``), and warns where
    a loaded group's ε form differs from the constructor's; :meth:`use_optimized_update`
    switches such groups to this library's form (:meth:`amsgrad.AMSGrad.enable_amsgrad` turns
    a loaded Adam state into AMSGrad).

    References:
        Diederik P. Kingma and Jimmy Ba. *Adam: A Method for Stochastic Optimization*.
        ICLR 2015. arXiv:1412.6980.

    Example:
        >>> import torch, amsgrad
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> opt = amsgrad.Adam([w], lr=0.1)
        >>> for _ in range(300):
        ...     opt.zero_grad()
        ...     loss = (w ** 2).sum()
        ...     loss.backward()
        ...     _ = opt.step()
        >>> bool(w.abs().max() < 1e-2)
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
        defaults: dict[str, Any] | None = None,
        *,
        maximize: bool = False,
        bias_correction: bool = True,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: str = "propagate",
        state_dtype: torch.dtype | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        beta1_decay: float = 1.0,
    ):
        defaults = {} if defaults is None else dict(defaults)
        defaults.update(
            beta1_decay=beta1_decay,
            capturable=capturable,
            differentiable=differentiable,
            state_dtype=state_dtype,
            weight_decay=weight_decay,
            optimized_update=optimized_update,
            bias_correction=bias_correction,
            maximize=maximize,
            nonfinite=nonfinite,
            foreach=foreach,
            fused=fused,
        )
        super().__init__(params, defaults, lr, betas, eps)

    def validate_group(self, group: ParamGroup) -> None:
        super().validate_group(group)
        check_bool("optimized_update", group["optimized_update"])
        check_bool("bias_correction", group["bias_correction"])
        check_decay("beta1_decay", group["beta1_decay"])
        check_state_dtype("state_dtype", group["state_dtype"])
        check_bool("capturable", group.get("capturable", False))
        _check_implementation(group, _overridden_hooks(type(self)))

    def _plan_group(self, group: ParamGroup, params: list[torch.Tensor], grads: list[torch.Tensor | None], *,
                    compiling: bool = False, report: bool = False) -> kernels.Plan:
        """The readable loop, or the fast path that the settings pick (:func:`amsgrad.kernels.plan`)."""
        return kernels.plan(self, group, params, grads, _overridden_hooks(type(self)), compiling=compiling,
                            report=report)

    def _max_of(self, group: ParamGroup) -> str | None:
        """Where AMSGrad's maximum is taken for ``group``: Adam keeps none."""
        return None

    def _new_step(self, group: ParamGroup, param: torch.Tensor, value: float = 0.0) -> torch.Tensor:
        """A step counter, as in ``torch.optim``: a 0-d tensor, float64 only when that is the default
        dtype; on the CPU, or on the parameter's device with ``capturable=True``."""
        dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        device = param.device if group.get("capturable", False) else "cpu"
        return torch.full((), float(value), dtype=dtype, device=device)

    # ----------------------------------------------------- loading and switching
    def _complete_loaded_group(self, saved: ParamGroup, current: ParamGroup) -> ParamGroup:
        """A group saved by ``torch.optim`` continues with torch's update: ``optimized_update=False``
        (its ``eps`` is torch's ε, added to √(v/(1-β2^t))) and ``bias_correction=True``."""
        saved.setdefault("optimized_update", False)
        saved.setdefault("bias_correction", True)
        saved.setdefault("beta1_decay", 1.0)  # torch's β1 is constant
        return super()._complete_loaded_group(saved, current)

    def _check_loaded_state(self, state: dict[Any, dict[str, Any]]) -> None:
        for index, entries in state.items():
            step = entries.get("step") if isinstance(entries, dict) else None
            if step is not None and not isinstance(step, torch.Tensor) and (
                    isinstance(step, bool) or not isinstance(step, numbers.Real)):
                raise TypeError(f"the saved state of parameter {index}: step must be a number or a tensor, got "
                                f"{step!r} of type {type(step).__name__}")

    def _finish_loaded_state(self) -> None:
        """Steps saved as plain numbers become step tensors (as ``torch.optim.Adam`` converts them);
        with ``capturable=True`` each step tensor is moved to its parameter's device."""
        for group in self.param_groups:
            capturable = group.get("capturable", False)
            for param in group["params"]:
                state = self.state.get(param)
                if not state or "step" not in state:
                    continue
                step = state["step"]
                if not isinstance(step, torch.Tensor):  # a number (checked before loading)
                    state["step"] = self._new_step(group, param, step)
                elif not step.is_floating_point():
                    state["step"] = self._new_step(group, param, float(step))
                elif capturable and step.device != param.device:
                    state["step"] = step.to(param.device)

    def _loaded_setting_changes(self, before: ParamGroup, after: ParamGroup) -> list[str]:
        changes = super()._loaded_setting_changes(before, after)
        if before["optimized_update"] and not after["optimized_update"]:
            changes.append(
                "was saved in torch's update form (optimized_update=False: its eps is added to "
                "sqrt(v / (1 - beta2^t))) and continues in that form, although this optimizer was built with "
                "optimized_update=True; call optimizer.use_optimized_update() to switch to the library's form."
            )
        elif after["optimized_update"] and not before["optimized_update"]:
            changes.append(
                "was saved in the library's update form (optimized_update=True: its eps is added to sqrt(v)) "
                "and continues in that form, although this optimizer was built with optimized_update=False; set "
                "optimized_update=False (with a torch-form eps) in the param group to change back."
            )
        if after.get("amsgrad", False) and self._max_of(after) is None:
            changes.append(
                "was saved with amsgrad=True, but Adam keeps no running maximum: it continues as plain Adam "
                "(max_exp_avg_sq is kept, unused); load the state dict into amsgrad.AMSGrad to continue AMSGrad."
            )
        return changes

    def use_optimized_update(self, eps: float | None = None) -> list[int]:
        r"""Switch every group in torch's update form (``optimized_update=False``) to this library's.

        The two forms, with :math:`c_2 = 1 - β_2^t`,

        .. math::

            \text{torch's: } \frac{m_t}{\sqrt{v_t / c_2} + ε} \qquad
            \text{optimized: } \sqrt{c_2} \frac{m_t}{\sqrt{v_t} + \hat{ε}}

        are the same update exactly when :math:`\hat{ε} = ε \sqrt{c_2}`, which changes with
        :math:`t`, so no constant ε̂ continues a run bit for bit. With ``eps=None`` each
        switched group keeps its number as ε̂ (:math:`\hat{ε} = ε`): the update at step
        :math:`t` is then torch's with :math:`ε / \sqrt{c_2}` in place of ε, which is ε itself
        to within a relative :math:`β_2^t / 2` (below :math:`10^{-4}` once
        :math:`t > 8{,}500` with :math:`β_2 = 0.999`): a loaded checkpoint of a long run
        continues as it was. ``eps=ε̂`` sets that group setting instead (the library's default,
        ``1e-16``, say, to make ε̂ negligible).

        Only the group settings change (``optimized_update`` and ``eps``); the state is the
        same in both forms, so every implementation (readable, multi-tensor, fused) continues
        from it. Returns the indices of the groups switched.

        Example:
            >>> import warnings, torch, amsgrad
            >>> w = torch.nn.Parameter(torch.ones(2))
            >>> opt = amsgrad.Adam([w], lr=0.1)
            >>> with warnings.catch_warnings(record=True):  # "... call optimizer.use_optimized_update() ..."
            ...     opt.load_state_dict(torch.optim.Adam([w], lr=0.1).state_dict())
            >>> opt.param_groups[0]["optimized_update"], opt.param_groups[0]["eps"]
            (False, 1e-08)
            >>> opt.use_optimized_update()
            [0]
            >>> opt.param_groups[0]["optimized_update"], opt.param_groups[0]["eps"]
            (True, 1e-08)
        """
        if eps is not None:
            eps = check_non_negative("eps", eps)
        switched = []
        for index, group in enumerate(self.param_groups):
            if not group["optimized_update"]:
                group["optimized_update"] = True
                if eps is not None:
                    group["eps"] = eps
                switched.append(index)
        return switched

    def _state_dtype(self, group: ParamGroup, param: torch.Tensor) -> torch.dtype:
        """The wider of the parameter's dtype and the group's ``state_dtype`` (None: the parameter's)."""
        state_dtype = group.get("state_dtype")
        return param.dtype if state_dtype is None else torch.promote_types(param.dtype, state_dtype)

    # ------------------------------------------------------------------ hooks
    def init_state(self, state: ParamState, group: ParamGroup, param: torch.Tensor) -> None:
        """``step`` = 0 and :math:`m_0 = v_0 = 0`, shaped like the parameter, in the state's dtype."""
        dtype = self._state_dtype(group, param)
        state["step"] = self._new_step(group, param)
        state["exp_avg"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)

    def get_mv(self, state: ParamState, group: ParamGroup, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the moving averages in place and return :math:`(m_t, v_t)`, with step t's
        :math:`(β_{1,t}, β_{2,t})` from :meth:`_moment_betas`."""
        beta1, beta2 = self._moment_betas(state, group)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        return m, v

    def _moment_betas(self, state: ParamState, group: ParamGroup) -> tuple[Any, Any]:
        """:math:`(β_{1,t}, β_2)`: :math:`β_1 λ^{t-1}` (β1 itself with λ = 1) and the constant β2."""
        beta1, beta2 = group["betas"]
        decay = group["beta1_decay"]
        if decay != 1.0:
            beta1 = beta1_at(beta1, decay, float(state["step"]))
        return beta1, beta2

    def get_lr(self, state: ParamState, group: ParamGroup) -> float:
        """α_t for this step (a plain number; a tensor ``lr`` is read once here)."""
        lr = group["lr"]
        return float(lr) if isinstance(lr, torch.Tensor) else lr

    def bias_corrections(self, state: ParamState, group: ParamGroup) -> tuple[float, float]:
        """:math:`(1 - \\prod_{k \\le t} β_{1,k}, 1 - β_2^t)`, which is :math:`(1 - β_1^t, 1 - β_2^t)` for a
        constant β1, or ``(1, 1)`` with ``bias_correction=False``."""
        if not group["bias_correction"]:
            return 1.0, 1.0
        beta1, beta2 = group["betas"]
        t = float(state["step"])
        return 1.0 - beta1_product(beta1, group["beta1_decay"], t), 1.0 - beta2**t

    def adam_update(self, state: ParamState, group: ParamGroup, param: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> None:
        """:math:`θ_t = θ_{t-1} - \\text{step size} \\cdot m_t / \\text{denominator}`, in place."""
        correction1, correction2 = self.bias_corrections(state, group)
        lr = self.get_lr(state, group)
        # Recorded by autograd (differentiable=True), the step must not overwrite what backward needs.
        recorded = torch.is_grad_enabled()
        denominator = v.sqrt()
        if group["optimized_update"]:
            # α √(1-β2^t)/(1-β1^t) · m / (√v + ε̂)
            step_size = lr * math.sqrt(correction2) / correction1
        else:
            # α/(1-β1^t) · m / (√v / √(1-β2^t) + ε)
            if correction2 != 1.0:
                divisor = math.sqrt(correction2)
                denominator = denominator / divisor if recorded else denominator.div_(divisor)
            step_size = lr / correction1
        denominator = denominator + group["eps"] if recorded else denominator.add_(group["eps"])
        param.addcdiv_(m.clone() if recorded else m, denominator, value=-step_size)

    def step_param(self, state: ParamState, group: ParamGroup, grad: torch.Tensor, param: torch.Tensor) -> None:
        """Weight decay, then :math:`t \\leftarrow t + 1`, the moments, and the update.

        With a ``state_dtype`` wider than the parameter, all of it is computed in that dtype
        on a copy of the parameter, which is rounded back into the parameter once, at the end.
        """
        work, dtype = param, self._state_dtype(group, param)
        if dtype != param.dtype:
            work, grad = param.to(dtype), grad.to(dtype)
        grad = WeightDecay.apply(work, grad, group, self.get_lr(state, group))
        state["step"] += 1
        m, v = self.get_mv(state, group, grad)
        self.adam_update(state, group, work, m, v)
        if work is not param:
            param.copy_(work)


_OVERRIDDEN_HOOKS: dict[type, tuple[str, ...]] = {}


def _overridden_hooks(cls: type) -> tuple[str, ...]:
    """The hooks ``cls`` overrides, relative to the built-in optimizer it derives from."""
    hooks = _OVERRIDDEN_HOOKS.get(cls)
    if hooks is None:
        builtin = next(base for base in cls.__mro__ if base.__module__.startswith(__package__))
        hooks = tuple(hook for hook in kernels.HOOKS if getattr(cls, hook) is not getattr(builtin, hook))
        _OVERRIDDEN_HOOKS[cls] = hooks
    return hooks


def _check_implementation(group: ParamGroup, overridden_hooks: tuple[str, ...]) -> None:
    """Refuse the settings that no implementation can honour together, saying why."""
    fused, foreach = group.get("fused"), group.get("foreach")
    capturable, differentiable = group.get("capturable", False), group.get("differentiable", False)
    if fused and foreach:
        raise ValueError("Invalid fused: True with foreach=True (choose one; None lets the optimizer choose)")
    if differentiable:
        for key, value in (("fused", fused), ("foreach", foreach)):
            if value:
                raise ValueError(
                    f"Invalid {key}: True with differentiable=True: autograd can record only the readable "
                    f"per-tensor path (the {key} kernels write their results in place, outside autograd); use "
                    f"{key}=None, which takes the readable path for a differentiable group"
                )
        for key in ("lr", "betas"):
            values = group[key] if key == "betas" else (group[key],)
            if any(isinstance(value, torch.Tensor) and value.requires_grad for value in values):
                raise ValueError(
                    f"Invalid {key}: a tensor that requires grad with differentiable=True: the step is "
                    f"differentiable with respect to the parameters, gradients and state, while {key} enters as "
                    f"a number (pass {key} detached)"
                )
    if capturable:
        why = ("capturable=True promises a step without host synchronisation, so it runs the multi-tensor path "
               "with tensor step counts")
        if fused:
            raise ValueError(f"Invalid fused: True with capturable=True: {why}, while the fused kernels read each "
                             f"step count on the host; use fused=None")
        if foreach is False:
            raise ValueError(f"Invalid foreach: False with capturable=True: {why}, while the readable path reads "
                             f"each step count on the host; use foreach=None")
        if differentiable:
            raise ValueError(f"Invalid differentiable: True with capturable=True: {why}, while the differentiable "
                             f"step is the readable path, which reads each step count on the host")
        if group.get("state_dtype") is not None:
            raise ValueError(f"Invalid state_dtype: {group['state_dtype']} with capturable=True: {why}, while only "
                             f"the readable path keeps a state wider than its parameter; use state_dtype=None")
        if group.get("nonfinite", "propagate") != "propagate":
            raise ValueError(f"Invalid nonfinite: {group['nonfinite']!r} with capturable=True: {why}, while "
                             f"deciding to skip or raise reads the gradients' finiteness on the host; use "
                             f"nonfinite='propagate' (torch.amp.GradScaler skips non-finite steps on the device)")
        if overridden_hooks:
            raise ValueError(f"Invalid capturable: True for a subclass that overrides {', '.join(overridden_hooks)}: "
                             f"{why}, while only the readable path calls these hooks")
    for key, value in (("fused", fused), ("foreach", foreach)):
        if value and group.get("state_dtype") is not None:
            raise ValueError(
                f"Invalid {key}: True with state_dtype={group['state_dtype']}: only the readable per-tensor path "
                f"keeps a state wider than its parameter (use {key}=None, which takes the fast path for "
                f"parameters already as wide as state_dtype)"
            )
        if value and overridden_hooks:
            raise ValueError(
                f"Invalid {key}: True for a subclass that overrides {', '.join(overridden_hooks)}: only the "
                f"readable per-tensor path calls these hooks (use {key}=None or False)"
            )
