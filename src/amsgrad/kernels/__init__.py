r"""The fast steps of :class:`~amsgrad.Adam` and :class:`~amsgrad.AMSGrad`, and how one is chosen.

The readable path (:meth:`amsgrad.Adam.step_param`, one tensor at a time) is the reference;
everything here computes the same numbers faster, and is tested against it in float64.

Every step is planned before anything changes (:func:`plan`): the path of each param group is
chosen, every refusal (a ``fused=True`` that no kernel can honour, say) is raised, and the state
of parameters stepped for the first time is created aside; only then are states stored and
tensors updated. :meth:`amsgrad.GenericAdaptiveOptimizer.implementations` (and the optimizer's ``repr``) report
the plan, per group, by these names:

=================  ==================================================================
name               implementation
=================  ==================================================================
``"C kernel"``     our single-pass CPU kernel, :mod:`.native` (``csrc/adam_step.c``)
``"torch fused"``  torch's fused Adam kernel, settings mapped as in :mod:`.torch_fused`
``"multi-tensor"`` ``torch._foreach_*`` over the group's tensors: :mod:`.foreach`, or
                   :mod:`.tensor_steps` (step counts as tensors) with ``capturable=True``
                   and under :func:`torch.compile`
``"compressed C    our single-pass kernel for low-memory state and bfloat16 parameters,
kernel"``          :mod:`.compressed` (``csrc/compressed_step.c``)
``"compressed      the same step in torch ops, tensor by tensor, any device:
reference"``       :func:`amsgrad.quantization.step.compressed_step`
``"readable"``     the per-tensor hooks, :meth:`amsgrad.Adam.step_param`
``"refused"``      tensors that ``fused=True`` cannot run: a step raises, changing nothing
=================  ==================================================================

Which implementation runs, per param group (the ``foreach`` and ``fused`` settings):

==========================  ===========================================================
``fused`` / ``foreach``     implementation
==========================  ===========================================================
``None`` / ``None``         the fastest correct one, per tensor: fused where a fused
                            kernel exists, multi-tensor otherwise
``True`` / ``None``         fused; a tensor no fused kernel can update is refused
``False`` / ``None``        multi-tensor (``torch._foreach_*``), :mod:`.foreach`
``None`` / ``True``         multi-tensor
``None``/``False``,         the readable per-tensor loop
``False``/``False``
``True`` / ``True``         refused when the group is created
==========================  ===========================================================

and before those settings:

* a subclass that overrides a hook (``init_state``, ``get_mv``, ``get_lr``,
  ``bias_corrections``, ``adam_update``, ``step_param``) takes the readable path, since only
  that path calls the hooks; so does a group with ``differentiable=True`` (autograd records
  the readable path's operations; the others write with ``out=`` or outside autograd);
* ``capturable=True`` takes :mod:`.tensor_steps`, whose step counts live on the parameters'
  device and whose bias corrections are tensor operations, so a step never synchronises;
* otherwise, tensors whose ``state_precision`` is not their own dtype (bfloat16, int8 or int4
  state, or a float state wider than the parameter), and bfloat16 parameters, take the
  compressed step (:mod:`.compressed`): with ``foreach``/``fused`` left to choose, our C kernel
  for contiguous CPU float32/bfloat16 tensors and the reference step in torch ops for the
  others; with ``fused=True`` the C kernel, the others refused; with ``foreach=True`` or
  ``fused=False``, the reference step for all. The two compute the same numbers, bit for bit,
  and so does the readable path of the built-in classes. The group's other tensors (small
  ones under ``min_compressed_numel``, complex ones) take the paths of the table above. A
  state in another storage than its group's ``state_precision`` asks for (the setting was
  changed) is converted aside, and stored with the new states;
* under :func:`torch.compile`, the planning runs outside the graph (a graph break), and so do
  the fused kernels, the compressed step and the readable path, where they cannot cause
  recompilations. A group
  with the default settings whose parameters are all on the CPU keeps the fused kernels there
  (a compiled graph cannot beat one pass of the C kernel, and the results are the eager
  step's); every other group that may run multi-tensor (off the CPU, or ``foreach=True`` /
  ``fused=False``) takes :mod:`.tensor_steps`, traced, with α, β, ε and λ as a tensor input, so
  that the graph depends neither on the step count nor on scheduled hyper-parameters: one
  compilation serves every step. (Off the CPU its step counters move to the parameters'
  device, as ``torch.optim`` moves them under compilation.)

Settings that cannot be honoured together (``fused=True`` with ``differentiable=True`` or
``capturable=True``, ``capturable=True`` with a ``state_precision``, a compressed
``state_precision`` with ``differentiable=True``, ...) are refused when the group is created,
with the reason.

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
                                                               refused (``fused=True``)
any                             ``beta1_decay`` != 1, AdamNC,  none: multi-tensor (auto), or
                                AdamX with a decaying β1       refused (``fused=True``)
==============================  =============================  ==============================

Tensors that are not contiguous (or whose gradient or state is not), or whose gradient or
state has another dtype, take the multi-tensor path under any setting, since the fused kernels
walk memory linearly in one dtype. Tensor subclasses
(``DTensor`` parameters of FSDP2, say) take it too, by default; ``fused=True`` refuses them.
"""

from __future__ import annotations

from itertools import repeat
from operator import attrgetter
from typing import Any, Callable

import torch

from . import compressed, native
from .foreach import foreach_step, read_steps
from .settings import StepSettings, schedule_refusal
from .tensor_steps import TensorStepConfig, coefficients, tensor_step
from .torch_fused import supports as torch_kernel_supports
from .torch_fused import torch_fused_step

__all__ = ["plan", "implementation", "StepSettings", "foreach_step", "tensor_step", "torch_fused_step", "native",
           "C_KERNEL", "TORCH_FUSED", "MULTI_TENSOR", "READABLE", "REFUSED", "COMPRESSED_C_KERNEL",
           "COMPRESSED_REFERENCE"]

#: Hooks the fast paths compute themselves: a subclass that overrides one runs on the readable path.
HOOKS = ("init_state", "get_mv", "get_lr", "bias_corrections", "adam_update", "step_param")

#: Fused backends in order of preference on CPU; tests and benchmarks may narrow it.
CPU_FUSED_BACKENDS: tuple[str, ...] = ("native", "torch")

#: The names :meth:`amsgrad.GenericAdaptiveOptimizer.implementations` reports.
C_KERNEL, TORCH_FUSED, MULTI_TENSOR, READABLE = "C kernel", "torch fused", "multi-tensor", "readable"
REFUSED = "refused"  # tensors that fused=True cannot run: a step raises
COMPRESSED_C_KERNEL, COMPRESSED_REFERENCE = compressed.COMPRESSED_C_KERNEL, compressed.COMPRESSED_REFERENCE

_NATIVE_DTYPES = (torch.float32, torch.float64)
_CPU = torch.device("cpu")
_PLAIN = frozenset((torch.Tensor, torch.nn.Parameter))


def implementation(group: dict[str, Any], overridden_hooks: tuple[str, ...], *, compiling: bool = False,
                   on_cpu: bool = False) -> str:
    """The path of a group: ``"readable"``, ``"foreach"``, ``"fused"`` (fused where possible) or
    ``"tensor-steps"`` (:mod:`.tensor_steps`). ``compiling``: the step is being traced by
    :func:`torch.compile`; ``on_cpu``: every parameter of the group is on the CPU. (Within the
    ``"foreach"``, ``"fused"`` and ``"tensor-steps"`` paths, the tensors that take the compressed
    step are chosen by :func:`.compressed.split`.)"""
    fused, foreach = group.get("fused"), group.get("foreach")
    if overridden_hooks or group.get("differentiable", False) or (foreach is False and not fused):
        return "readable"
    if group.get("capturable", False):
        return "tensor-steps"
    if compiling:
        # On the CPU a compiled graph cannot beat one pass of the fused kernels: the default keeps
        # them, outside the graph. Elsewhere, and when multi-tensor is asked for, the graph runs it.
        if fused or (fused is None and foreach is None and on_cpu):
            return "fused"
        # a beta2_schedule function takes a number: the multi-tensor step, which reads t, runs it
        return "foreach" if callable(group.get("beta2_schedule")) else "tensor-steps"
    if foreach or fused is False:
        return "foreach"
    return "fused"


def plan(optimizer: torch.optim.Optimizer, group: dict[str, Any], params: list[torch.Tensor],
         grads: list[torch.Tensor | None], overridden_hooks: tuple[str, ...], *, compiling: bool = False,
         report: bool = False, replaced: dict[torch.Tensor, dict[str, Any]] | None = None) -> "Plan":
    """Plan one group's step on ``params`` (those with ``grads``), refusing what cannot run.

    Nothing is modified: the state of a parameter stepped for the first time is created aside and
    stored by :meth:`Plan.commit`. With ``report=True`` (for :meth:`amsgrad.GenericAdaptiveOptimizer.implementations`)
    nothing is allocated or refused either: missing gradients and states are stood in for by the
    parameter itself, which has their layout, and what a step would refuse is counted as refused.
    ``replaced``: states made aside for this step (converted to a new ``state_precision``, say),
    which the caller stores at commit; they are planned in place of the optimizer's.
    """
    on_cpu = compiling and _everywhere(_device, params, _CPU)
    choice = implementation(group, overridden_hooks, compiling=compiling, on_cpu=on_cpu)
    if choice == "readable":
        return ReadablePlan(optimizer, group, params, grads)
    # A capturable step reads no tensor on the host: a tensor α or β stays a tensor.
    settings = StepSettings.from_group(group, optimizer._max_of(group), read_tensors=not group.get("capturable", False))
    lib = _NativeOnDemand() if "native" in CPU_FUSED_BACKENDS else None
    members, params, grads = compressed.split(group, params, grads)
    parts: list[Plan] = []
    if members:  # low-memory state, or bfloat16 parameters: the compressed step, :mod:`.compressed`
        parts.append(compressed.CompressedPlan(optimizer, group, settings, members, fused=choice == "fused",
                                               explicit=group.get("fused") is True, lib=lib, report=report,
                                               replaced=replaced))
        if not params:
            return parts[0]
    batch = _Batch.gather(optimizer, group, params, grads, settings.max_of is not None, report=report,
                          replaced=replaced)
    if choice == "fused":
        rest: Plan = FusedPlan(settings, batch, explicit=group.get("fused") is True, report=report, lib=lib)
    elif choice == "foreach":
        rest = ForeachPlan(settings, batch)
    else:
        rest = TensorStepPlan(group, settings, batch, report=report, compiling=compiling)
    return SplitPlan(parts + [rest]) if parts else rest


class Plan:
    """One group's step, decided: :meth:`commit` stores what it created, :meth:`run` updates."""

    #: Whether :meth:`run` may be traced by :func:`torch.compile` (else it runs outside the graph).
    traceable = False

    def implementations(self) -> dict[str, int]:
        """The number of tensors each implementation updates."""
        raise NotImplementedError

    def commit(self) -> None:
        """Store the states (and maxima) created for this step."""

    def run(self) -> None:
        raise NotImplementedError

    def pieces(self) -> list["Plan"]:
        """The plans this one runs, each traceable or not (see :class:`SplitPlan`)."""
        return [self]


class SplitPlan(Plan):
    """A group whose tensors take different plans (the compressed step for some, say)."""

    def __init__(self, parts: list[Plan]) -> None:
        self.parts = parts

    def implementations(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for part in self.parts:
            for name, count in part.implementations().items():
                counts[name] = counts.get(name, 0) + count
        return counts

    def commit(self) -> None:
        for part in self.parts:
            part.commit()

    def run(self) -> None:
        for part in self.parts:
            part.run()

    def pieces(self) -> list[Plan]:
        return [piece for part in self.parts for piece in part.pieces()]


class StorePlan(Plan):
    """States made aside while planning (converted to a group's new ``state_precision``), stored at
    commit; ``after`` runs then too. It updates nothing itself."""

    def __init__(self, mapping: dict, states: dict, after: Callable[[], None] | None = None) -> None:
        self.mapping, self.states, self.after = mapping, states, after

    def implementations(self) -> dict[str, int]:
        return {}

    def commit(self) -> None:
        self.mapping.update(self.states)
        if self.after is not None:
            self.after()

    def run(self) -> None:
        pass


class ReadablePlan(Plan):
    """The optimizer's per-tensor hooks (:meth:`amsgrad.GenericAdaptiveOptimizer._readable_step`)."""

    def __init__(self, optimizer, group: dict[str, Any], params: list[torch.Tensor], grads) -> None:
        self.optimizer, self.group, self.params, self.grads = optimizer, group, params, grads

    def implementations(self) -> dict[str, int]:
        return {READABLE: len(self.params)}

    def run(self) -> None:
        # As torch.optim: autograd records the step exactly when the group asks for it.
        with torch.set_grad_enabled(bool(self.group.get("differentiable", False))):
            self.optimizer._readable_step(self.group, self.params, self.grads)


class ForeachPlan(Plan):
    """:mod:`.foreach` over the whole group."""

    def __init__(self, settings: StepSettings, batch: "_Batch") -> None:
        self.settings, self.batch = settings, batch

    def implementations(self) -> dict[str, int]:
        return {MULTI_TENSOR: len(self.batch.params)}

    def commit(self) -> None:
        self.batch.commit()

    def run(self) -> None:
        self.batch.run_foreach(self.settings, range(len(self.batch.params)))


class FusedPlan(Plan):
    """Each tensor on the best fused kernel for its kind; the rest multi-tensor (or refused)."""

    def __init__(self, settings: StepSettings, batch: "_Batch", explicit: bool, report: bool,
                 lib: "_NativeOnDemand | None" = None) -> None:
        self.settings, self.batch = settings, batch
        self.lib = lib if lib is not None or "native" not in CPU_FUSED_BACKENDS else _NativeOnDemand()
        self.members = batch.kinds()
        self.backends = {kind: _backend(kind, settings, self.lib) for kind in self.members}
        self.explicit = explicit
        if explicit and not report:  # refuse before anything changes
            for kind, backend in self.backends.items():
                if backend is None:
                    raise RuntimeError(_impossible_fused(kind, settings, self.lib))

    def implementations(self) -> dict[str, int]:
        names = {"native": C_KERNEL, "torch": TORCH_FUSED, "foreach": MULTI_TENSOR,
                 None: REFUSED if self.explicit else MULTI_TENSOR}
        counts: dict[str, int] = {}
        for kind, indices in self.members.items():
            name = names[self.backends[kind]]
            counts[name] = counts.get(name, 0) + len(indices)
        return counts

    def commit(self) -> None:
        self.batch.commit()

    def run(self) -> None:
        batch, settings, lib = self.batch, self.settings, self.lib
        leftover: list[int] = []
        for kind, indices in self.members.items():
            backend = self.backends[kind]
            if backend is None or backend == "foreach":
                leftover.extend(indices)
                continue
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = batch.select(_as_range(indices))
            _, _, step_device, step_dtype = kind
            if backend == "native":
                native_settings = _native_settings(settings, step_is_double=step_dtype == torch.float64)
                native.adam_step(lib.get(), kind[1], params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                                 native_settings)
            else:
                torch_fused_step(settings, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                                 _increment_steps(steps, step_device, step_dtype, lib))
        batch.run_foreach(settings, sorted(leftover))


class TensorStepPlan(Plan):
    """:mod:`.tensor_steps`, per device: the capturable step, and the step that :func:`torch.compile` traces.

    The settings' numbers are made into a tensor here, when the step is planned: under
    :func:`torch.compile`, outside the graph, which takes them as an input.
    """

    traceable = True

    def __init__(self, group: dict[str, Any], settings: StepSettings, batch: "_Batch", report: bool,
                 compiling: bool) -> None:
        self.batch, self.config = batch, TensorStepConfig.from_settings(settings)
        self.work: list[tuple[torch.Tensor, tuple[list[torch.Tensor], ...]]] = []
        self.numbers: list[torch.Tensor] = []
        if report:
            return
        devices = set(map(_device, batch.params))
        # Step counts live where their parameter does with capturable=True, and (as torch.optim
        # does) under compilation off the CPU, where the graph computes with them.
        if group.get("capturable", False) or (compiling and devices != {_CPU}):
            batch.place_steps_with_params()
        for device in devices:
            indices = range(len(batch.params)) if len(devices) == 1 else \
                [i for i, param in enumerate(batch.params) if param.device == device]
            self.work.append((coefficients(self.config, settings, device), batch.select(indices)))

    def implementations(self) -> dict[str, int]:
        return {MULTI_TENSOR: len(self.batch.params)}

    def commit(self) -> None:
        self.batch.commit()

    def run(self) -> None:
        # Kept: as outputs of a compiled graph, the per-tensor numbers are computed once, not per element.
        self.numbers = [tensor_step(self.config, values, *tensors) for values, tensors in self.work]


# Why a tensor cannot take a fused kernel, whatever its device and dtype.
_SUBCLASS, _LAYOUT = "subclass", "layout"

# From this many tensors on, a group of one kind is found without a Python loop over its tensors
# (below, the loop is cheaper than the fixed cost of the shortcut).
_SHORTCUT_MIN_TENSORS = 8

# Attribute readers for ``map``: the per-tensor work of a step runs in C where it can.
_device, _dtype = attrgetter("device"), attrgetter("dtype")
_is_contiguous, _item = torch.Tensor.is_contiguous, torch.Tensor.item


class _Batch:
    """The group's tensors (complex ones as real views), one list per role, and what a step creates.

    For the fused path the tensors are grouped by kind (:meth:`kinds`): ``(device, dtype, step
    device, step dtype)``, which decides their kernel, or the reason they have none. States and
    maxima created for this step wait in :attr:`pending` until :meth:`commit`.
    """

    def __init__(self, params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                 exp_avg_sqs: list[torch.Tensor], max_exp_avg_sqs: list[torch.Tensor] | None,
                 steps: list[torch.Tensor]) -> None:
        self.params, self.grads, self.steps = params, grads, steps
        self.exp_avgs, self.exp_avg_sqs, self.max_exp_avg_sqs = exp_avgs, exp_avg_sqs, max_exp_avg_sqs
        self.pending: list[Callable[[], None]] = []
        self.states: list[dict[str, Any]] = []
        self.owners: list[torch.Tensor] = []

    @classmethod
    def gather(cls, optimizer, group, params, grads, amsgrad: bool, report: bool = False,
               replaced: dict | None = None) -> "_Batch":
        # This runs once per tensor per step: one comprehension per role, no per-tensor calls.
        states = [optimizer.state.get(param) for param in params]
        if replaced:  # states converted aside, stored by the caller at commit
            states = [replaced.get(param, state) for param, state in zip(params, states)]
        pending: list[Callable[[], None]] = []
        if not all(states):  # parameters stepped for the first time (or, for a report, never)
            for index, (state, param) in enumerate(zip(states, params)):
                if not state:
                    states[index] = state = _stand_in_state(optimizer, group, param) if report else {}
                    if not report:
                        optimizer.init_state(state, group, param)
                        pending.append(_storer(optimizer.state, param, state))
        if report:  # parameters without gradients: a gradient has the parameter's layout
            grads = [param if grad is None else grad for param, grad in zip(params, grads)]
        maxima = None
        if amsgrad:  # a state without a maximum (a group switched to amsgrad, a plain Adam state) gets one
            maxima = [state.get("max_exp_avg_sq") for state in states]
            if not all(map(dict.__contains__, states, repeat("max_exp_avg_sq"))):
                for index, state in enumerate(states):
                    if maxima[index] is None:
                        exp_avg_sq = state["exp_avg_sq"]
                        if report:
                            maxima[index] = exp_avg_sq
                            continue
                        maxima[index] = torch.zeros_like(exp_avg_sq, memory_format=torch.preserve_format)
                        pending.append(_storer(state, "max_exp_avg_sq", maxima[index]))
        batch = cls(list(params), list(grads), [state["exp_avg"] for state in states],
                    [state["exp_avg_sq"] for state in states], maxima, [state["step"] for state in states])
        batch.pending, batch.states, batch.owners = pending, states, list(params)
        if any(dtype.is_complex for dtype in set(map(_dtype, params))):
            roles = batch.roles()
            for index, param in enumerate(params):
                if param.is_complex():
                    for role in roles:
                        role[index] = torch.view_as_real(role[index])
        return batch

    def commit(self) -> None:
        for store in self.pending:
            store()
        self.pending = []

    def place_steps_with_params(self) -> None:
        """Put each step count on its parameter's device (stored at :meth:`commit`)."""
        for index, (step, param) in enumerate(zip(self.steps, self.owners)):
            if step.device != param.device:
                self.steps[index] = moved = step.to(param.device)
                self.pending.append(_storer(self.states[index], "step", moved))

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


def _storer(mapping: dict, key: Any, value: Any) -> Callable[[], None]:
    def store() -> None:
        mapping[key] = value
    return store


def _stand_in_state(optimizer, group: dict[str, Any], param: torch.Tensor) -> dict[str, Any]:
    """What :meth:`amsgrad.Adam.init_state` would create, as far as choosing a kernel goes, without allocating."""
    return {"step": optimizer._new_step(group, param), "exp_avg": param, "exp_avg_sq": param}


def _everywhere(attribute: attrgetter, tensors: list[torch.Tensor], value: Any) -> bool:
    """Whether every tensor's ``attribute`` equals ``value``."""
    return list(map(attribute, tensors)).count(value) == len(tensors)


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
    if kind == _SUBCLASS or not settings.plain:  # no fused kernel has a decaying β1 or a β2 schedule
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
    if not settings.plain:
        return schedule_refusal(settings)
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
