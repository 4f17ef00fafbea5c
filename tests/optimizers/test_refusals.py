"""Every refused step changes nothing: parameters, state, step counters and groups, of every group."""

from __future__ import annotations

import copy

import pytest
import torch

import amsgrad
from amsgrad import kernels
from amsgrad.optimizers.nonfinite import NonFiniteGradientError

from .helpers import gradients, make_params, run_steps


def snapshot(optimizer, params):
    """Everything a step could change: the parameters, every state (tensors cloned), every group's settings."""
    return (
        [p.detach().clone() for p in params],
        {id(p): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in optimizer.state[p].items()}
         for p in params if p in optimizer.state},
        [{k: copy.copy(v) for k, v in group.items() if k != "params"} for group in optimizer.param_groups],
    )


def assert_unchanged(before, optimizer, params):
    old_params, old_states, old_groups = before
    assert all(torch.equal(a, b.detach()) for a, b in zip(old_params, params))
    assert {id(p) for p in params if p in optimizer.state and optimizer.state[p]} == set(old_states)
    for param in params:
        if id(param) in old_states:
            old, new = old_states[id(param)], optimizer.state[param]
            assert old.keys() == new.keys()
            for key, value in old.items():
                assert torch.equal(value, new[key]) if isinstance(value, torch.Tensor) else value == new[key], key
    assert [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups] == old_groups


def two_groups(options: dict | None = None, dtype: torch.dtype = torch.float64, **second):
    """An optimizer (``AMSGrad(..., **options)``) whose first group always could step; the second is given
    ``second``. Three steps done, and a new parameter in each group (no state yet) with a gradient."""
    a, b = make_params(dtype=dtype, shapes=[(3, 2), (4,)]), make_params(seed=1, dtype=dtype, shapes=[(5,), (2, 2)])
    optimizer = amsgrad.AMSGrad([{"params": a}, {"params": b}], **(options or {}))
    run_steps(optimizer, a + b, range(3))
    fresh_a, fresh_b = make_params(seed=2, dtype=dtype, shapes=[(3,)]), make_params(seed=3, dtype=dtype, shapes=[(3,)])
    optimizer.param_groups[0]["params"].extend(fresh_a)
    optimizer.param_groups[1]["params"].extend(fresh_b)
    optimizer.param_groups[1].update(second)
    params = a + fresh_a + b + fresh_b
    for param, grad in zip(params, gradients(params, 3)):
        param.grad = grad
    return optimizer, params


REFUSALS = {
    # the second group's setting, or what to do to its gradients -> (exception, message)
    "fused=True impossible": (dict(fused=True, max_of="corrected"), RuntimeError, r"Invalid fused: True for a torch"),
    "negative lr": (dict(lr=-1.0), ValueError, r"param group 1: Invalid lr: -1\.0"),
    "beta out of range": (dict(betas=(0.9, 1.0)), ValueError, r"param group 1: Invalid betas\[1\]: 1\.0"),
    "fused and foreach": (dict(fused=True, foreach=True), ValueError, r"param group 1: Invalid fused: True with foreach"),
    "capturable with fused": (dict(capturable=True, fused=True), ValueError, r"param group 1: Invalid fused: True with "
                                                                             r"capturable=True"),
    "differentiable with foreach": (dict(differentiable=True, foreach=True), ValueError,
                                    r"param group 1: Invalid foreach: True with differentiable=True"),
    "nonfinite raise": (dict(nonfinite="raise"), NonFiniteGradientError, r"param group 1, parameter 0"),
    "sparse gradient": ({}, RuntimeError, r"AMSGrad does not support sparse gradients"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_step_changes_nothing_in_any_group(case, monkeypatch):
    settings, error, pattern = REFUSALS[case]
    if case == "fused=True impossible":
        monkeypatch.setattr(kernels, "CPU_FUSED_BACKENDS", ("torch",))  # no C kernel: nothing runs max_of corrected
    optimizer, params = two_groups(**settings)
    if case == "nonfinite raise":
        params[3].grad = params[3].grad.clone()
        params[3].grad.view(-1)[0] = float("nan")
    if case == "sparse gradient":
        params[-1].grad = params[-1].grad.to_sparse()
    before = snapshot(optimizer, params)
    with pytest.raises(error, match=pattern):
        optimizer.step()
    assert_unchanged(before, optimizer, params)
    assert params[2] not in optimizer.state and params[-1] not in optimizer.state  # no state for the new ones


def test_a_refused_load_changes_nothing():
    optimizer, params = two_groups()
    optimizer.step()
    saved = optimizer.state_dict()
    saved["param_groups"][1]["fused"] = "yes"
    before = snapshot(optimizer, params)
    with pytest.raises(TypeError, match=r"param group 1 of the loaded state dict: fused must be None, True or False"):
        optimizer.load_state_dict(saved)
    assert_unchanged(before, optimizer, params)


def test_after_a_refusal_the_step_runs_once_the_setting_is_fixed():
    optimizer, params = two_groups(lr=-1.0)
    with pytest.raises(ValueError):
        optimizer.step()
    optimizer.param_groups[1]["lr"] = 1e-3
    optimizer.step()
    assert all(float(optimizer.state[p]["step"]) == (4 if i in (0, 1, 3, 4) else 1) for i, p in enumerate(params))
