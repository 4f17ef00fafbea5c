"""``capturable=True`` and ``differentiable=True``, with torch.optim's meaning."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import amsgrad

from .helpers import assert_same_run, clone_params, gradients, make_params, run_steps

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

VARIANTS = {
    "amsgrad": dict(),
    "torch-form": dict(eps=1e-8, optimized_update=False),
    "max-corrected": dict(max_of="corrected"),
    "max-corrected-torch-form": dict(max_of="corrected", eps=1e-8, optimized_update=False),
    "l2": dict(weight_decay=0.1),
    "decoupled": dict(weight_decay=amsgrad.WeightDecay(0.1)),
    "absolute": dict(weight_decay=amsgrad.WeightDecay(0.01, absolute=True)),
    "maximize": dict(maximize=True),
    "algorithm-2": dict(eps=1e-8, bias_correction=False),
    "adam": dict(amsgrad=False),
    "beta1-decay": dict(beta1_decay=0.9),
}


# ------------------------------------------------------------------ capturable
class NoHostReads(TorchDispatchMode):
    """Counts what reads a tensor on the host: ``aten._local_scalar_dense`` (``.item()``, ``float()``,
    ``bool()``) and copies to the CPU from another device."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append(func)
        elif func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            target = kwargs.get("device") if kwargs else None
            target = args[0].device if func is torch.ops.aten.copy_.default else target
            if isinstance(source, torch.Tensor) and source.device.type != "cpu" and \
                    target is not None and torch.device(target).type == "cpu":
                self.reads.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_capturable_step_reads_nothing_on_the_host(variant, device, monkeypatch):
    params = [p.to(device).detach().requires_grad_() for p in make_params(dtype=torch.float32)]
    lr = torch.tensor(1e-2, device=device)
    optimizer = amsgrad.AMSGrad(params, lr=lr, capturable=True, **VARIANTS[variant])
    for method in ("item", "tolist", "__float__", "__bool__", "__int__"):
        monkeypatch.setattr(torch.Tensor, method, _forbidden(method))
    counter = NoHostReads()
    sync_mode = torch.cuda.get_sync_debug_mode() if device == "cuda" else None
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        with counter:
            for step in range(3):
                for param, grad in zip(params, gradients(params, step)):
                    param.grad = grad
                optimizer.step()
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode(sync_mode)
    monkeypatch.undo()
    assert counter.reads == []
    for param in params:
        step = optimizer.state[param]["step"]
        assert step.device == param.device and step.dtype == torch.float32 and float(step) == 3.0


def _forbidden(method):
    def forbidden(self, *args, **kwargs):
        raise AssertionError(f"Tensor.{method} read a tensor on the host in a capturable step")
    return forbidden


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_capturable_equals_the_readable_path_with_a_tensor_lr(variant):
    params, twin = make_params(), make_params()
    readable = amsgrad.AMSGrad(params, lr=0.05, foreach=False, **VARIANTS[variant])
    capturable = amsgrad.AMSGrad(twin, lr=torch.tensor(0.05, dtype=torch.float64), capturable=True,
                                 **VARIANTS[variant])
    run_steps(readable, params, range(8))
    run_steps(capturable, twin, range(8))
    assert_same_run(readable, params, capturable, twin, exact=False, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_capturable_survives_a_state_dict_and_a_loaded_step_moves_to_its_parameter(device):
    params = [p.to(device).detach().requires_grad_() for p in make_params()]
    capturable = amsgrad.AMSGrad(params, capturable=True)
    run_steps(capturable, params, range(2))
    saved = capturable.state_dict()
    assert saved["param_groups"][0]["capturable"] is True
    for state in saved["state"].values():  # as torch.load(..., map_location="cpu") gives it back
        state.update({key: value.cpu() for key, value in state.items()})
    loaded = amsgrad.AMSGrad(clone_params(params))  # built without: the saved setting wins, as in torch.optim
    loaded.load_state_dict(saved)
    assert loaded.param_groups[0]["capturable"] is True
    assert all(state["step"].device == param.device for param, state in loaded.state.items())
    run_steps(loaded, list(loaded.state), range(2, 3))


# ------------------------------------------------------------------ differentiable
def _one_step(variant: dict, steps: int = 1):
    """The differentiable step as a function of (θ, g, m, v, v̂), after 3 steps of history, for gradcheck."""

    def step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq):
        param = param.clone()
        optimizer = amsgrad.AMSGrad([param], lr=0.1, differentiable=True, **variant)
        state = {"step": torch.tensor(3.0), "exp_avg": exp_avg.clone(), "exp_avg_sq": exp_avg_sq.clone()}
        if variant.get("amsgrad", True):
            state["max_exp_avg_sq"] = max_exp_avg_sq.clone()
        optimizer.state[param].update(state)
        for index in range(steps):
            param.grad = grad * (index + 1)
            optimizer.step()
        state = optimizer.state[param]
        return (param, state["exp_avg"], state["exp_avg_sq"]) + \
            ((state["max_exp_avg_sq"],) if "max_exp_avg_sq" in state else ())

    return step


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape = (2, 3)
    param, grad, exp_avg = (torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(3))
    exp_avg_sq = torch.rand(shape, generator=generator, dtype=torch.float64) + 0.1
    max_exp_avg_sq = exp_avg_sq + torch.rand(shape, generator=generator, dtype=torch.float64) * (
        torch.rand(shape, generator=generator) > 0.5)  # some elements above v, some equal... plus the new gradient
    return tuple(t.requires_grad_() for t in (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq + 0.05))


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_differentiable_step_passes_gradcheck(variant, steps):
    assert torch.autograd.gradcheck(_one_step(VARIANTS[variant], steps), _inputs())


@pytest.mark.parametrize("variant", ["amsgrad", "adam", "l2", "decoupled", "maximize"])
def test_the_differentiable_step_has_the_gradients_of_torchs(variant):
    torch_kwargs = {"amsgrad": dict(amsgrad=True), "adam": dict(), "l2": dict(amsgrad=True, weight_decay=0.1),
                    "decoupled": dict(amsgrad=True, weight_decay=0.1, decoupled_weight_decay=True),
                    "maximize": dict(amsgrad=True, maximize=True)}[variant]
    ours_kwargs = {**VARIANTS[variant], "eps": 1e-8, "optimized_update": False}

    def run(make):
        inputs = _inputs(seed=1)
        param = inputs[0].clone()
        optimizer = make([param])
        # a float64 step: torch's differentiable step computes β^t in the step's dtype
        state = {"step": torch.tensor(3.0, dtype=torch.float64), "exp_avg": inputs[2].clone(),
                 "exp_avg_sq": inputs[3].clone()}
        if torch_kwargs.get("amsgrad"):
            state["max_exp_avg_sq"] = inputs[4].clone()
        optimizer.state[param].update(state)
        param.grad = inputs[1]
        optimizer.step()
        weights = torch.linspace(-1, 1, param.numel(), dtype=torch.float64).reshape(param.shape)
        loss = (weights * param).sum() + optimizer.state[param]["exp_avg"].square().sum()
        used = [t for t in inputs if t is not inputs[4] or torch_kwargs.get("amsgrad")]
        return torch.autograd.grad(loss, used)

    ours = run(lambda p: amsgrad.AMSGrad(p, lr=0.1, differentiable=True, **ours_kwargs))
    theirs = run(lambda p: torch.optim.Adam(p, lr=0.1, differentiable=True, **torch_kwargs))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_differentiable_group_takes_non_leaf_parameters_and_the_readable_path():
    weight = torch.ones(3, dtype=torch.float64, requires_grad=True)
    param = weight * 2  # not a leaf: what a meta-learning loop optimizes
    optimizer = amsgrad.AMSGrad([param], lr=0.1, differentiable=True)
    assert optimizer.implementations() == [{"readable": 1}]
    param.grad = torch.ones(3, dtype=torch.float64)
    with torch.no_grad():  # as torch.optim: the group's setting decides, not the caller's grad mode
        optimizer.step()
    assert param.grad_fn is not None
    param.sum().backward()
    assert weight.grad is not None and torch.equal(weight.grad, torch.full((3,), 2.0, dtype=torch.float64))


def test_a_group_that_is_not_differentiable_records_nothing():
    params = make_params()
    optimizer = amsgrad.AMSGrad(params, foreach=False)
    with torch.enable_grad():
        run_steps(optimizer, params, range(2))
    assert all(p.grad_fn is None and all(not getattr(v, "requires_grad", False) for v in optimizer.state[p].values())
               for p in params)


@pytest.mark.parametrize("device", DEVICES)
def test_a_capturable_lr_on_another_device_is_refused_before_anything_changes(device):
    elsewhere = "cpu" if device == "cuda" else "meta"  # a device the parameters are not on
    param = torch.nn.Parameter(torch.ones(3, device=device))
    optimizer = amsgrad.AMSGrad([param], lr=torch.tensor(0.1, device=elsewhere), capturable=True)
    param.grad = torch.ones(3, device=device)
    with pytest.raises(ValueError, match=rf"Invalid lr: a tensor on {elsewhere} with capturable=True and parameters "
                                         rf"on {device}: copying it to them every step would synchronise"):
        optimizer.step()
    assert param not in optimizer.state and torch.equal(param.detach(), torch.ones(3, device=device))
