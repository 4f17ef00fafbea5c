"""The step of tensors whose state is compressed (or whose parameters are bfloat16): the fused C
kernel where it applies, else the reference compressed step of :mod:`amsgrad.quantization.step`.

:func:`split` picks a group's tensors that take it; :class:`CompressedPlan` plans their step as
:func:`amsgrad.kernels.plan` plans the others' (states made aside, refusals before anything
changes), reported as ``"compressed C kernel"`` and ``"compressed reference"``.
:func:`native_layout` says whether the C kernel (:mod:`.native`, ``csrc/compressed_step.c``)
takes a tensor: contiguous CPU tensors, float32 or bfloat16 parameters (gradients of the same
dtype), float32 or float64 step counters, and a storage the kernel knows. Everything else, on
any device, runs the reference step, tensor by tensor; the two compute the same numbers, bit
for bit (``tests/quantization/test_kernels.py``).
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Sequence

import torch

from ..quantization.formats import DEFAULT_MIN_COMPRESSED_NUMEL, MOMENTS, parse_state_precision
from ..quantization.state import Storage, is_conformed, needs_compressed_step, storage_for
from ..quantization.step import compressed_step
from . import native
from .settings import StepSettings, schedule_refusal

__all__ = ["split", "CompressedPlan", "native_layout", "native_settings", "fused_compressed_step",
           "reference_compressed_step", "COMPRESSED_C_KERNEL", "COMPRESSED_REFERENCE"]

_PARAM_KINDS = {torch.float32: native.PARAM_F32, torch.bfloat16: native.PARAM_BF16}


def state_kind(storage: Storage, param_dtype: torch.dtype) -> int | None:
    """The C kernel's number for ``storage`` of a ``param_dtype`` parameter, or None if it has none."""
    if storage.kind == "block":
        return native.STATE_INT8 if storage.block_format.bits == 8 else native.STATE_INT4
    if storage.kind == "bfloat16":
        return native.STATE_BF16
    if param_dtype == torch.bfloat16 and storage.dtype == torch.bfloat16:
        return native.STATE_BF16_NEAREST
    if param_dtype == torch.bfloat16 and storage.dtype == torch.float32:
        return native.STATE_F32
    return None  # float32 state of float32 parameters: the float kernel (adam_step.c)


_PLAIN = (torch.Tensor, torch.nn.Parameter)
_STEP_DTYPES = (torch.float32, torch.float64)
_BLOCK_STATE_KEYS = tuple(f"{key}_{part}" for key in MOMENTS for part in ("codes", "scales"))


def native_layout(storage: Storage, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any],
                  stochastic: bool) -> native.NativeLayout | None:
    """The kernel's layout for one tensor, or None when the kernel cannot update it."""
    # (is_cpu rather than device.type: this runs for every tensor at every step, and a device is a new object)
    if not param.is_cpu or param.dtype not in _PARAM_KINDS or grad.dtype != param.dtype:
        return None
    if type(param) not in _PLAIN or type(grad) not in _PLAIN:
        return None
    kind = state_kind(storage, param.dtype)
    step = state["step"]
    if kind is None or not step.is_cpu or step.dtype not in _STEP_DTYPES:
        return None
    if not (param.is_contiguous() and grad.is_contiguous()):
        return None
    for name in _BLOCK_STATE_KEYS if storage.kind == "block" else MOMENTS:
        value = state.get(name)
        if value is not None and not (value.is_contiguous() and value.is_cpu):
            return None
    return native.NativeLayout(param_kind=_PARAM_KINDS[param.dtype], state_kind=kind,
                               stochastic_param=int(bool(stochastic) and param.dtype == torch.bfloat16))


def native_settings(s: StepSettings, step_is_double: bool) -> native.NativeSettings:
    """The C ``settings_t`` of a param group's settings."""
    if s.weight_decay == 0.0:
        decay_mode = native.DECAY_NONE
    else:
        decay_mode = native.DECAY_SCALE_PARAM if s.decoupled else native.DECAY_COUPLED
    max_mode = {None: native.MAX_NONE, "raw": native.MAX_RAW, "corrected": native.MAX_CORRECTED}[s.max_of]
    return native.NativeSettings(
        lr=s.lr, beta1=s.beta1, beta2=s.beta2, eps=s.eps, weight_decay=s.weight_decay,
        decay_factor=s.decay_factor, sign=-1.0 if s.maximize else 1.0, decay_mode=decay_mode, max_mode=max_mode,
        optimized_update=int(s.optimized_update), bias_correction=int(s.bias_correction),
        step_is_double=int(step_is_double), num_threads=torch.get_num_threads(),
    )


def fused_compressed_step(lib, settings: StepSettings, storage: Storage, layout: native.NativeLayout,
                          params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                          states: Sequence[dict[str, Any]]) -> None:
    """One C call for tensors of one storage, layout and step dtype (each checked by :func:`native_layout`)."""
    keys = MOMENTS if settings.max_of is not None else MOMENTS[:2]
    block = storage.kind == "block"
    moments = [[state[f"{key}_codes" if block else key] for state in states] for key in keys]
    scales = [[state[f"{key}_scales"] for state in states] for key in keys] if block else None
    needs_seed = storage.stochastic or layout.stochastic_param
    seeds = [int(state["rounding_seed"]) for state in states] if needs_seed else None
    steps = [state["step"] for state in states]
    native.compressed_step(lib, layout, params, grads, moments, scales, steps, seeds,
                           native_settings(settings, steps[0].dtype == torch.float64))


def reference_compressed_step(settings: StepSettings, storage: Storage, params: Sequence[torch.Tensor],
                              grads: Sequence[torch.Tensor], states: Sequence[dict[str, Any]],
                              stochastic: bool) -> None:
    """The reference step (torch ops, any device), tensor by tensor."""
    for param, grad, state in zip(params, grads, states):
        compressed_step(settings, param, grad, state, storage, stochastic)


_dtype = attrgetter("dtype")

#: The names :meth:`amsgrad.GenericAdaptiveOptimizer.implementations` reports for the compressed step.
COMPRESSED_C_KERNEL, COMPRESSED_REFERENCE = "compressed C kernel", "compressed reference"


def split(group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor | None]
          ) -> tuple[list[tuple[torch.Tensor, Any, Storage]], list[torch.Tensor], list[torch.Tensor | None]]:
    """The tensors of ``group`` that take the compressed step, as (param, grad, storage), and the others
    (params, grads), which take the group's float path.

    Every tensor whose storage is not its own dtype does, and every bfloat16 parameter (computed in
    float32, rounded once); none of a ``capturable=True`` group, whose ``state_precision`` is None
    (its bfloat16 parameters are stepped in bfloat16, multi-tensor, as ``torch.optim`` steps them).
    """
    precision = group.get("state_precision")
    if group.get("capturable", False) or (precision is None and torch.bfloat16 not in set(map(_dtype, params))):
        return [], params, grads  # the common case, decided without a loop over the tensors
    precision = parse_state_precision(precision)  # a name set in the group by hand
    min_numel = group.get("min_compressed_numel", DEFAULT_MIN_COMPRESSED_NUMEL)
    members, rest_params, rest_grads = [], [], []
    for param, grad in zip(params, grads):
        storage = storage_for(precision, param, min_numel)
        if needs_compressed_step(storage, param):
            members.append((param, grad, storage))
        else:
            rest_params.append(param)
            rest_grads.append(grad)
    if not members:
        return [], params, grads
    return members, rest_params, rest_grads


class CompressedPlan:
    """The compressed step of some tensors of a group (a :class:`amsgrad.kernels.Plan`).

    ``fused``: the C kernel for every tensor it takes (``lib.get()`` builds it; None: no kernel)
    and the reference step for the others, which ``explicit`` (``fused=True``) refuses instead,
    naming the first, before anything changes. Otherwise the reference step for all. States that
    are missing, in another storage, or without the maximum or rounding seed they need are made
    aside (:meth:`amsgrad.Adam._planned_state`) and stored by :meth:`commit`.
    """

    traceable = False  # under torch.compile it runs outside the graph, as the fused kernels do

    def __init__(self, optimizer, group: dict[str, Any], settings: StepSettings,
                 members: list[tuple[torch.Tensor, Any, Storage]], *, fused: bool, explicit: bool, lib,
                 report: bool = False, replaced: dict | None = None) -> None:
        self.settings, self.stochastic = settings, bool(group.get("stochastic_rounding", False))
        self.pending: list[tuple[dict, Any, dict]] = []
        self.refused = 0
        # (param, grad, state, storage, layout or None): real views for complex parameters
        self.entries: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any], Storage, Any]] = []
        if fused and explicit and not settings.plain and not report:
            raise RuntimeError(schedule_refusal(settings, "the reference compressed step (torch ops)"))
        # the C kernel has constant betas: a schedule (a decaying β1, AdamNC, AdamX) runs the reference step
        library = lib.get() if fused and lib is not None and settings.plain else None
        maximum = settings.max_of is not None
        for param, grad, storage in members:
            state = replaced.get(param) if replaced and param in replaced else optimizer.state.get(param)
            if report:
                grad = param if grad is None else grad
                ready = bool(state) and is_conformed(state, storage, param)
            else:
                planned = optimizer._planned_state(state, group, param, storage, maximum)
                if planned is not None:
                    self.pending.append((optimizer.state, param, planned))
                    state = planned
                ready = True
            if param.is_complex():  # a wider float state of a complex parameter: its real view
                param, grad = torch.view_as_real(param), torch.view_as_real(grad)
                state = {key: torch.view_as_real(value) if isinstance(value, torch.Tensor) and value.is_complex()
                         else value for key, value in (state or {}).items()}
                storage = storage_for(parse_state_precision(group.get("state_precision")), param, 0)
            layout = None
            if library is not None:
                layout = native_layout(storage, param, grad, state, self.stochastic) if ready else \
                    (native_layout_of_new_state(storage, param, grad, self.stochastic))
            if layout is None and fused and explicit:  # (a schedule was refused above, unless reporting)
                if not report:
                    raise RuntimeError(_no_kernel(param, storage, library))
                self.refused += 1
            self.entries.append((param, grad, state, storage, layout))
        self.lib = library

    def implementations(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        kernel = sum(1 for entry in self.entries if entry[4] is not None)
        for name, count in ((COMPRESSED_C_KERNEL, kernel), ("refused", self.refused),
                            (COMPRESSED_REFERENCE, len(self.entries) - kernel - self.refused)):
            if count:
                counts[name] = count
        return counts

    def commit(self) -> None:
        for mapping, param, state in self.pending:
            mapping[param] = state
        self.pending = []

    def run(self) -> None:
        batches: dict[Any, list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]] = {}
        for param, grad, state, storage, layout in self.entries:
            if layout is None:
                compressed_step(self.settings, param, grad, state, storage, self.stochastic)
                continue
            key = (storage, layout.param_kind, layout.state_kind, layout.stochastic_param, state["step"].dtype)
            batches.setdefault(key, []).append((param, grad, state))
        for (storage, param_kind, state_kind, stochastic, _), members in batches.items():
            layout = native.NativeLayout(param_kind=param_kind, state_kind=state_kind, stochastic_param=stochastic)
            fused_compressed_step(self.lib, self.settings, storage, layout, [m[0] for m in members],
                                  [m[1] for m in members], [m[2] for m in members])

    def pieces(self) -> list["CompressedPlan"]:
        return [self]


def native_layout_of_new_state(storage: Storage, param: torch.Tensor, grad: torch.Tensor,
                               stochastic: bool) -> native.NativeLayout | None:
    """:func:`native_layout` for a state not made yet (a report): what the parameter and gradient allow."""
    if not _kernel_takes(storage, param, grad):
        return None
    return native.NativeLayout(param_kind=_PARAM_KINDS[param.dtype], state_kind=state_kind(storage, param.dtype),
                               stochastic_param=int(bool(stochastic) and param.dtype == torch.bfloat16))


def _kernel_takes(storage: Storage, param: torch.Tensor, grad: torch.Tensor) -> bool:
    """What :func:`native_layout` checks, of the parameter and gradient alone (a fresh state always fits)."""
    plain = (torch.Tensor, torch.nn.Parameter)
    return (param.device.type == "cpu" and param.dtype in _PARAM_KINDS and grad.dtype == param.dtype
            and type(param) in plain and type(grad) in plain and param.is_contiguous() and grad.is_contiguous()
            and state_kind(storage, param.dtype) is not None)


def _no_kernel(param: torch.Tensor, storage: Storage, lib) -> str:
    what = storage.block_format.name if storage.kind == "block" else f"{storage.kind} {storage.dtype}"
    if lib is None:
        why = f"the C kernel is unavailable ({native.unavailable_reason() or 'disabled'})"
    else:
        why = ("the compressed kernel takes contiguous CPU float32/bfloat16 parameters with gradients of "
               "the same dtype")
    return (f"Invalid fused: True for a {param.dtype} parameter on {param.device.type} with {what} state: {why}. "
            f"Use fused=None to fall back to the reference step (torch ops).")
