"""Each identity that a docstring states, and the invariants AMSGrad is built on."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import amsgrad

from .configs import ADAMX_CONFIGS, AMSGRAD_CONFIGS
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


# ---------------------------------------------------------------- β1 decay, AdamNC, AdamX
PATHS = [dict(foreach=False), dict(foreach=True), dict(), dict(capturable=True)]


@pytest.mark.parametrize("path", PATHS, ids=["readable", "foreach", "default", "capturable"])
@pytest.mark.parametrize("cls", [amsgrad.Adam, amsgrad.AMSGrad])
def test_beta1_decay_one_is_a_constant_beta1(cls, path):
    # Adam docstring: λ = 1 is the constant-β1 optimizer, bit for bit (1 - ∏ β1,k = 1 - β1^t).
    params_a, params_b = make_params(), make_params()
    a, b = cls(params_a, lr=0.01, beta1_decay=1.0, **path), cls(params_b, lr=0.01, **path)
    run_steps(a, params_a, range(25))
    run_steps(b, params_b, range(25))
    assert_same_run(a, params_a, b, params_b)


def test_beta1_decay_correction_is_one_minus_the_product_of_the_betas():
    # Adam docstring: 1 - ∏_{k<=t} β1,k = 1 - β1^t λ^(t(t-1)/2), the correction that makes the
    # corrected m_t of a constant gradient the gradient itself.
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    beta1, decay = 0.9, 0.8
    optimizer = amsgrad.Adam([w], lr=0.1, betas=(beta1, 0.99), beta1_decay=decay)
    product = 1.0
    for t in range(1, 40):
        w.grad = torch.full_like(w, 2.5)
        optimizer.step()
        product *= beta1 * decay ** (t - 1)
        state = optimizer.state[w]
        correction1, _ = optimizer.bias_corrections(state, optimizer.param_groups[0])
        assert correction1 == pytest.approx(1 - product, rel=1e-13, abs=1e-300)
        torch.testing.assert_close(state["exp_avg"] / correction1, w.grad, rtol=1e-12, atol=0)


@pytest.mark.parametrize("path", PATHS, ids=["readable", "foreach", "default", "capturable"])
def test_adamx_with_a_constant_beta1_is_amsgrad_algorithm_2(path):
    # AdamX docstring: ((1 - β1)/(1 - β1))² = 1, so v̂_t = max(v̂_{t-1}, v_t), bit for bit.
    params_x, params_a = make_params(), make_params()
    adamx = amsgrad.AdamX(params_x, lr=0.01, betas=(0.8, 0.99), **path)
    paper = amsgrad.AMSGrad(params_a, lr=0.01, betas=(0.8, 0.99), bias_correction=False, **path)
    run_steps(adamx, params_x, range(30))
    run_steps(paper, params_a, range(30))
    assert_same_run(adamx, params_x, paper, params_a)


@pytest.mark.parametrize("config", ADAMX_CONFIGS, ids=repr)
def test_adamx_maximum_never_decreases(config):
    # λ <= 1 makes 1 - β1,t >= 1 - β1,t-1: the factor is >= 1, so v̂_t >= v̂_{t-1}.
    params = make_params()
    optimizer = config.make(params)
    previous = None
    for step in range(30):
        run_steps(optimizer, params, range(step, step + 1))
        current = [optimizer.state[p]["max_exp_avg_sq"].clone() for p in params]
        if previous is not None:
            assert all(bool((c >= p).all()) for c, p in zip(current, previous))
        previous = current


def test_adamx_with_a_decaying_beta1_rescales_the_maximum():
    # A gradient that stops: v_t decays, and v̂_t = ((1 - β1,t)/(1 - β1,t-1))² v̂_{t-1} grows.
    w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    beta1, decay = 0.9, 0.5
    optimizer = amsgrad.AdamX([w], lr=0.01, betas=(beta1, 0.9), beta1_decay=decay)
    w.grad = torch.ones(1, dtype=torch.float64)
    optimizer.step()
    v_hat = optimizer.state[w]["max_exp_avg_sq"].item()
    assert v_hat == pytest.approx(0.1)  # v̂_1 = v_1 = (1 - β2) g²
    for t in range(2, 6):
        w.grad = torch.zeros(1, dtype=torch.float64)
        optimizer.step()
        factor = ((1 - beta1 * decay ** (t - 1)) / (1 - beta1 * decay ** (t - 2))) ** 2
        v_hat *= factor
        assert optimizer.state[w]["max_exp_avg_sq"].item() == pytest.approx(v_hat, rel=1e-14)


@pytest.mark.parametrize("path", PATHS, ids=["readable", "foreach", "default", "capturable"])
def test_adamnc_with_beta1_zero_is_adagrad(path):
    # AdamNC docstring: v_t = (1/t) Σ g², so with β1 = 0 and α_t = α/√t, θ_t = θ_{t-1} - α g_t/√(Σ g²).
    params_nc, params_ada = make_params(), make_params()
    nc = amsgrad.AdamNC(params_nc, lr=0.3, beta1=0.0, eps=0.0, **path)
    schedule = torch.optim.lr_scheduler.LambdaLR(nc, lambda k: (k + 1) ** -0.5)
    adagrad = torch.optim.Adagrad(params_ada, lr=0.3, eps=0.0)
    for step in range(40):
        run_steps(nc, params_nc, range(step, step + 1))
        run_steps(adagrad, params_ada, range(step, step + 1))
        schedule.step()
    for ours, theirs in zip(params_nc, params_ada):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    # and v_t is the mean of the squared gradients: Adagrad's sum over t
    for ours, theirs in zip(params_nc, params_ada):
        torch.testing.assert_close(nc.state[ours]["exp_avg_sq"] * 40, adagrad.state[theirs]["sum"], rtol=1e-12, atol=0)


def test_adamnc_schedule_function_is_used_and_checked():
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    seen = []

    def schedule(t):
        seen.append(t)
        return 0.5

    optimizer = amsgrad.AdamNC([w], lr=0.1, beta2_schedule=schedule, foreach=False)
    for g in (1.0, 3.0):
        w.grad = torch.full_like(w, g)
        optimizer.step()
    assert sorted(set(seen)) == [1.0, 2.0]  # checked before the step, then used in it
    torch.testing.assert_close(optimizer.state[w]["exp_avg_sq"], torch.full_like(w, 0.5 * 0.5 * 1 + 0.5 * 9))

    # A schedule that leaves [0, 1] is refused before the step changes anything, on every path.
    for path in (dict(foreach=False), dict(foreach=True)):
        optimizer = amsgrad.AdamNC([w], lr=0.1, beta2_schedule=lambda t: 1.5 if t > 1 else 0.0, **path)
        w.grad = torch.ones_like(w)
        optimizer.step()
        before = {key: value.clone() for key, value in optimizer.state[w].items()}
        theta = w.detach().clone()
        with pytest.raises(ValueError, match=r"beta2_schedule\(2\) returned 1.5 \(expected a number in \[0, 1\]\)"):
            optimizer.step()
        assert torch.equal(w.detach(), theta)
        assert all(torch.equal(optimizer.state[w][key], value) for key, value in before.items())
