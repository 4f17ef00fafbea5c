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
A group whose ``state_dtype`` is wider than one of its parameters takes the readable path too
(``Adam._step_group`` decides; ``fused=True``/``foreach=True`` with a ``state_dtype`` are refused).

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

from typing import Any

import torch

from . import native
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
_PLAIN = (torch.Tensor, torch.nn.Parameter)


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
    settings = StepSettings.from_group(group)
    fused = choice == "fused"
    batch = _Batch.gather(optimizer, group, params, grads, settings.max_of is not None, fused)
    if fused:
        batch.run_fused(settings, explicit=group.get("fused") is True)
    else:
        batch.run_foreach(settings, range(len(batch.params)))


# Why a tensor cannot take a fused kernel, whatever its device and dtype.
_SUBCLASS, _LAYOUT = "subclass", "layout"


class _Batch:
    """The group's tensors (complex ones as real views), one list per role.

    For the fused path each tensor also gets a kind: ``(device, dtype, step device, step
    dtype)``, which decides its kernel, or the reason it has none.
    """

    def __init__(self) -> None:
        self.params: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []
        self.exp_avgs: list[torch.Tensor] = []
        self.exp_avg_sqs: list[torch.Tensor] = []
        self.max_exp_avg_sqs: list[torch.Tensor] | None = None
        self.steps: list[torch.Tensor] = []
        self.kinds: list[Any] = []

    @classmethod
    def gather(cls, optimizer, group, params, grads, amsgrad: bool, classify: bool) -> "_Batch":
        batch = cls()
        states = optimizer.state
        maxima = batch.max_exp_avg_sqs = [] if amsgrad else None
        # Bound methods: this loop runs once per tensor per step, so it is kept lean.
        add_param, add_grad, add_exp_avg = batch.params.append, batch.grads.append, batch.exp_avgs.append
        add_exp_avg_sq, add_step, add_kind = batch.exp_avg_sqs.append, batch.steps.append, batch.kinds.append
        maximum = None
        for param, grad in zip(params, grads):
            state = states[param]
            if not state:
                optimizer.init_state(state, group, param)
            exp_avg, exp_avg_sq, step = state["exp_avg"], state["exp_avg_sq"], state["step"]
            if amsgrad:
                maximum = state.get("max_exp_avg_sq")
                if maximum is None:  # a group switched to amsgrad, or a plain Adam state loaded
                    maximum = state["max_exp_avg_sq"] = torch.zeros_like(exp_avg_sq, memory_format=torch.preserve_format)
            if param.is_complex():
                param, grad = torch.view_as_real(param), torch.view_as_real(grad)
                exp_avg, exp_avg_sq = torch.view_as_real(exp_avg), torch.view_as_real(exp_avg_sq)
                if amsgrad:
                    maximum = torch.view_as_real(maximum)
            add_param(param)
            add_grad(grad)
            add_exp_avg(exp_avg)
            add_exp_avg_sq(exp_avg_sq)
            add_step(step)
            if amsgrad:
                maxima.append(maximum)
            if classify:
                if type(param) not in _PLAIN or type(grad) not in _PLAIN:  # DTensor and other subclasses
                    add_kind(_SUBCLASS)
                elif (param.is_contiguous() and grad.is_contiguous() and exp_avg.is_contiguous()
                      and exp_avg_sq.is_contiguous() and (maximum is None or maximum.is_contiguous())
                      and grad.dtype == exp_avg.dtype == exp_avg_sq.dtype == param.dtype
                      and (maximum is None or maximum.dtype == param.dtype)):
                    add_kind((param.device, param.dtype, step.device, step.dtype))
                else:
                    add_kind(_LAYOUT)
        return batch

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
        members: dict[Any, list[int]] = {}
        for index, kind in enumerate(self.kinds):
            members.setdefault(kind, []).append(index)
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
            if backend == "native":
                native_settings = _native_settings(settings, step_is_double=kind[3] == torch.float64)
                native.adam_step(lib.get(), kind[1], params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                                 native_settings)
            else:
                torch_fused_step(settings, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                                 _increment_steps(steps, lib))
        self.run_foreach(settings, sorted(leftover))


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


def _increment_steps(steps: list[torch.Tensor], lib: _NativeOnDemand | None) -> list[float]:
    """Add 1 to each step and return the new values (one C call for CPU steps, if we have C)."""
    first = steps[0]
    if first.device.type == "cpu" and first.dtype in _NATIVE_DTYPES and lib is not None and lib.get() is not None \
            and all(step.device.type == "cpu" and step.dtype == first.dtype for step in steps):
        return native.increment_steps(lib.get(), steps, first.dtype == torch.float64)
    torch._foreach_add_(steps, 1)
    return read_steps(steps)


def _native_settings(s: StepSettings, step_is_double: bool) -> native.NativeSettings:
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
