"""``torch.compile(optimizer.step)``: one compilation for every step, and the eager results.

Counting compilations needs no real compiler: dynamo's ``"eager"`` and ``"aot_eager"`` backends
trace and guard exactly as inductor does. One test compiles with inductor. On the CPU the default
settings keep the C kernel, outside the graph (no graph at all); ``foreach=True`` (and
``capturable=True``, and any group off the CPU) runs the traced tensor-step path.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import amsgrad

from .helpers import assert_same_run, clone_params, gradients, make_params

STEPS = 12

# name -> (class, settings, graphs a compiled step makes)
VARIANTS = {
    "amsgrad-default": (amsgrad.AMSGrad, dict(), 0),  # the C kernel, outside the graph
    "amsgrad": (amsgrad.AMSGrad, dict(foreach=True), 1),
    "adam-torch-form": (amsgrad.Adam, dict(eps=1e-8, optimized_update=False, fused=False), 1),
    "max-corrected-decoupled": (amsgrad.AMSGrad, dict(max_of="corrected", weight_decay=amsgrad.WeightDecay(0.1),
                                                      foreach=True), 1),
    "algorithm-2-l2": (amsgrad.AMSGrad, dict(eps=1e-8, bias_correction=False, weight_decay=0.01, foreach=True), 1),
    "capturable-maximize": (amsgrad.AMSGrad, dict(capturable=True, maximize=True), 1),
    "beta1-decay": (amsgrad.AMSGrad, dict(beta1_decay=0.9, foreach=True), 1),
    "adamnc": (amsgrad.AdamNC, dict(foreach=True), 1),
    "adamx-beta1-decay": (amsgrad.AdamX, dict(beta1_decay=0.9, foreach=True), 1),
}


def make_run(cls, kwargs, params, schedule: bool = True):
    optimizer = cls(params, lr=1e-2, **kwargs)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=5e-2, total_steps=100) if schedule else None
    return optimizer, scheduler


def run(step, scheduler, params, steps=range(STEPS)):
    for index in steps:
        for param, grad in zip(params, gradients(params, index)):
            param.grad = grad
        step()
        if scheduler is not None:
            scheduler.step()  # changes lr and betas[0] (cycle_momentum=True) every step


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_compiled_step_compiles_once_as_steps_lr_and_betas_change(variant, fresh_dynamo):
    cls, kwargs, graphs = VARIANTS[variant]
    params = make_params(shapes=[(3, 4), (5,), (2, 1, 3)])
    optimizer, scheduler = make_run(cls, kwargs, params)
    betas = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        step = torch.compile(optimizer.step, backend="eager")
        run(lambda: (step(), betas.append(optimizer.param_groups[0]["betas"][0])), scheduler, params)
    assert len(set(betas)) == STEPS  # the scheduler did change β1 every step
    assert counters["stats"]["unique_graphs"] == graphs
    assert all(float(optimizer.state[p]["step"]) == STEPS for p in params)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_compiled_step_gives_the_eager_results(variant, fresh_dynamo):
    cls, kwargs, _ = VARIANTS[variant]
    params_eager = make_params(shapes=[(3, 4), (5,), (), (2, 1, 3)])
    params_compiled = clone_params(params_eager)
    eager, eager_scheduler = make_run(cls, kwargs, params_eager)
    compiled, compiled_scheduler = make_run(cls, kwargs, params_compiled)
    run(eager.step, eager_scheduler, params_eager)
    run(torch.compile(compiled.step, backend="aot_eager"), compiled_scheduler, params_compiled)
    assert_same_run(eager, params_eager, compiled, params_compiled, exact=False, atol=1e-12)


def test_groups_that_cannot_be_traced_run_outside_the_graph_without_recompiling(fresh_dynamo):
    a, b, c, d = (make_params(seed=seed, shapes=[(4,), (2, 3)]) for seed in range(4))
    groups = [{"params": a, "foreach": True}, {"params": b, "foreach": False}, {"params": c, "fused": True},
              {"params": d}]
    optimizer = amsgrad.AMSGrad(groups, lr=1e-2)
    reference = amsgrad.AMSGrad([{"params": clone_params(g["params"]), **{k: v for k, v in g.items() if k != "params"}}
                                 for g in groups], lr=1e-2)
    assert optimizer.implementations(compiled=True) == [{"multi-tensor": 2}, {"readable": 2}, {"C kernel": 2},
                                                        {"C kernel": 2}]
    with torch._dynamo.config.patch(error_on_recompile=True):
        run(torch.compile(optimizer.step, backend="eager"), None, a + b + c + d)
    assert counters["stats"]["unique_graphs"] == 1  # group 0's; the others ran outside it
    run(reference.step, None, [p for g in reference.param_groups for p in g["params"]])
    assert_same_run(optimizer, a + b + c + d, reference, [p for g in reference.param_groups for p in g["params"]],
                    exact=False, atol=1e-12)


def test_the_inductor_compiled_step_compiles_once_and_gives_the_eager_results(fresh_dynamo):
    params_eager = make_params(shapes=[(64, 3), (7,), (2, 1, 3)])
    params_compiled = clone_params(params_eager)
    eager, eager_scheduler = make_run(amsgrad.AMSGrad, {}, params_eager)
    compiled, compiled_scheduler = make_run(amsgrad.AMSGrad, dict(foreach=True), params_compiled)  # traced
    run(eager.step, eager_scheduler, params_eager, range(6))
    with torch._dynamo.config.patch(error_on_recompile=True):
        run(torch.compile(compiled.step), compiled_scheduler, params_compiled, range(6))
    assert counters["stats"]["unique_graphs"] == 1
    assert_same_run(eager, params_eager, compiled, params_compiled, exact=False, atol=1e-12)
