"""β1 decay, AdamNC and AdamX: their formulas over many steps, and what their state dicts hold."""

from __future__ import annotations

import io

import pytest
import torch

import amsgrad

from .configs import CONFIGS, slower_beta2
from .helpers import assert_same_run, gradients, make_params, run_steps
from .reference import initial_state, reference_step

SCHEDULED = [c for c in CONFIGS if c.settings.get("beta1_decay", 1.0) != 1.0 or "beta2_schedule" in c.settings
             or c.settings.get("max_of") == "adamx"]


@pytest.mark.parametrize("config", SCHEDULED, ids=repr)
def test_the_formulas_hold_over_many_steps(config):
    # The independent float64 reference (running power of λ, running product of β1,k), 120 steps.
    params = make_params()
    optimizer = config.make(params)
    settings = config.settings
    thetas = [p.detach().clone() for p in params]
    states = [initial_state(theta) for theta in thetas]
    worst = 0.0
    for step in range(120):
        grads = gradients(params, step)
        for param, grad in zip(params, grads):
            param.grad = grad
        optimizer.step()
        for index, grad in enumerate(grads):
            thetas[index], states[index] = reference_step(thetas[index], grad, states[index], settings)
        for param, theta in zip(params, thetas):
            if param.numel():
                worst = max(worst, (param.detach() - theta).abs().max().item())
    assert worst <= 1e-10
    for param, expected in zip(params, states):
        state = optimizer.state[param]
        torch.testing.assert_close(state["exp_avg"], expected["m"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(state["exp_avg_sq"], expected["v"], rtol=1e-10, atol=1e-12)
        if settings.get("amsgrad"):
            torch.testing.assert_close(state["max_exp_avg_sq"], expected["v_max"], rtol=1e-10, atol=1e-12)


def _saved(optimizer) -> dict:
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("make", [
    lambda p: amsgrad.AdamNC(p, lr=0.05, beta2_schedule=slower_beta2, beta1_decay=0.99),
    lambda p: amsgrad.AdamNC(p, lr=0.05),
    lambda p: amsgrad.AdamX(p, lr=0.05, beta1_decay=0.95),
    lambda p: amsgrad.Adam(p, lr=0.05, beta1_decay=0.95),
], ids=["adamnc-function", "adamnc", "adamx", "adam"])
def test_a_checkpoint_loads_with_weights_only_and_resumes_bit_for_bit(make):
    whole_params, first_params = make_params(), make_params()
    whole = make(whole_params)
    run_steps(whole, whole_params, range(20))
    first = make(first_params)
    run_steps(first, first_params, range(8))
    saved = _saved(first)
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in first_params]
    resumed = make(resumed_params)
    resumed.load_state_dict(saved)
    run_steps(resumed, resumed_params, range(8, 20))
    assert_same_run(whole, whole_params, resumed, resumed_params)
    assert set(resumed.state[resumed_params[0]]) <= {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}  # torch's keys


def test_a_schedule_function_is_saved_by_name_and_must_be_given_again():
    params = make_params()
    optimizer = amsgrad.AdamNC(params, beta2_schedule=slower_beta2)
    run_steps(optimizer, params, range(2))
    saved = _saved(optimizer)
    assert saved["param_groups"][0]["beta2_schedule"] == "function tests.optimizers.configs.slower_beta2"
    assert optimizer.param_groups[0]["beta2_schedule"] is slower_beta2  # the optimizer keeps the function
    with pytest.raises(ValueError, match=r"the name a state dict keeps of a function: build the optimizer with that function"):
        amsgrad.AdamNC(make_params()).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"saved with tests\.optimizers\.configs\.slower_beta2, this optimizer has"):
        amsgrad.AdamNC(make_params(), beta2_schedule=lambda t: 0.5).load_state_dict(saved)


def test_a_torch_adam_checkpoint_loads_into_adamx_and_continues_as_amsgrad():
    # torch.optim.Adam(amsgrad=True) keeps the maximum of raw v_t: AdamX's with a constant β1.
    torch_params, ours_params = make_params(), make_params()
    theirs = torch.optim.Adam(torch_params, lr=0.01, amsgrad=True)
    run_steps(theirs, torch_params, range(5))
    adamx = amsgrad.AdamX(ours_params, lr=0.01)
    with pytest.warns(UserWarning):  # torch's ε form, and its bias correction
        adamx.load_state_dict(theirs.state_dict())
    group = adamx.param_groups[0]
    assert group["max_of"] == "adamx" and group["bias_correction"] and not group["optimized_update"]
    assert group["beta1_decay"] == 1.0
    for p, q in zip(ours_params, torch_params):
        p.data.copy_(q.data)
    run_steps(adamx, ours_params, range(5, 15))
    run_steps(theirs, torch_params, range(5, 15))
    for a, b in zip(ours_params, torch_params):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(beta1_decay=0.0), ValueError, r"Invalid beta1_decay: 0\.0 \(expected a number in \(0, 1\]; 1 means no decay\)"),
    (dict(beta1_decay=1.5), ValueError, r"Invalid beta1_decay: 1\.5"),
    (dict(beta1_decay=float("nan")), ValueError, r"Invalid beta1_decay: nan"),
    (dict(beta1_decay="0.9"), TypeError, r"beta1_decay must be a real number, got '0\.9'"),
])
@pytest.mark.parametrize("cls", [amsgrad.Adam, amsgrad.AMSGrad, amsgrad.AdamNC, amsgrad.AdamX])
def test_bad_beta1_decay_is_refused(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls(make_params(), **kwargs)


@pytest.mark.parametrize("make, error, message", [
    (lambda p: amsgrad.AdamNC(p, beta2_schedule=0.5), TypeError, r"beta2_schedule must be None \(1 - 1/t\) or a function of t, got 0\.5"),
    (lambda p: amsgrad.AdamNC(p, beta2_schedule=slower_beta2, capturable=True), ValueError,
     r"Invalid beta2_schedule: a function with capturable=True"),
    (lambda p: amsgrad.AdamNC([{"params": p, "bias_correction": True}]), ValueError,
     r"Invalid bias_correction: True \(AdamNC, the paper's Algorithm 3, has no bias correction\)"),
    (lambda p: amsgrad.AdamX([{"params": p, "max_of": "raw"}]), ValueError, r"Invalid max_of: 'raw'"),
    (lambda p: amsgrad.AdamNC(p, beta1=1.0), ValueError, r"Invalid betas\[0\]: 1\.0 \(expected 0 <= beta1 < 1\)"),
])
def test_bad_settings_of_the_new_classes_are_refused(make, error, message):
    with pytest.raises(error, match=message):
        make(make_params())


def test_a_schedule_function_runs_multi_tensor_under_compile_and_tensor_steps_by_default():
    from amsgrad import kernels

    group = amsgrad.AdamNC(make_params(), beta2_schedule=slower_beta2).param_groups[0]
    assert kernels.implementation(group, (), compiling=True) == "foreach"
    default = amsgrad.AdamNC(make_params()).param_groups[0]
    assert kernels.implementation(default, (), compiling=True) == "tensor-steps"


@pytest.mark.parametrize("make", [
    lambda p, lr: amsgrad.AdamNC(p, lr=lr, beta1_decay=0.9, capturable=True),
    lambda p, lr: amsgrad.AdamX(p, lr=lr, beta1_decay=0.9, capturable=True),
], ids=["adamnc", "adamx"])
def test_a_capturable_step_of_the_new_classes_reads_nothing_on_the_host(make, monkeypatch):
    from .test_capturable_differentiable import NoHostReads, _forbidden

    params = [p.detach().requires_grad_() for p in make_params(dtype=torch.float32)]
    optimizer = make(params, torch.tensor(1e-2))
    for method in ("item", "tolist", "__float__", "__bool__", "__int__"):
        monkeypatch.setattr(torch.Tensor, method, _forbidden(method))
    counter = NoHostReads()
    with counter:
        for step in range(3):
            for param, grad in zip(params, gradients(params, step)):
                param.grad = grad
            optimizer.step()
    monkeypatch.undo()
    assert counter.reads == []


@pytest.mark.parametrize("make", [
    lambda p: amsgrad.AdamNC(p, lr=0.05, beta1_decay=0.9, differentiable=True),
    lambda p: amsgrad.AdamX(p, lr=0.05, beta1_decay=0.9, differentiable=True),
], ids=["adamnc", "adamx"])
def test_the_differentiable_step_of_the_new_classes_passes_gradcheck(make):
    def one_step(param, grad):
        p = param.clone()
        optimizer = make([p])
        for scale in (1.0, -0.5):  # two steps: AdamX's factor applies from the second
            p.grad = grad * scale
            optimizer.step()
        return p

    inputs = (torch.randn(4, dtype=torch.float64, requires_grad=True), torch.randn(4, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(one_step, inputs)
