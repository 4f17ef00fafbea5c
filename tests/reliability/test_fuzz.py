"""Fuzzed inputs: shapes (zero-size too), dtypes, hyperparameters (state_precision too) in and out of range, extreme
gradients. Either the documented error with nothing modified, or the readable path and the
default (fast) path agree, with no NaN from finite inputs.

Hypothesis runs derandomized with a bounded number of examples, so CI time is fixed.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import amsgrad
from amsgrad.optimizers.nonfinite import NonFiniteGradientError

from ..optimizers.configs import CONFIGS, accepting

FUZZ = settings(derandomize=True, max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.complex64]
READABLE = dict(foreach=False, fused=False)
# Largest gradient magnitude per dtype: g² must stay representable. Beyond, v = inf is the
# documented overflow (the element freezes; see amsgrad.optimizers.nonfinite), and with
# β2 = 0 the next step's 0·inf is NaN: float32 state can hold what float16 cannot, not more.
MAX_GRAD = {torch.float32: 1e18, torch.bfloat16: 1e18, torch.complex64: 1e18, torch.float64: 1e150}
# How far the two paths may differ: the same formulas, sometimes in another order.
TOLERANCE = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-6), torch.complex64: (1e-5, 1e-6),
             torch.bfloat16: (2e-2, 1e-2)}

shapes = st.lists(st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple), min_size=1, max_size=3)


@st.composite
def hyperparameters(draw):
    return dict(
        lr=draw(st.sampled_from([0.0, 1e-8, 1e-3, 0.1, 1.0, 10.0])),
        betas=(draw(st.sampled_from([0.0, 0.5, 0.9, 0.999999])), draw(st.sampled_from([0.0, 0.5, 0.99, 0.999999]))),
        eps=draw(st.sampled_from([1e-16, 1e-8, 1e-3, 1.0])),
        state_precision=draw(st.sampled_from([None, None, torch.float32, torch.float64, torch.bfloat16, "int8", "int4"])),
        min_compressed_numel=draw(st.sampled_from([0, 4096])),  # 0: even these tiny tensors compressed
    )


@st.composite
def gradient_scales(draw, dtype):
    exponent = draw(st.sampled_from([-30, -12, -3, 0, 3, 12, 18, 150]))
    scale = 10.0**exponent
    return min(scale, MAX_GRAD[dtype])


def make_params(shape_list, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype)) for shape in shape_list]


def make_grads(params, scales, seed):
    generator = torch.Generator().manual_seed(seed)
    grads = []
    for param, scale in zip(params, scales):
        grad = torch.randn(param.shape, generator=generator, dtype=torch.float64 if not param.is_complex()
                           else torch.complex128)
        grads.append((grad * scale).to(param.dtype))
    return grads


def finite_everywhere_but_v(optimizer, params):
    """No NaN anywhere; params, m and the step finite (v and v̂ may be inf after g² overflowed)."""
    for param in params:
        assert not torch.isnan(param).any()
        assert torch.isfinite(param).all()
        for key, value in optimizer.state[param].items():
            assert not torch.isnan(value).any(), key
            if key in ("step", "exp_avg"):
                assert torch.isfinite(value).all(), key


@FUZZ
@given(
    config=st.sampled_from(accepting(state_precision=torch.float32, foreach=False)),
    shape_list=shapes,
    dtype=st.sampled_from(DTYPES),
    hyper=hyperparameters(),
    data=st.data(),
    seed=st.integers(0, 2**16),
)
def test_readable_and_default_paths_agree_and_stay_finite(config, shape_list, dtype, hyper, data, seed):
    overrides = dict(hyper)
    if config.settings["eps"] == 0.0:
        overrides.pop("eps")  # eps=0 keeps its documented 0/0 for zero gradients: not "finite inputs"
        overrides["eps"] = 1e-8
    paths = {}
    for name, path in {"readable": READABLE, "default": {}}.items():
        params = make_params(shape_list, dtype, seed)
        paths[name] = (params, config.make(params, **overrides, **path))
    steps = [[data.draw(gradient_scales(dtype)) for _ in shape_list] for _ in range(3)]
    for step, scales in enumerate(steps):
        grads = make_grads(paths["readable"][0], scales, seed + step)
        for params, optimizer in paths.values():
            for param, grad in zip(params, grads):
                param.grad = grad.clone()
            optimizer.step()

    (params_r, opt_r), (params_d, opt_d) = paths["readable"], paths["default"]
    rtol, atol = TOLERANCE[dtype]
    for index, (a, b) in enumerate(zip(params_r, params_d)):
        assert a.dtype == b.dtype == dtype
        torch.testing.assert_close(b.detach(), a.detach(), rtol=rtol, atol=atol, equal_nan=True,
                                   msg=lambda m: f"param {index}: {m}")
        assert opt_r.state[a].keys() == opt_d.state[b].keys()
        for key, value in opt_r.state[a].items():
            torch.testing.assert_close(opt_d.state[b][key], value, rtol=rtol, atol=atol, equal_nan=True,
                                       msg=lambda m: f"param {index} {key}: {m}")
    finite_everywhere_but_v(opt_r, params_r)
    finite_everywhere_but_v(opt_d, params_d)


BAD_NUMBERS = [-1.0, -1e-12, math.nan, math.inf, -math.inf]
INVALID = {
    "lr": st.sampled_from(BAD_NUMBERS),
    "eps": st.sampled_from(BAD_NUMBERS),
    "weight_decay": st.sampled_from(BAD_NUMBERS),
    "betas": st.tuples(st.sampled_from([-0.1, 1.0, 1.5, math.nan, 0.9]), st.sampled_from([-1e-9, 1.0, math.nan]))
    | st.tuples(st.sampled_from([1.0, -0.5, math.inf]), st.sampled_from([0.0, 0.999])),
    "nonfinite": st.sampled_from(["ignore", "Skip", None, ""]),
    "max_of": st.sampled_from(["max", "", None]),
    "state_precision": st.sampled_from([torch.float16, torch.int32, "int3", "fp8", 8]),
}


@FUZZ
@given(config=st.sampled_from(CONFIGS), key=st.sampled_from(sorted(INVALID)), data=st.data())
def test_out_of_range_settings_raise_the_documented_error_and_modify_nothing(config, key, data):
    if key == "max_of" and config.cls is not amsgrad.AMSGrad:
        key = "lr"
    value = data.draw(INVALID[key])
    if config.cls is amsgrad.AdamNC and key == "betas":
        assume(not 0.0 <= value[0] < 1.0)  # AdamNC takes only β1 (its β2,t is scheduled)
    params = make_params([(3,), (0,)], torch.float64, 0)
    with pytest.raises(ValueError) as caught:
        config.make(params, **{key: value})
    assert key in str(caught.value) and "expected" in str(caught.value)

    optimizer = config.make(params)
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer.step()
    before = copy.deepcopy(optimizer.state_dict())
    extra = [torch.nn.Parameter(torch.ones(2, dtype=torch.float64))]
    with pytest.raises(ValueError, match=rf"param group 1: Invalid {key}"):
        optimizer.add_param_group({"params": extra, key: value})
    assert len(optimizer.param_groups) == 1
    after = optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for index, entries in before["state"].items():
        assert all(torch.equal(entries[k], after["state"][index][k]) for k in entries)


@FUZZ
@given(
    config=st.sampled_from(accepting(state_precision=torch.float32, foreach=False, nonfinite="skip")),
    shape_list=shapes.filter(lambda s: any(math.prod(shape) > 0 for shape in s)),
    dtype=st.sampled_from(DTYPES),
    policy=st.sampled_from(["skip", "raise"]),
    bad=st.sampled_from([math.inf, -math.inf, math.nan]),
    data=st.data(),
    implementation=st.sampled_from(["readable", "default", "float32-state", "int8-state"]),
)
def test_non_finite_gradients_skip_or_raise_with_nothing_modified(config, shape_list, dtype, policy, bad, data,
                                                                    implementation):
    params = make_params(shape_list, dtype, 1)
    path = {"readable": READABLE, "default": {}, "float32-state": {"state_precision": torch.float32},
            "int8-state": {"state_precision": "int8", "min_compressed_numel": 0}}[implementation]
    optimizer = config.make(params, nonfinite=policy, **path)
    for param, grad in zip(params, make_grads(params, [1.0] * len(params), 2)):
        param.grad = grad
    optimizer.step()
    before_params = [p.detach().clone() for p in params]
    before_state = copy.deepcopy(optimizer.state_dict())

    grads = make_grads(params, [1.0] * len(params), 3)
    candidates = [i for i, p in enumerate(params) if p.numel() > 0]
    target = data.draw(st.sampled_from(candidates))
    position = data.draw(st.integers(0, params[target].numel() - 1))
    grads[target].view(-1)[position] = complex(bad, 0) if dtype.is_complex else bad
    for param, grad in zip(params, grads):
        param.grad = grad
    if policy == "raise":
        with pytest.raises(NonFiniteGradientError, match=rf"param group 0, parameter {target} "):
            optimizer.step()
    else:
        optimizer.step()
        assert optimizer.skipped_steps == 1
    for old, new in zip(before_params, params):
        assert torch.equal(old, new.detach())
    after = optimizer.state_dict()
    for index, entries in before_state["state"].items():
        assert all(torch.equal(entries[k], after["state"][index][k]) for k in entries)
