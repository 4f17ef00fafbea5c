"""The step of tensors whose state is compressed (or whose parameters are bfloat16): the fused C
kernel where it applies, else the reference compressed step of :mod:`amsgrad.quantization.step`.

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

from ..quantization.formats import DEFAULT_MIN_COMPRESSED_NUMEL, MOMENTS
from ..quantization.state import Storage, needs_compressed_step, storage_for
from ..quantization.step import compressed_step
from . import native
from .settings import StepSettings

__all__ = ["native_layout", "native_settings", "fused_compressed_step", "reference_compressed_step",
           "step_compressed"]

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


def native_layout(storage: Storage, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any],
                  stochastic: bool) -> native.NativeLayout | None:
    """The kernel's layout for one tensor, or None when the kernel cannot update it."""
    if param.device.type != "cpu" or param.dtype not in _PARAM_KINDS or grad.dtype != param.dtype:
        return None
    if type(param) not in (torch.Tensor, torch.nn.Parameter) or type(grad) not in (torch.Tensor, torch.nn.Parameter):
        return None
    kind = state_kind(storage, param.dtype)
    step = state["step"]
    if kind is None or step.device.type != "cpu" or step.dtype not in (torch.float32, torch.float64):
        return None
    if not (param.is_contiguous() and grad.is_contiguous()):
        return None
    for key in MOMENTS:
        for name in ((f"{key}_codes", f"{key}_scales") if storage.kind == "block" else (key,)):
            value = state.get(name)
            if value is not None and not (value.is_contiguous() and value.device.type == "cpu"):
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


def step_compressed(optimizer, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor],
                    choice: str, lib_getter) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Step the group's tensors that take the compressed step; return the others (params, grads).

    ``choice`` ``"fused"``: the C kernel for every tensor it takes (``lib_getter()`` builds it;
    None: no kernel), the reference step for the rest, or, with ``fused=True``, an error naming
    the first tensor it cannot take, before anything changes. ``"foreach"``: the reference step.
    """
    precision = group.get("state_precision")
    if precision is None and torch.bfloat16 not in set(map(_dtype, params)):
        return params, grads  # the common case, decided without a loop over the tensors
    min_numel = group.get("min_compressed_numel", DEFAULT_MIN_COMPRESSED_NUMEL)
    rest_params, rest_grads, todo = [], [], []
    for param, grad in zip(params, grads):
        storage = storage_for(precision, param, min_numel)
        if needs_compressed_step(storage, param):
            todo.append((param, grad, storage))
        else:
            rest_params.append(param)
            rest_grads.append(grad)
    if not todo:
        return params, grads

    settings = StepSettings.from_group(group)
    lib = lib_getter() if choice == "fused" and lib_getter is not None else None
    if choice == "fused" and group.get("fused") is True:
        for param, grad, storage in todo:  # refuse before anything changes
            if lib is None or not _kernel_takes(storage, param, grad):
                raise RuntimeError(_no_kernel(param, storage, lib))
    batches: dict[Any, list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]] = {}
    leftover = []
    for param, grad, storage in todo:
        state = optimizer.state[param]
        optimizer._prepare_compressed_state(state, group, param, storage)
        layout = native_layout(storage, param, grad, state, group["stochastic_rounding"]) if lib is not None else None
        if layout is None:
            leftover.append((param, grad, state, storage))
            continue
        key = (storage, layout.param_kind, layout.state_kind, layout.stochastic_param, state["step"].dtype)
        batches.setdefault(key, []).append((param, grad, state))
    for (storage, param_kind, state_kind, stochastic, _), members in batches.items():
        layout = native.NativeLayout(param_kind=param_kind, state_kind=state_kind, stochastic_param=stochastic)
        fused_compressed_step(lib, settings, storage, layout, [m[0] for m in members], [m[1] for m in members],
                              [m[2] for m in members])
    for param, grad, state, storage in leftover:
        compressed_step(settings, param, grad, state, storage, group["stochastic_rounding"])
    return rest_params, rest_grads


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
