r"""What a step does with a gradient that holds ``inf`` or ``NaN``: the ``nonfinite`` setting.

Why it matters for AMSGrad. Its running maximum :math:`\hat{v}_t = \max(\hat{v}_{t-1}, v_t)`
never decreases, and infinities never leave the moments either (:math:`β_2 \cdot \infty = \infty`):

* a *finite* gradient whose square overflows (:math:`|g| \ge 256` in float16,
  :math:`|g| > 1.8 \cdot 10^{19}` in float32) makes :math:`v_t` and :math:`\hat{v}_t`
  infinite for good: that element's step :math:`α m_t / (\sqrt{\hat{v}_t} + \hat{ε})` is 0
  from then on, and the parameter is frozen without any error. (A large but representable
  spike differs only in degree: Adam's :math:`v_t` forgets it at rate β2, AMSGrad's
  :math:`\hat{v}_t` keeps it, by design.)
* a gradient of ``±inf`` gives :math:`m_t / \sqrt{v_t} = \infty / \infty`, and ``NaN``
  gives ``NaN``: the parameter, :math:`m_t`, :math:`v_t` and, through ``max``,
  :math:`\hat{v}_t` are ``NaN`` for good.

The first case has finite gradients, so no ``nonfinite`` policy sees it: train float16
parameters with float32 state (``state_precision=torch.float32``), where :math:`g^2` cannot
overflow. The second case is what ``nonfinite`` handles.

Each param group chooses, with ``nonfinite``:

``"propagate"`` (default)
    torch.optim's behaviour: the update runs and the non-finite values flow into the
    parameters and the state. Nothing is checked, so this costs nothing.
``"skip"``
    When any gradient of such a group is non-finite, the *whole* step is skipped, for every
    group (a partial step would leave groups at different step counts): parameters and every
    state tensor stay bit-identical, the step count does not advance, and each group's
    ``skipped_steps`` counter goes up by one. The counter is an entry of the param group, so
    ``state_dict()``/``load_state_dict()``, ``torch.distributed.checkpoint`` and
    ``ZeroRedundancyOptimizer`` carry it like any other group entry.
``"raise"``
    A :class:`NonFiniteGradientError` that names the parameter (group index, position in the
    group, shape) is raised before anything is modified.

The check is one fused reduction per gradient and a single host synchronisation per step,
whatever the number of tensors. Gradients that are ``DTensor`` (FSDP2) are checked shard by
shard and the verdict is all-reduced over the tensor's device mesh, so that every rank takes
the same decision. Under ``ZeroRedundancyOptimizer`` each rank's optimizer sees only its own
partition of the parameters, so ``"skip"`` decides per partition: check gradients before the
step (``torch.amp.GradScaler`` does) when every rank must skip together.

``torch.amp.GradScaler`` needs none of this: it unscales the gradients, checks them itself and
calls ``step()`` only when they are finite.

Example:
    >>> import torch, amsgrad
    >>> w = torch.nn.Parameter(torch.ones(2))
    >>> opt = amsgrad.AMSGrad([w], lr=0.1, nonfinite="skip")
    >>> w.grad = torch.tensor([1.0, float("inf")])
    >>> _ = opt.step()
    >>> w.detach(), opt.skipped_steps, opt.state[w]
    (tensor([1., 1.]), 1, {})
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["NONFINITE_CHOICES", "NonFiniteGradientError", "check_group", "screen_gradients"]

#: The accepted values of the ``nonfinite`` group setting.
NONFINITE_CHOICES = ("propagate", "skip", "raise")

#: A param group and its parameters that have gradients, with those gradients.
Batch = tuple[dict[str, Any], tuple[list[torch.Tensor], list[torch.Tensor]]]


class NonFiniteGradientError(FloatingPointError):
    """A gradient held ``inf`` or ``NaN`` in a param group with ``nonfinite="raise"``."""


def check_group(group: dict[str, Any]) -> None:
    """Validate ``nonfinite`` and ``skipped_steps`` (called by ``validate_group``)."""
    value = group.get("nonfinite", "propagate")
    if value not in NONFINITE_CHOICES:
        options = ", ".join(repr(choice) for choice in NONFINITE_CHOICES)
        raise ValueError(f"Invalid nonfinite: {value!r} (expected one of {options})")
    count = group.get("skipped_steps", 0)
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"skipped_steps must be an int, got {count!r} of type {type(count).__name__}")
    if count < 0:
        raise ValueError(f"Invalid skipped_steps: {count!r} (expected an int >= 0)")


def screen_gradients(param_groups: Sequence[dict[str, Any]], batches: Sequence[Batch], owner: str) -> bool:
    """Apply each group's ``nonfinite`` policy before any update; return True to skip the step.

    ``batches[i]`` belongs to ``param_groups[i]``. Raises :class:`NonFiniteGradientError` for a
    ``"raise"`` group; on a skip, increments every group's ``skipped_steps``. Nothing else is
    modified. ``owner`` (the optimizer's class name) starts the error message.
    """
    watched = [
        (index, group, params, grads)
        for index, (group, (params, grads)) in enumerate(batches)
        if group.get("nonfinite", "propagate") != "propagate" and grads
    ]
    if not watched:
        return False
    flags = [_all_finite(grads) for _, _, _, grads in watched]
    if bool(torch.stack([flag.to(flags[0].device) for flag in flags]).all()):  # the one host sync
        return False

    # Rare path from here on: synchronising per tensor to find the culprit is fine.
    for (index, group, params, grads), flag in zip(watched, flags):
        if group["nonfinite"] == "raise" and not bool(flag):
            raise _error(owner, index, group, params, grads)
    for group in param_groups:
        group["skipped_steps"] = group.get("skipped_steps", 0) + 1
    return True


def _all_finite(grads: list[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor: every element of every gradient is finite (agreed by all shards)."""
    locals_ = [_local(grad) for grad in grads]
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for grad in locals_:
        by_device.setdefault(grad.device, []).append(torch.isfinite(grad).all())
    flags = [torch.stack(device_flags).all() for device_flags in by_device.values()]
    finite = torch.stack([flag.to(flags[0].device) for flag in flags]).all()
    meshes = {id(mesh): mesh for mesh in (_mesh(grad) for grad in grads) if mesh is not None}
    if meshes:
        finite = _agree_across_meshes(finite, list(meshes.values()), locals_[0].device)
    return finite


def _agree_across_meshes(finite: torch.Tensor, meshes: list[Any], device: torch.device) -> torch.Tensor:
    """All-reduce "some shard is non-finite" over every dimension of every mesh involved."""
    import torch.distributed as dist

    bad = (~finite).to(device=device, dtype=torch.int32).reshape(1)
    for mesh in meshes:
        for dim in range(mesh.ndim):
            dist.all_reduce(bad, op=dist.ReduceOp.MAX, group=mesh.get_group(dim))
    return bad[0] == 0


def _local(grad: torch.Tensor) -> torch.Tensor:
    return grad.to_local() if _mesh(grad) is not None else grad


def _mesh(grad: torch.Tensor) -> Any:
    """The device mesh of a ``DTensor`` gradient, or None for a plain tensor."""
    return getattr(grad, "device_mesh", None) if hasattr(grad, "to_local") else None


def _error(owner: str, index: int, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]):
    for param, grad in zip(params, grads):
        local = _local(grad)
        finite = torch.isfinite(local)
        if bool(finite.all()):
            continue
        position = next(i for i, candidate in enumerate(group["params"]) if candidate is param)
        has_nan = bool(torch.isnan(local).any())
        kind = "NaN" if has_nan else "inf"
        count = int((~finite).sum())
        return NonFiniteGradientError(
            f"{owner}: non-finite gradient ({kind}, {count} of {local.numel()} elements) for param group "
            f"{index}, parameter {position} (shape {tuple(param.shape)}, dtype {param.dtype}); nothing was "
            f"modified (nonfinite='raise'; use 'skip' to skip such steps, or 'propagate')"
        )
    # A DTensor whose non-finite element sits on another rank's shard.
    return NonFiniteGradientError(
        f"{owner}: non-finite gradient in param group {index}, on another rank's shard; nothing was "
        f"modified (nonfinite='raise')"
    )
