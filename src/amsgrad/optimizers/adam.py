"""Adam (Kingma & Ba, ICLR 2015), written per parameter in the paper's notation."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Iterable

import torch

from .. import kernels
from ..quantization.formats import DEFAULT_MIN_COMPRESSED_NUMEL, MOMENTS, parse_state_precision
from ..quantization.state import (
    compute_dtype,
    conform_state,
    decode,
    encode,
    float_moments,
    has_moment,
    init_storage,
    is_conformed,
    needs_compressed_step,
    state_layout,
    storage_for,
    write_param,
)
from ..quantization.step import compressed_step
from ._validation import check_bool, check_decay, check_non_negative, check_non_negative_int
from .generic import GenericAdaptiveOptimizer, ParamGroup, ParamState
from .schedules import beta1_at, beta1_product
from .weight_decay import WeightDecay

__all__ = ["Adam"]

#: The ``state_precision`` values whose state is stored rounded (codes, or bfloat16 written stochastically).
COMPRESSED_PRECISIONS = (torch.bfloat16, "int8", "int4")
_PLAIN = (torch.Tensor, torch.nn.Parameter)


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
        capturable: as in ``torch.optim.Adam``: the step counters live on the parameters'
            device and a step never synchronises with the host (the bias corrections are tensor
            operations; :mod:`amsgrad.kernels.tensor_steps`), so it can be captured in a CUDA
            graph. Unlike torch's, it works on CPU too. It runs the multi-tensor path, so
            ``fused=True``, ``foreach=False``, a ``state_precision`` (the compressed step and a
            wider state read each step count on the host), ``stochastic_rounding=True``,
            ``differentiable=True``, a subclass's hooks and ``nonfinite="skip"``/``"raise"``
            (whose check is a synchronisation) are refused with it. bfloat16 parameters are
            stepped in bfloat16, as torch's capturable step does. To change α inside a captured
            graph, give ``lr`` as a tensor on the device.
        differentiable: as in ``torch.optim.Adam``: autograd records the step, so that the
            updated parameters and state can be differentiated with respect to the parameters,
            gradients and state before it (not α or β, which enter as numbers). It runs the
            readable path, in the state's float dtype (a wider ``state_precision`` is honoured:
            the hooks run on a copy of θ in that dtype, copied back); ``fused=True``,
            ``foreach=True``, ``capturable=True``, the compressed precisions (bfloat16, int8,
            int4: stored by rounding, which has no derivative) and ``stochastic_rounding=True``
            are refused with it.

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
    bfloat16 parameters every path computes in float32 and rounds θ once per step (but
    ``capturable=True`` and ``differentiable=True`` groups, which step them in bfloat16, as
    ``torch.optim`` does).

    Low-precision parameters: with float16 or bfloat16 parameters and ``state_precision=None``
    the moments are float16/bfloat16 too, and in float16 the default ``eps=1e-16`` is 0 while
    :math:`v_t` underflows, so the update divides by 0 (NaN within a few steps).
    ``state_precision=torch.float32`` keeps the moments in float32 and computes the step there,
    on a float32 copy of θ that is rounded back to the parameter's dtype once per step. It is not
    a float32 master copy of the parameters: an update smaller than half a unit in the last place
    of θ is lost, which is why bfloat16 parameters stall at about twice float32's loss with
    either state; ``stochastic_rounding=True`` removes that stall. For training in bfloat16 alone,
    combine it with ``state_precision=torch.bfloat16``, whose m and v are rounded stochastically
    too: with ``state_precision=None`` they are rounded to nearest (as torch keeps them), and a
    v that β2 = 0.999 changes by less than half a bfloat16 unit per step stalls as well. The
    setting lives in the param groups, and ``load_state_dict`` keeps such a state in its precision
    (``torch.optim`` would round it to the parameter's dtype).

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
    a loaded Adam state into AMSGrad). Each loaded state is brought into its group's
    ``state_precision`` (quantized, or decoded, from the dict's own tensors), and a checkpoint
    of an earlier version, whose groups name the setting ``state_dtype``, loads as
    ``state_precision``.

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
        capturable: bool = False,
        differentiable: bool = False,
        beta1_decay: float = 1.0,
    ):
        defaults = {} if defaults is None else dict(defaults)
        defaults.update(
            beta1_decay=beta1_decay,
            capturable=capturable,
            differentiable=differentiable,
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
        check_decay("beta1_decay", group["beta1_decay"])
        check_bool("capturable", group.get("capturable", False))
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
        # Pickles of earlier versions name the setting state_dtype (a float dtype or None).
        for group in state.get("param_groups", []):
            _rename_state_dtype(group)
        super().__setstate__(state)

    def _plan_group(self, group: ParamGroup, params: list[torch.Tensor], grads: list[torch.Tensor | None], *,
                    compiling: bool = False, report: bool = False) -> kernels.Plan:
        """The readable loop, or the fast path that the settings pick (:func:`amsgrad.kernels.plan`).

        A group seen for the first time, or whose ``state_precision`` (or its companions) changed
        since its last step, has every state brought into the new storage first: aside, stored
        when the step is committed, like the states of new parameters.
        """
        precision = group.get("state_precision")
        if not report and precision is not None and parse_state_precision(precision) in COMPRESSED_PRECISIONS:
            for param in params:  # refused before anything changes, whichever path
                if type(param) not in _PLAIN:
                    _refuse_sharded_compression(group, param, self._storage(group, param))
        layout = (precision, group.get("min_compressed_numel"), group.get("stochastic_rounding"))
        seen = self.__dict__.setdefault("_layouts_seen", {})
        replaced: dict[torch.Tensor, ParamState] = {}
        if seen.get(id(group)) != layout:
            for param in group["params"]:
                state = self.state.get(param)
                if not state:
                    continue
                storage = self._storage(group, param)
                if report:  # a report allocates nothing: a state to convert is counted as a new one
                    if not is_conformed(state, storage, param):
                        replaced[param] = {}
                elif (converted := self._planned_state(state, group, param, storage, maximum=False)) is not None:
                    replaced[param] = converted
        plan = kernels.plan(self, group, params, grads, _overridden_hooks(type(self)), compiling=compiling,
                            report=report, replaced=replaced)
        if report:
            return plan
        store = kernels.StorePlan(self.state, replaced, after=lambda: seen.__setitem__(id(group), layout))
        return kernels.SplitPlan([store, plan]) if seen.get(id(group)) != layout else plan

    def _max_of(self, group: ParamGroup) -> str | None:
        """Where AMSGrad's maximum is taken for ``group``: Adam keeps none."""
        return None

    def _new_step(self, group: ParamGroup, param: torch.Tensor, value: float = 0.0) -> torch.Tensor:
        """A step counter, as in ``torch.optim``: a 0-d tensor, float64 only when that is the default
        dtype; on the CPU, or on the parameter's device with ``capturable=True``."""
        dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        device = param.device if group.get("capturable", False) else "cpu"
        return torch.full((), float(value), dtype=dtype, device=device)

    # ------------------------------------------------------------- state storage
    def _storage(self, group: ParamGroup, param: torch.Tensor):
        """How ``param``'s moments are stored under the group's ``state_precision``."""
        return storage_for(parse_state_precision(group.get("state_precision")), param,
                           group.get("min_compressed_numel", DEFAULT_MIN_COMPRESSED_NUMEL))

    def _planned_state(self, state: ParamState | None, group: ParamGroup, param: torch.Tensor, storage,
                       maximum: bool) -> ParamState | None:
        """The state ``param`` steps from, when ``state`` is not ready as it is: new (created), or a
        copy brought into ``storage``, with the maximum (``maximum``) and the rounding seed it needs.
        None when ``state`` is ready. ``state`` itself is never modified (the caller stores the result
        once the step is committed)."""
        if not state:
            new: ParamState = {}
            self.init_state(new, group, param)
            if maximum and not has_moment(new, "max_exp_avg_sq"):
                init_storage(new, storage, param, keys=("max_exp_avg_sq",))
            return new
        seed = self._needs_seed(group, param, storage) and "rounding_seed" not in state
        missing_maximum = maximum and not has_moment(state, "max_exp_avg_sq")
        if not seed and not missing_maximum and is_conformed(state, storage, param):
            return None
        new = dict(state)
        conform_state(new, storage, param)
        if seed:
            new["rounding_seed"] = self._new_seed(param)
        if missing_maximum:  # a group switched to amsgrad, or a plain Adam state: v̂ starts at 0
            init_storage(new, storage, param, keys=("max_exp_avg_sq",))
        return new

    def _prepare_compressed_state(self, state: ParamState, group: ParamGroup, param: torch.Tensor, storage) -> None:
        """Bring ``state`` into ``storage``, in place (the readable path; the fast paths plan it)."""
        planned = self._planned_state(state, group, param, storage, maximum=self._max_of(group) is not None)
        if planned is not None:
            state.clear()
            state.update(planned)

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

    # ----------------------------------------------------- loading and switching
    def _complete_loaded_group(self, saved: ParamGroup, current: ParamGroup) -> ParamGroup:
        """A group saved by ``torch.optim`` continues with torch's update: ``optimized_update=False``
        (its ``eps`` is torch's ε, added to √(v/(1-β2^t))) and ``bias_correction=True``. A group of an
        earlier version names ``state_precision`` ``state_dtype``; a dtype name becomes the dtype."""
        _rename_state_dtype(saved)
        if "state_precision" in saved:
            try:
                saved["state_precision"] = parse_state_precision(saved["state_precision"])
            except ValueError:
                pass  # validate_group refuses it, naming the group
        saved.setdefault("optimized_update", False)
        saved.setdefault("bias_correction", True)
        saved.setdefault("beta1_decay", 1.0)  # torch's β1 is constant
        return super()._complete_loaded_group(saved, current)

    def _check_loaded_state(self, state_dict: dict[str, Any]) -> None:
        """Refuse, before anything changes: a step that is neither a number nor a tensor, codes that fit
        no format of their parameter, and a compressed state for a DTensor parameter."""
        for index, entries in state_dict.get("state", {}).items():
            step = entries.get("step") if isinstance(entries, dict) else None
            if step is not None and not isinstance(step, torch.Tensor) and (
                    isinstance(step, bool) or not isinstance(step, numbers.Real)):
                raise TypeError(f"the saved state of parameter {index}: step must be a number or a tensor, got "
                                f"{step!r} of type {type(step).__name__}")
        for saved_id, group, param in self._loaded_owners(state_dict):
            entries = state_dict["state"].get(saved_id)
            if not isinstance(entries, dict):
                continue
            for key in MOMENTS:
                try:
                    state_layout(entries, key, param.numel())
                except ValueError as error:
                    raise ValueError(f"the saved state of parameter {saved_id} (shape {tuple(param.shape)}): "
                                     f"{error}") from None
            _refuse_sharded_compression(group, param, self._storage(group, param))

    def _loaded_owners(self, state_dict: dict[str, Any]):
        """(saved id, loaded group, parameter) of each parameter: the groups of ``state_dict`` (completed),
        their ids matched to our parameters in order, as ``torch.optim`` matches them. Nothing where the
        sizes differ (which ``torch.optim`` refuses)."""
        saved_groups = state_dict["param_groups"]
        if [len(group["params"]) for group in saved_groups] != [len(group["params"]) for group in self.param_groups]:
            return
        for saved, group in zip(saved_groups, self.param_groups):
            for saved_id, param in zip(saved["params"], group["params"]):
                yield saved_id, saved, param

    def _restore_state_dtypes(self, state_dict: dict[str, Any]) -> None:
        """Bring every loaded state into its group's storage, from the dict's own tensors.

        ``torch.optim`` casts every floating state tensor to the parameter's dtype (the block
        scales too); here each state is rebuilt from the saved tensors: kept as it is where it
        already has the group's storage, quantized or decoded where it does not.
        """
        for saved_id, group, param in self._loaded_owners(state_dict):
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

    def _finish_loaded_state(self, state_dict: dict[str, Any]) -> None:
        """Each state in its group's ``state_precision`` (:meth:`_restore_state_dtypes`); steps saved
        as plain numbers become step tensors (as ``torch.optim.Adam`` converts them); with
        ``capturable=True`` each step tensor is moved to its parameter's device."""
        super()._finish_loaded_state(state_dict)
        self.__dict__.pop("_layouts_seen", None)  # every state is in its group's storage now
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
        same in both forms, in every ``state_precision``, so every implementation (readable,
        multi-tensor, fused, compressed) continues from it. Returns the indices of the groups
        switched.

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

    def torch_state_dict(self) -> dict[str, Any]:
        """This optimizer's state in ``torch.optim.Adam``'s format, for ``torch.optim.Adam``/``AdamW``.

        Every state is decoded into float tensors of the parameter's dtype under torch's keys
        (``step``, ``exp_avg``, ``exp_avg_sq``, and ``max_exp_avg_sq`` for groups that keep a
        maximum); the param groups hold torch's settings: ``lr``, ``betas``, ``eps``,
        ``weight_decay``, ``amsgrad``, ``maximize``, ``decoupled_weight_decay``, and
        ``foreach``/``fused`` left to torch (``capturable`` and ``differentiable`` off, the steps on
        the CPU). torch continues with *its* update from there, which is ours for groups with
        ``optimized_update=False`` and raw maxima; ε̂ of ``optimized_update=True`` is handed over as
        ε, and torch has no absolute decay, corrected maximum or unbiased form. (``state_dict()``
        itself loads into ``torch.optim`` too, where every state is a float state: torch then casts
        it to the parameter's dtype.)

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
                if self._max_of(group) is None:
                    moments.pop("max_exp_avg_sq", None)
                step = entries["step"]
                step = step.detach().to("cpu", torch.float32, copy=True) if isinstance(step, torch.Tensor) else \
                    torch.tensor(float(step))
                state[index[id(param)]] = {"step": step, **moments}
        groups = []
        for group, saved in zip(self.param_groups, ours["param_groups"]):
            groups.append({
                "lr": group["lr"], "betas": group["betas"], "eps": group["eps"],
                "weight_decay": group["weight_decay"], "amsgrad": self._max_of(group) is not None,
                "maximize": group["maximize"], "foreach": None, "capturable": False, "differentiable": False,
                "fused": None, "decoupled_weight_decay": bool(group["decoupled_weight_decay"]),
                "params": saved["params"],
            })
        return {"state": state, "param_groups": groups}

    # ------------------------------------------------------------------ hooks
    def init_state(self, state: ParamState, group: ParamGroup, param: torch.Tensor) -> None:
        """``step`` = 0 and :math:`m_0 = v_0 = 0`, in the group's ``state_precision``."""
        storage = self._storage(group, param)
        _refuse_sharded_compression(group, param, storage)
        state["step"] = self._new_step(group, param)
        init_storage(state, storage, param, keys=MOMENTS[:2])
        if self._needs_seed(group, param, storage):
            state["rounding_seed"] = self._new_seed(param)

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

        With a ``state_precision`` other than the parameter's dtype (or a bfloat16 parameter),
        the moments are decoded, the step is computed in float32 (or float64) on a copy of the
        parameter, and everything is stored again once, at the end: the built-in classes run
        :func:`amsgrad.quantization.step.compressed_step`, which defines these numbers; a
        subclass that overrides a hook has its hooks run on the decoded moments. A
        ``differentiable=True`` group (whose state is a float state) runs the hooks, which
        autograd records, in the state's dtype, on a copy of θ when that is wider.
        """
        storage = self._storage(group, param)
        if group.get("differentiable", False):
            work = param
            if storage.dtype != param.dtype:  # a wider float state (compressed ones are refused)
                work, grad = param.to(storage.dtype), grad.to(storage.dtype)
            grad = WeightDecay.apply(work, grad, group, self.get_lr(state, group))
            state["step"] += 1
            m, v = self.get_mv(state, group, grad)
            self.adam_update(state, group, work, m, v)
            if work is not param:
                param.copy_(work)
            return
        if needs_compressed_step(storage, param):
            self._prepare_compressed_state(state, group, param, storage)
            if _overridden_hooks(type(self)):
                self._step_decoded(state, group, grad, param, storage)
            else:  # the grad is already negated for maximize
                settings = dataclasses.replace(kernels.StepSettings.from_group(group, self._max_of(group)), maximize=False)
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
        keys = [key for key in MOMENTS if has_moment(state, key)]
        for key in keys:
            local[key] = decode(state, key, storage, param).clone()
        # the maximum is stored never below its previous value (the hooks update it in place)
        floor = local["max_exp_avg_sq"].clone() if "max_exp_avg_sq" in keys else None
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
                encode(state, key, storage, local[key], seed, step, floor=floor if key == "max_exp_avg_sq" else None)
        write_param(param, work, group["stochastic_rounding"], seed, step)


def _rename_state_dtype(group: dict[str, Any]) -> None:
    """``state_dtype`` (a float dtype or None) of an earlier version's group, as ``state_precision``."""
    if "state_dtype" in group:
        value = group.pop("state_dtype")
        group.setdefault("state_precision", value)


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
    """Refuse the settings that no implementation can honour together, saying why."""
    fused, foreach = group.get("fused"), group.get("foreach")
    capturable, differentiable = group.get("capturable", False), group.get("differentiable", False)
    precision = group.get("state_precision")
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
        if parse_state_precision(precision) in COMPRESSED_PRECISIONS:
            raise ValueError(
                f"Invalid state_precision: {parse_state_precision(precision)!r} with differentiable=True: autograd "
                f"records float arithmetic, while a compressed state is stored by rounding (to codes, or to "
                f"bfloat16 at random), which has no derivative; use state_precision=None, torch.float32 or "
                f"torch.float64"
            )
        if group.get("stochastic_rounding", False):
            raise ValueError(
                "Invalid stochastic_rounding: True with differentiable=True: θ rounded at random has no "
                "derivative (the differentiable step rounds bfloat16 parameters to nearest, as torch.optim does); "
                "use stochastic_rounding=False"
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
        if precision is not None:
            raise ValueError(f"Invalid state_precision: {precision!r} with capturable=True: {why}, while the "
                             f"compressed step (bfloat16, int8, int4 state, and a float state wider than its "
                             f"parameter) reads each step count on the host; use state_precision=None")
        if group.get("stochastic_rounding", False):
            raise ValueError(f"Invalid stochastic_rounding: True with capturable=True: {why}, while stochastic "
                             f"rounding of bfloat16 parameters is the compressed step's, which reads each step count "
                             f"on the host; use stochastic_rounding=False")
        if group.get("nonfinite", "propagate") != "propagate":
            raise ValueError(f"Invalid nonfinite: {group['nonfinite']!r} with capturable=True: {why}, while "
                             f"deciding to skip or raise reads the gradients' finiteness on the host; use "
                             f"nonfinite='propagate' (torch.amp.GradScaler skips non-finite steps on the device)")
        if overridden_hooks:
            raise ValueError(f"Invalid capturable: True for a subclass that overrides {', '.join(overridden_hooks)}: "
                             f"{why}, while only the readable path calls these hooks")
    for key, value in (("fused", fused), ("foreach", foreach)):
        if value and overridden_hooks:
            raise ValueError(
                f"Invalid {key}: True for a subclass that overrides {', '.join(overridden_hooks)}: only the "
                f"readable per-tensor path calls these hooks (use {key}=None or False)"
            )
