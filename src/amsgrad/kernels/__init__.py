r"""The fast steps of :class:`~amsgrad.Adam` and :class:`~amsgrad.AMSGrad`, and how one is chosen.

The readable path (:meth:`amsgrad.Adam.step_param`, one tensor at a time) is the reference;
everything here computes the same numbers faster, and is tested against it in float64.

Which implementation runs, per param group (the ``foreach`` and ``fused`` settings):

==========================  ===========================================================
``fused`` / ``foreach``     implementation
==========================  ===========================================================
``None`` / ``None``         the fastest correct one, per tensor: fused where a fused
                            kernel exists, multi-tensor otherwise (and under
                            :func:`torch.compile`, multi-tensor, which it traces)
``True`` / ``None``         fused; a tensor no fused kernel can update is an error
``False`` / ``None``        multi-tensor (``torch._foreach_*``), :mod:`.foreach`
``None`` / ``True``         multi-tensor
``None``/``False``,         the readable per-tensor loop
``False``/``False``
``True`` / ``True``         refused when the group is created
==========================  ===========================================================

A subclass that overrides a hook (``init_state``, ``get_mv``, ``get_lr``,
``bias_corrections``, ``adam_update``, ``step_param``) always takes the readable path, since
only that path calls the hooks; asking it for ``fused=True`` or ``foreach=True`` is refused.
Tensors whose ``state_precision`` is not their own dtype (bfloat16, int8 or int4 state, or a
float state wider than the parameter), and bfloat16 parameters, take the compressed step
(:mod:`.compressed`): on the fused path our C kernel (``csrc/compressed_step.c``) for contiguous
CPU float32/bfloat16 tensors, elsewhere the reference step in torch ops
(:func:`amsgrad.quantization.step.compressed_step`, also the ``foreach`` and readable paths of
the built-in classes), which computes the same numbers.

Which fused kernel updates a tensor:

==============================  =============================  ==============================
tensor                          settings                       kernel
==============================  =============================  ==============================
CPU, float32/float64            all                            ours, :mod:`.native` (C,
                                                               built on first use); without
                                                               a C compiler, as the next rows
CPU, CUDA (and other devices    all but ``max_of="corrected"``  torch's ``_fused_adam(w)_``,
torch has the kernel for),                                     settings mapped as in
any floating dtype                                             :mod:`.torch_fused`
anything else                   ``max_of="corrected"``          none: multi-tensor (auto), or
                                                               an error (``fused=True``)
==============================  =============================  ==============================

Tensors that are not contiguous (or whose gradient or state is not), or whose gradient or
state has another dtype, take the multi-tensor path under any setting, since the fused kernels
walk memory linearly in one dtype. Tensor subclasses
(``DTensor`` parameters of FSDP2, say) take it too, by default; ``fused=True`` refuses them.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import torch

from . import compressed, native
from .foreach import foreach_step, read_steps
from .settings import StepSettings
from .torch_fused import supports as torch_kernel_supports
from .torch_fused import torch_fused_step

__all__ = ["step_group", "StepSettings", "foreach_step", "torch_fused_step", "native"]

#: Hooks the fast paths compute themselves: a subclass that overrides one runs on the readable path.
HOOKS = ("init_state", "get_mv", "get_lr", "bias_corrections", "adam_update", "step_param")

#: Fused backends in order of preference on CPU; tests and benchmarks may narrow it.
CPU_FUSED_BACKENDS: tuple[str, ...] = ("native", "torch")

_NATIVE_DTYPES = (torch.float32, torch.float64)
_PLAIN = frozenset((torch.Tensor, torch.nn.Parameter))


def implementation(group: dict[str, Any], overridden_hooks: tuple[str, ...]) -> str:
    """``"readable"``, ``"foreach"`` or ``"fused"`` (fused meaning fused where possible)."""
    fused, foreach = group.get("fused"), group.get("foreach")
    if overridden_hooks or foreach is False and not fused:
        return "readable"
    if foreach or fused is False or (fused is None and torch.compiler.is_compiling()):
        return "foreach"
    return "fused"


def step_group(optimizer: torch.optim.Optimizer, group: dict[str, Any], params: list[torch.Tensor],
               grads: list[torch.Tensor], choice: str) -> None:
    """Update ``params`` of ``group`` on the ``"foreach"`` or ``"fused"`` path (see the module map)."""
    # Tensors with a low-memory state (or bfloat16 parameters) take the compressed step, :mod:`.compressed`.
    params, grads = compressed.step_compressed(optimizer, group, params, grads, choice,
                                               native.library if "native" in CPU_FUSED_BACKENDS else None)
    if not params:
        return
    settings = StepSettings.from_group(group)
    batch = _Batch.gather(optimizer, group, params, grads, settings.max_of is not None)
    if choice == "fused":
        batch.run_fused(settings, explicit=group.get("fused") is True)
    else:
        batch.run_foreach(settings, range(len(batch.params)))


# Why a tensor cannot take a fused kernel, whatever its device and dtype.
_SUBCLASS, _LAYOUT = "subclass", "layout"

# From this many tensors on, a group of one kind is found without a Python loop over its tensors
# (below, the loop is cheaper than the fixed cost of the shortcut).
_SHORTCUT_MIN_TENSORS = 8

# Attribute readers for ``map``: the per-tensor work of a step runs in C where it can.
_device, _dtype = attrgetter("device"), attrgetter("dtype")
_is_contiguous, _item = torch.Tensor.is_contiguous, torch.Tensor.item


class _Batch:
    """The group's tensors (complex ones as real views), one list per role.

    For the fused path the tensors are grouped by kind (:meth:`kinds`): ``(device, dtype, step
    device, step dtype)``, which decides their kernel, or the reason they have none.
    """

    def __init__(self, params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                 exp_avg_sqs: list[torch.Tensor], max_exp_avg_sqs: list[torch.Tensor] | None,
                 steps: list[torch.Tensor]) -> None:
        self.params, self.grads, self.steps = params, grads, steps
        self.exp_avgs, self.exp_avg_sqs, self.max_exp_avg_sqs = exp_avgs, exp_avg_sqs, max_exp_avg_sqs

    @classmethod
    def gather(cls, optimizer, group, params, grads, amsgrad: bool) -> "_Batch":
        # This runs once per tensor per step: one comprehension per role, no per-tensor calls.
        states = [optimizer.state[param] for param in params]
        if not all(states):
            for state, param in zip(states, params):
                if not state:
                    optimizer.init_state(state, group, param)
        maxima = None
        if amsgrad:  # a state without a maximum (a group switched to amsgrad, a plain Adam state) gets one
            maxima = [maximum if (maximum := state.get("max_exp_avg_sq")) is not None else _new_maximum(state)
                      for state in states]
        batch = cls(list(params), list(grads), [state["exp_avg"] for state in states],
                    [state["exp_avg_sq"] for state in states], maxima, [state["step"] for state in states])
        if any(dtype.is_complex for dtype in set(map(_dtype, params))):
            roles = batch.roles()
            for index, param in enumerate(params):
                if param.is_complex():
                    for role in roles:
                        role[index] = torch.view_as_real(role[index])
        return batch

    def roles(self) -> list[list[torch.Tensor]]:
        """The lists that a fused kernel walks element by element: params, grads, moments (and maxima)."""
        roles = [self.params, self.grads, self.exp_avgs, self.exp_avg_sqs]
        return roles if self.max_exp_avg_sqs is None else roles + [self.max_exp_avg_sqs]

    def kinds(self) -> dict[Any, range | list[int]]:
        """The indices of each kind, in order of first appearance."""
        params, steps = self.params, self.steps
        if len(params) >= _SHORTCUT_MIN_TENSORS:
            # The common case, one kind for all: a few passes of C calls instead of a Python loop.
            first, first_step = params[0], steps[0]
            kind = (first.device, first.dtype, first_step.device, first_step.dtype)
            roles = self.roles()
            if (set(map(type, params)).union(map(type, self.grads)) <= _PLAIN
                    and all(all(map(_is_contiguous, role)) and _everywhere(_dtype, role, first.dtype) for role in roles)
                    and _everywhere(_device, params, kind[0])
                    and _everywhere(_device, steps, kind[2]) and _everywhere(_dtype, steps, kind[3])):
                return {kind: range(len(params))}
        maxima = self.max_exp_avg_sqs if self.max_exp_avg_sqs is not None else [None] * len(params)
        members: dict[Any, list[int]] = {}
        for index, tensors in enumerate(zip(params, self.grads, self.exp_avgs, self.exp_avg_sqs, maxima, steps)):
            members.setdefault(_kind(*tensors), []).append(index)
        return members

    def select(self, indices) -> tuple[list[torch.Tensor], ...]:
        """The lists (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps) at ``indices``."""
        if isinstance(indices, range) and len(indices) == len(self.params):
            return self.params, self.grads, self.exp_avgs, self.exp_avg_sqs, self.max_exp_avg_sqs, self.steps
        pick = lambda tensors: [tensors[i] for i in indices]  # noqa: E731
        maxima = pick(self.max_exp_avg_sqs) if self.max_exp_avg_sqs is not None else None
        return pick(self.params), pick(self.grads), pick(self.exp_avgs), pick(self.exp_avg_sqs), maxima, pick(self.steps)

    def run_foreach(self, settings: StepSettings, indices) -> None:
        if len(indices):
            foreach_step(settings, *self.select(indices))

    def run_fused(self, settings: StepSettings, explicit: bool) -> None:
        """Each tensor on the best fused kernel for its kind; the rest multi-tensor (or an error)."""
        lib = _NativeOnDemand() if "native" in CPU_FUSED_BACKENDS else None
        members = self.kinds()
        backends = {kind: _backend(kind, settings, lib) for kind in members}
        if explicit:  # refuse before anything changes
            for kind, backend in backends.items():
                if backend is None:
                    raise RuntimeError(_impossible_fused(kind, settings, lib))

        leftover: list[int] = []
        for kind, indices in members.items():
            backend = backends[kind]
            if backend is None or backend == "foreach":
                leftover.extend(indices)
                continue
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = self.select(_as_range(indices))
            _, _, step_device, step_dtype = kind
            if backend == "native":
                native_settings = _native_settings(settings, step_is_double=step_dtype == torch.float64)
                native.adam_step(lib.get(), kind[1], params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                                 native_settings)
            else:
                torch_fused_step(settings, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                                 _increment_steps(steps, step_device, step_dtype, lib))
        self.run_foreach(settings, sorted(leftover))


def _everywhere(attribute: attrgetter, tensors: list[torch.Tensor], value: Any) -> bool:
    """Whether every tensor's ``attribute`` equals ``value``."""
    return list(map(attribute, tensors)).count(value) == len(tensors)


def _new_maximum(state: dict[str, Any]) -> torch.Tensor:
    maximum = state["max_exp_avg_sq"] = torch.zeros_like(state["exp_avg_sq"], memory_format=torch.preserve_format)
    return maximum


def _kind(param, grad, exp_avg, exp_avg_sq, maximum, step) -> Any:
    """The kind of one tensor and its companions: what :meth:`_Batch.kinds` finds for a mixed group."""
    if type(param) not in _PLAIN or type(grad) not in _PLAIN:  # DTensor and other subclasses
        return _SUBCLASS
    if (param.is_contiguous() and grad.is_contiguous() and exp_avg.is_contiguous()
            and exp_avg_sq.is_contiguous() and (maximum is None or maximum.is_contiguous())
            and grad.dtype == exp_avg.dtype == exp_avg_sq.dtype == param.dtype
            and (maximum is None or maximum.dtype == param.dtype)):
        return (param.device, param.dtype, step.device, step.dtype)
    return _LAYOUT


def _backend(kind: Any, settings: StepSettings, lib: "_NativeOnDemand | None") -> str | None:
    """``"native"``, ``"torch"``, ``"foreach"`` (layout: no fused kernel applies) or None (no kernel)."""
    if kind == _LAYOUT:
        return "foreach"
    if kind == _SUBCLASS:
        return None
    device, dtype, step_device, step_dtype = kind
    if device.type == "cpu" and dtype in _NATIVE_DTYPES and step_device.type == "cpu" \
            and step_dtype in _NATIVE_DTYPES and lib is not None and lib.get() is not None:
        return "native"
    if torch_kernel_supports(settings) and device.type in _torch_fused_devices() and dtype.is_floating_point:
        return "torch"
    return None


class _NativeOnDemand:
    """The C kernel, built only once a tensor that it could update turns up."""

    def __init__(self) -> None:
        self.tried = False
        self.lib = None

    def get(self):
        if not self.tried:
            self.tried, self.lib = True, native.library()
        return self.lib


def _as_range(indices: list[int]):
    return range(len(indices)) if indices[-1] == len(indices) - 1 else indices


def _increment_steps(steps: list[torch.Tensor], device: torch.device, dtype: torch.dtype,
                     lib: _NativeOnDemand | None) -> list[float]:
    """Add 1 to each step (all on ``device``, of ``dtype``) and return the new values (one C call for
    CPU steps, if we have C)."""
    if device.type == "cpu" and dtype in _NATIVE_DTYPES and lib is not None and lib.get() is not None:
        return native.increment_steps(lib.get(), steps, dtype == torch.float64)
    torch._foreach_add_(steps, 1)
    if device.type == "cpu":  # no synchronisation to save: one read each is cheaper than a stack
        return list(map(_item, steps))
    return read_steps(steps)


def _native_settings(s: StepSettings, step_is_double: bool) -> native.NativeSettings:
    return compressed.native_settings(s, step_is_double)


_FUSED_DEVICES: tuple[str, ...] = ()


def _torch_fused_devices() -> tuple[str, ...]:
    """The device types torch has a fused Adam kernel for."""
    global _FUSED_DEVICES
    if not _FUSED_DEVICES:
        try:
            from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

            _FUSED_DEVICES = tuple(_get_fused_kernels_supported_devices())
        except ImportError:  # an older or newer torch: the two we know
            _FUSED_DEVICES = ("cpu", "cuda")
    return _FUSED_DEVICES


def _impossible_fused(kind: Any, settings: StepSettings, lib: _NativeOnDemand | None) -> str:
    fallback = "Use fused=None to fall back to the multi-tensor path."
    if kind == _SUBCLASS:
        return f"Invalid fused: True for a tensor subclass (DTensor, say): the fused kernels take plain tensors. {fallback}"
    device, dtype, step_device, step_dtype = kind
    where = f"a {dtype} parameter on {device.type}"
    if settings.max_of == "corrected":
        why = "torch has no fused kernel for max_of='corrected', and ours runs on CPU float32/float64 only"
        if device.type == "cpu" and dtype in _NATIVE_DTYPES:
            if lib is None or lib.get() is None:
                why += f", where it is unavailable ({native.unavailable_reason() or 'disabled'})"
            else:
                why += f", with a CPU float32/float64 step counter (got {step_dtype} on {step_device.type})"
    else:
        why = "no fused kernel takes this device and dtype"
    return f"Invalid fused: True for {where}: {why}. {fallback}"
