"""Adam (Kingma & Ba, ICLR 2015), written per parameter in the paper's notation."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

import torch

from .. import kernels
from ..kernels.settings import StepSettings
from ..quantization.formats import DEFAULT_MIN_COMPRESSED_NUMEL, MOMENTS, parse_state_precision
from ..quantization.state import (
    compute_dtype,
    conform_state,
    decode,
    encode,
    float_moments,
    init_storage,
    needs_compressed_step,
    storage_for,
    write_param,
)
from ..quantization.step import compressed_step
from ._validation import check_bool, check_non_negative_int
from .generic import GenericAdaptiveOptimizer, ParamGroup, ParamState
from .weight_decay import WeightDecay

__all__ = ["Adam"]


def _new_step_counter() -> torch.Tensor:
    # As in torch.optim: a scalar tensor, float64 only when that is the default dtype.
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return torch.tensor(0.0, dtype=dtype)


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
        foreach: ``True`` runs the multi-tensor (``torch._foreach_*``) step; ``False`` with
            ``fused`` not ``True``, the readable per-tensor loop.
        fused: ``True`` runs a fused single-pass kernel and is an error where none exists;
            ``False``, the multi-tensor step. Both ``None`` (default): the fastest correct path.
        nonfinite: ``"propagate"``, ``"skip"`` or ``"raise"``: what a step does when a gradient
            holds ``inf``/``NaN`` (see :mod:`amsgrad.optimizers.nonfinite`).
        state_precision: how ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq``) are stored:
            ``None`` (default), the parameter's dtype, as in ``torch.optim``; ``torch.float32`` or
            ``torch.float64``, at least that wide (never narrower than the parameter);
            ``torch.bfloat16`` (6 bytes per parameter, m and v rounded stochastically, the maximum
            up); ``"int8"`` (3.05 bytes) or ``"int4"`` (1.59 bytes), block-wise quantized
            (Dettmers et al., ICLR 2022; Li et al., NeurIPS 2023). The names ``"float32"``,
            ``"float64"``, ``"bfloat16"`` are accepted too. See "Low-memory state" below.
        stochastic_rounding: for bfloat16 parameters, round θ stochastically when it is written
            (unbiased: an update below half an ulp is applied on average instead of lost).
        min_compressed_numel: tensors with fewer elements keep a float32 state under the
            compressed precisions (default 4096, as bitsandbytes' ``min_8bit_size``).

    Low-memory state: with a compressed ``state_precision`` the step decodes the state, computes
    in float32 and encodes it again, in one pass (a fused C kernel on CPU, the reference
    :func:`amsgrad.quantization.step.compressed_step` in torch ops elsewhere; both give the same
    numbers, bit for bit). AMSGrad's maximum is rounded *up* when stored, so the decoded
    :math:`\hat{v}_t` never decreases, element by element, in any format
    (:mod:`amsgrad.quantization.blockwise` explains why round-to-nearest would break it).
    Formats and measurements: :mod:`amsgrad.quantization.formats`. ``state_dict()`` holds the
    compact codes and scales (``torch.load(weights_only=True)`` reads it, and resuming is
    bit-identical); a float state (ours, or ``torch.optim.Adam``'s) loaded into a compressed
    group is quantized; :meth:`torch_state_dict` gives ``torch.optim.Adam``'s format back. With
    bfloat16 parameters every path computes in float32 and rounds θ once per step.

    Low-precision parameters: with float16 or bfloat16 parameters and ``state_precision=None``
    the moments are float16/bfloat16 too, and in float16 the default ``eps=1e-16`` is 0 while
    :math:`v_t` underflows, so the update divides by 0 (NaN within a few steps).
    ``state_precision=torch.float32`` keeps the moments in float32 and computes the step there,
    on a float32 copy of θ that is rounded back to the parameter's dtype once per step. It is not
    a float32 master copy of the parameters: an update smaller than half a unit in the last place
    of θ is lost, which is why bfloat16 parameters stall at about twice float32's loss with
    either state; ``stochastic_rounding=True`` removes that stall. The setting lives in the param
    groups, and ``load_state_dict`` keeps such a state in its precision (``torch.optim`` would
    round it to the parameter's dtype).

    Extension points (override any, in a subclass): :meth:`init_state`, :meth:`get_mv`,
    :meth:`get_lr`, :meth:`bias_corrections`, :meth:`adam_update`, :meth:`step_param`.

    Implementations: these hooks, one tensor at a time, are the readable reference. By default
    the built-in classes run a fast path that computes the same numbers (tested in float64):
    a fused single-pass kernel (ours in C on CPU, torch's fused Adam kernel elsewhere) or a
    multi-tensor step; :mod:`amsgrad.kernels` has the map. A subclass that overrides any hook
    runs on the readable path automatically (``foreach=True``/``fused=True`` are refused for it).

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
        state_precision: Any = None,
        stochastic_rounding: bool = False,
        min_compressed_numel: int = DEFAULT_MIN_COMPRESSED_NUMEL,
    ):
        defaults = {} if defaults is None else dict(defaults)
        defaults.update(
            state_precision=parse_state_precision(state_precision),
            stochastic_rounding=stochastic_rounding,
            min_compressed_numel=min_compressed_numel,
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
        parse_state_precision(group["state_precision"])
        check_bool("stochastic_rounding", group["stochastic_rounding"])
        check_non_negative_int("min_compressed_numel", group["min_compressed_numel"])
        _check_implementation(group, _overridden_hooks(type(self)))

    def add_param_group(self, param_group: ParamGroup) -> None:
        """As for every optimizer here; ``state_precision`` is stored in its canonical form."""
        if isinstance(param_group, dict) and "state_precision" in param_group:
            param_group = dict(param_group)
            try:
                param_group["state_precision"] = parse_state_precision(param_group["state_precision"])
            except ValueError as error:
                raise ValueError(f"param group {len(self.param_groups)}: {error}") from None
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Checkpoints of earlier versions name the setting state_dtype (a float dtype or None).
        for group in state.get("param_groups", []):
            if "state_dtype" in group and "state_precision" not in group:
                group["state_precision"] = group.pop("state_dtype")
        super().__setstate__(state)

    def _step_group(self, group: ParamGroup, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """The readable loop, or the fast path that ``foreach``/``fused`` pick (:mod:`amsgrad.kernels`)."""
        layout = (group.get("state_precision"), group.get("min_compressed_numel"))
        seen = self.__dict__.setdefault("_layouts_seen", {})
        if seen.get(id(group)) != layout:  # a new group, a loaded one, or its precision changed
            self._conform_group(group)
            seen[id(group)] = layout
        choice = kernels.implementation(group, _overridden_hooks(type(self)))
        if choice == "readable":
            super()._step_group(group, params, grads)
        else:
            kernels.step_group(self, group, params, grads, choice)

    def _storage(self, group: ParamGroup, param: torch.Tensor):
        """How ``param``'s moments are stored under the group's ``state_precision``."""
        return storage_for(group.get("state_precision"), param,
                           group.get("min_compressed_numel", DEFAULT_MIN_COMPRESSED_NUMEL))

    def _restore_state_dtypes(self, state_dict: dict[str, Any]) -> None:
        """Bring every loaded state into its group's storage, from the dict's own tensors.

        ``torch.optim`` casts every floating state tensor to the parameter's dtype (the block
        scales too); here each state is rebuilt from the saved tensors: kept as it is where it
        already has the group's storage, quantized or decoded where it does not.
        """
        saved_ids = (saved_id for group in state_dict["param_groups"] for saved_id in group["params"])
        owners = ((group, param) for group in self.param_groups for param in group["params"])
        for saved_id, (group, param) in zip(saved_ids, owners):
            saved = state_dict["state"].get(saved_id)
            if saved is None:
                continue
            storage = self._storage(group, param)
            state = self.state[param]
            for key, value in saved.items():
                if key == "step" or not isinstance(value, torch.Tensor):
                    continue
                if key in MOMENTS or key.endswith(("_codes", "_scales")) or key == "rounding_seed":
                    state[key] = value.to(device=param.device, copy=True)
            conform_state(state, storage, param)
            if self._needs_seed(group, param, storage) and "rounding_seed" not in state:
                state["rounding_seed"] = self._new_seed(param)

    def torch_state_dict(self) -> dict[str, Any]:
        """This optimizer's state in ``torch.optim.Adam``'s format, for ``torch.optim.Adam``/``AdamW``.

        Every state is decoded into float tensors of the parameter's dtype under torch's keys
        (``step``, ``exp_avg``, ``exp_avg_sq``, and ``max_exp_avg_sq`` for AMSGrad groups); the
        param groups hold torch's settings: ``lr``, ``betas``, ``eps``, ``weight_decay``,
        ``amsgrad``, ``maximize``, ``decoupled_weight_decay``, and ``foreach``/``fused`` left to
        torch. torch continues with *its* update from there, which is ours for groups with
        ``optimized_update=False`` and raw maxima; ε̂ of ``optimized_update=True`` is handed over
        as ε, and torch has no absolute decay, corrected maximum or unbiased form.

        Example:
            >>> import torch, amsgrad
            >>> w = torch.nn.Parameter(torch.randn(8192))
            >>> ours = amsgrad.AMSGrad([w], lr=1e-3, eps=1e-8, optimized_update=False, state_precision="int8")
            >>> w.grad = torch.randn(8192)
            >>> _ = ours.step()
            >>> theirs = torch.optim.Adam([w], lr=1e-3, amsgrad=True)
            >>> theirs.load_state_dict(ours.torch_state_dict())
            >>> sorted(theirs.state[w]), theirs.state[w]["exp_avg"].dtype
            (['exp_avg', 'exp_avg_sq', 'max_exp_avg_sq', 'step'], torch.float32)
        """
        ours = self.state_dict()
        index = {id(param): position for position, param in
                 enumerate(param for group in self.param_groups for param in group["params"])}
        state = {}
        for group in self.param_groups:
            for param in group["params"]:
                entries = self.state.get(param)
                if not entries:
                    continue
                moments = float_moments(entries, param)
                if not group.get("amsgrad", False):
                    moments.pop("max_exp_avg_sq", None)
                state[index[id(param)]] = {"step": entries["step"].detach().clone().float(), **moments}
        groups = []
        for group, saved in zip(self.param_groups, ours["param_groups"]):
            groups.append({
                "lr": group["lr"], "betas": group["betas"], "eps": group["eps"],
                "weight_decay": group["weight_decay"], "amsgrad": bool(group.get("amsgrad", False)),
                "maximize": group["maximize"], "foreach": None, "capturable": False, "differentiable": False,
                "fused": None, "decoupled_weight_decay": bool(group["decoupled_weight_decay"]),
                "params": saved["params"],
            })
        return {"state": state, "param_groups": groups}

    def _conform_group(self, group: ParamGroup) -> None:
        """Bring every existing state of the group into the storage its settings ask for."""
        for param in group["params"]:
            state = self.state.get(param)
            if state:
                self._prepare_compressed_state(state, group, param, self._storage(group, param))

    def _prepare_compressed_state(self, state: ParamState, group: ParamGroup, param: torch.Tensor, storage) -> None:
        """Create the state, or bring it into ``storage`` (the precision of a group may change), with a seed
        where something is rounded stochastically."""
        if not state:
            self.init_state(state, group, param)
            return
        conform_state(state, storage, param)
        if self._needs_seed(group, param, storage) and "rounding_seed" not in state:
            state["rounding_seed"] = self._new_seed(param)

    # -------------------------------------------------------- rounding seeds
    def _needs_seed(self, group: ParamGroup, param: torch.Tensor, storage) -> bool:
        return storage.stochastic or (group.get("stochastic_rounding", False) and param.dtype == torch.bfloat16)

    def _new_seed(self, param: torch.Tensor) -> torch.Tensor:
        """The seed of ``param``'s random rounding: from its position in the optimizer, so that every
        run (and every rank of a data-parallel job) draws the same bits; saved in the state."""
        for group_index, group in enumerate(self.param_groups):
            for position, candidate in enumerate(group["params"]):
                if candidate is param:
                    return torch.tensor((group_index << 32) + position, dtype=torch.int64)
        return torch.tensor(0, dtype=torch.int64)

    # ------------------------------------------------------------------ hooks
    def init_state(self, state: ParamState, group: ParamGroup, param: torch.Tensor) -> None:
        """``step`` = 0 and :math:`m_0 = v_0 = 0`, in the group's ``state_precision``."""
        storage = self._storage(group, param)
        _refuse_sharded_compression(group, param, storage)
        state["step"] = _new_step_counter()
        init_storage(state, storage, param, keys=MOMENTS[:2])
        if self._needs_seed(group, param, storage):
            state["rounding_seed"] = self._new_seed(param)

    def get_mv(self, state: ParamState, group: ParamGroup, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the moving averages in place and return :math:`(m_t, v_t)`."""
        beta1, beta2 = group["betas"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        return m, v

    def get_lr(self, state: ParamState, group: ParamGroup) -> float:
        """α_t for this step (a plain number; a tensor ``lr`` is read once here)."""
        lr = group["lr"]
        return float(lr) if isinstance(lr, torch.Tensor) else lr

    def bias_corrections(self, state: ParamState, group: ParamGroup) -> tuple[float, float]:
        """:math:`(1 - β_1^t, 1 - β_2^t)`, or ``(1, 1)`` with ``bias_correction=False``."""
        if not group["bias_correction"]:
            return 1.0, 1.0
        beta1, beta2 = group["betas"]
        t = float(state["step"])
        return 1.0 - beta1**t, 1.0 - beta2**t

    def adam_update(self, state: ParamState, group: ParamGroup, param: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> None:
        """:math:`θ_t = θ_{t-1} - \\text{step size} \\cdot m_t / \\text{denominator}`, in place."""
        correction1, correction2 = self.bias_corrections(state, group)
        lr = self.get_lr(state, group)
        if group["optimized_update"]:
            # α √(1-β2^t)/(1-β1^t) · m / (√v + ε̂)
            denominator = v.sqrt().add_(group["eps"])
            step_size = lr * math.sqrt(correction2) / correction1
        else:
            # α/(1-β1^t) · m / (√v / √(1-β2^t) + ε)
            denominator = v.sqrt()
            if correction2 != 1.0:
                denominator.div_(math.sqrt(correction2))
            denominator.add_(group["eps"])
            step_size = lr / correction1
        param.addcdiv_(m, denominator, value=-step_size)

    def step_param(self, state: ParamState, group: ParamGroup, grad: torch.Tensor, param: torch.Tensor) -> None:
        """Weight decay, then :math:`t \\leftarrow t + 1`, the moments, and the update.

        With a ``state_precision`` other than the parameter's dtype (or a bfloat16 parameter),
        the moments are decoded, the step is computed in float32 (or float64) on a copy of the
        parameter, and everything is stored again once, at the end: the built-in classes run
        :func:`amsgrad.quantization.step.compressed_step`, which defines these numbers; a
        subclass that overrides a hook has its hooks run on the decoded moments.
        """
        storage = self._storage(group, param)
        if needs_compressed_step(storage, param):
            self._prepare_compressed_state(state, group, param, storage)
            if _overridden_hooks(type(self)):
                self._step_decoded(state, group, grad, param, storage)
            else:  # the grad is already negated for maximize
                settings = dataclasses.replace(StepSettings.from_group(group), maximize=False)
                compressed_step(settings, param, grad, state, storage, group["stochastic_rounding"])
            return
        grad = WeightDecay.apply(param, grad, group, self.get_lr(state, group))
        state["step"] += 1
        m, v = self.get_mv(state, group, grad)
        self.adam_update(state, group, param, m, v)

    def _step_decoded(self, state: ParamState, group: ParamGroup, grad: torch.Tensor, param: torch.Tensor,
                      storage) -> None:
        """The hooks, on float copies of θ and of the moments (a subclass's readable path)."""
        dtype = compute_dtype(param, storage)
        work, grad = param.to(dtype), grad.to(dtype)
        local = dict(state)
        keys = [key for key in MOMENTS if key in state or f"{key}_codes" in state]
        for key in keys:
            local[key] = decode(state, key, storage, param).clone()
        grad = WeightDecay.apply(work, grad, group, self.get_lr(local, group))
        local["step"] += 1  # the same tensor as state["step"]
        m, v = self.get_mv(local, group, grad)
        self.adam_update(local, group, work, m, v)
        seed = int(state["rounding_seed"]) if "rounding_seed" in state else None
        step = int(float(state["step"]))
        for key in MOMENTS:
            if key in local and key not in keys:  # a hook created it (the maximum of a switched group)
                init_storage(state, storage, param, keys=(key,))
            if key in local:
                encode(state, key, storage, local[key], seed, step)
        write_param(param, work, group["stochastic_rounding"], seed, step)


def _refuse_sharded_compression(group: ParamGroup, param: torch.Tensor, storage) -> None:
    """A DTensor (FSDP2) parameter with a compressed state is refused: its blocks would not be the
    global tensor's, and nothing would say so."""
    if storage.kind != "float" and hasattr(param, "to_local") and hasattr(param, "device_mesh"):
        raise ValueError(
            f"Invalid state_precision: {group['state_precision']!r} for a DTensor parameter (FSDP2, shape "
            f"{tuple(param.shape)}): compressed state is not supported for sharded parameters; use "
            f"state_precision=None or torch.float32 for them (a param group of their own)"
        )


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
    fused, foreach = group.get("fused"), group.get("foreach")
    if fused and foreach:
        raise ValueError("Invalid fused: True with foreach=True (choose one; None lets the optimizer choose)")
    for key, value in (("fused", fused), ("foreach", foreach)):
        if value and overridden_hooks:
            raise ValueError(
                f"Invalid {key}: True for a subclass that overrides {', '.join(overridden_hooks)}: only the "
                f"readable per-tensor path calls these hooks (use {key}=None or False)"
            )
