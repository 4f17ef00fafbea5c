"""Each identity that a docstring states, and the invariants AMSGrad is built on."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import amsgrad

from .configs import AMSGRAD_CONFIGS
from .helpers import assert_same_run, make_params, run_steps


@pytest.mark.parametrize("cls", [amsgrad.Adam, amsgrad.AMSGrad])
def test_optimized_update_with_eps_hat_equals_the_plain_update(cls):
    # Adam docstring: the two forms agree when ε̂ = ε·√(1 - β2^t).
    eps, beta2 = 1e-3, 0.99
    params_plain, params_opt = make_params(), make_params()
    plain = cls(params_plain, lr=0.01, betas=(0.9, beta2), eps=eps, optimized_update=False)
    folded = cls(params_opt, lr=0.01, betas=(0.9, beta2), eps=eps, optimized_update=True)
    for t in range(1, 41):
        folded.param_groups[0]["eps"] = eps * math.sqrt(1 - beta2**t)
        run_steps(plain, params_plain, range(t, t + 1))
        run_steps(folded, params_opt, range(t, t + 1))
    assert_same_run(plain, params_plain, folded, params_opt, exact=False, atol=1e-13)


def test_eps_hat_is_not_eps():
    # ...and with the same number for both, the forms differ: ε̂ is not ε (the labml docstring's slip).
    params_plain, params_opt = make_params(), make_params()
    plain = amsgrad.AMSGrad(params_plain, lr=0.01, eps=1e-3, optimized_update=False)
    folded = amsgrad.AMSGrad(params_opt, lr=0.01, eps=1e-3, optimized_update=True)
    run_steps(plain, params_plain, range(5))
    run_steps(folded, params_opt, range(5))
    assert not torch.allclose(params_plain[0], params_opt[0], rtol=1e-9, atol=0)


@pytest.mark.parametrize("config", AMSGRAD_CONFIGS, ids=repr)
def test_amsgrad_equals_adam_when_gradient_magnitudes_never_decrease(config):
    # Then v_t never decreases, so max(v̂_{t-1}, v_t) = v_t.
    params_ams, params_adam = make_params(), make_params()
    ams, adam = config.make(params_ams), config.make(params_adam, amsgrad=False)
    signs = [torch.sign(torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype))
             for i, p in enumerate(params_ams)]
    base = [torch.rand(p.shape, generator=torch.Generator().manual_seed(9 + i), dtype=p.dtype) + 0.5
            for i, p in enumerate(params_ams)]
    for t in range(1, 31):
        for params, optimizer in ((params_ams, ams), (params_adam, adam)):
            for param, sign, magnitude in zip(params, signs, base):
                param.grad = sign * magnitude * (1.0 + 0.1 * t) * (-1) ** t
            optimizer.step()
    for a, b in zip(params_ams, params_adam):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_amsgrad_differs_from_adam_when_a_large_gradient_fades():
    # The paper's point: after a rare large gradient, Adam's v_t decays and its steps grow again.
    w_ams, w_adam = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    ams, adam = amsgrad.AMSGrad([w_ams], lr=0.01, betas=(0.9, 0.99)), amsgrad.Adam([w_adam], lr=0.01, betas=(0.9, 0.99))
    for t in range(1, 300):
        for w, optimizer in ((w_ams, ams), (w_adam, adam)):
            w.grad = torch.tensor([100.0 if t == 1 else -1.0])
            optimizer.step()
    # Measured: Adam has travelled 0.52, AMSGrad 0.18.
    assert w_adam.item() > 2 * w_ams.item() > 0


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    grads=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=40),
    beta2=st.floats(0.0, 0.999),
    max_of=st.sampled_from(["raw", "corrected"]),
)
def test_max_exp_avg_sq_never_decreases(grads, beta2, max_of):
    w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = amsgrad.AMSGrad([w], lr=1e-3, betas=(0.9, beta2), max_of=max_of)
    previous = -math.inf
    for g in grads:
        w.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
        current = optimizer.state[w]["max_exp_avg_sq"].item()
        assert current >= previous
        previous = current


def test_corrected_and_raw_maxima_agree_once_beta2_power_vanishes():
    # AMSGrad docstring: the variants differ only while β2^t is not negligible.
    params_raw, params_cor = make_params(), make_params()
    raw = amsgrad.AMSGrad(params_raw, lr=0.01, betas=(0.9, 0.5), eps=1e-8, optimized_update=False)
    cor = amsgrad.AMSGrad(params_cor, lr=0.01, betas=(0.9, 0.5), eps=1e-8, optimized_update=False, max_of="corrected")
    # Gradients that only grow, so neither maximum keeps an early value: after β2^t < 1e-16 the
    # corrected and raw maxima coincide.
    for t in range(1, 80):
        for params, optimizer in ((params_raw, raw), (params_cor, cor)):
            for param in params:
                param.grad = torch.full_like(param, float(t))
            optimizer.step()
    sr, sc = raw.state[params_raw[0]]["max_exp_avg_sq"], cor.state[params_cor[0]]["max_exp_avg_sq"]
    torch.testing.assert_close(sr, sc, rtol=1e-15, atol=0)


def test_corrected_maximum_differs_early_on():
    w_raw, w_cor = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    raw, cor = amsgrad.AMSGrad([w_raw]), amsgrad.AMSGrad([w_cor], max_of="corrected")
    w_raw.grad = w_cor.grad = torch.ones(1)
    raw.step(), cor.step()
    assert raw.state[w_raw]["max_exp_avg_sq"].item() == pytest.approx(1 - 0.999)
    assert cor.state[w_cor]["max_exp_avg_sq"].item() == pytest.approx(1.0)


def test_algorithm_2_recipe_gives_step_size_alpha_over_sqrt_t():
    # AMSGrad docstring: bias_correction=False, eps=0, and LambdaLR(k -> (k+1)^-1/2).
    alpha, beta1, beta2 = 0.5, 0.0, 0.9
    w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = amsgrad.AMSGrad([w], lr=alpha, betas=(beta1, beta2), eps=0.0, bias_correction=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: (k + 1) ** -0.5)
    x, v_max, v = 0.0, 0.0, 0.0
    for t in range(1, 50):
        g = 3.0 if t % 3 == 1 else -1.0
        w.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
        scheduler.step()
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)
        x -= alpha / math.sqrt(t) * g / math.sqrt(v_max)  # β1 = 0: m_t = g_t
        assert w.item() == pytest.approx(x, rel=1e-12, abs=1e-12)


def test_adamw_equals_decoupled_weight_decay():
    # WeightDecay docstring: weight_decouple=True is AdamW's decay.
    params_ours, params_torch = make_params(), make_params()
    ours = amsgrad.Adam(params_ours, lr=0.01, eps=1e-8, optimized_update=False, weight_decay=amsgrad.WeightDecay(0.3))
    theirs = torch.optim.AdamW(params_torch, lr=0.01, weight_decay=0.3)
    run_steps(ours, params_ours, range(20))
    run_steps(theirs, params_torch, range(20))
    assert_same_run(ours, params_ours, theirs, params_torch, exact=False, atol=1e-13)


@pytest.mark.parametrize("weight_decay", [
    amsgrad.WeightDecay(0.0), amsgrad.WeightDecay(0.0, absolute=True), amsgrad.WeightDecay(0.0, weight_decouple=False),
    None, 0.0,
])
def test_zero_weight_decay_is_no_decay(weight_decay):
    # WeightDecay docstring: with λ = 0 every mode is a no-op.
    params_a, params_b = make_params(), make_params()
    a, b = amsgrad.AMSGrad(params_a, weight_decay=weight_decay), amsgrad.AMSGrad(params_b)
    run_steps(a, params_a, range(10))
    run_steps(b, params_b, range(10))
    assert_same_run(a, params_a, b, params_b)


def test_weight_decay_does_not_reach_the_gradient():
    w = torch.nn.Parameter(torch.ones(2))
    grad = torch.ones(2)
    w.grad = grad
    amsgrad.AMSGrad([w], weight_decay=0.5).step()
    assert torch.equal(grad, torch.ones(2))
