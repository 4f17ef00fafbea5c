"""``state_dtype``: float32 (or float64) moments for lower-precision parameters.

Measured here (torch 2.13 CPU; the small MLP of ``test_precision.py``, 300 full-batch steps,
AMSGrad lr=1e-2), final MSE:

==========================================  ==========
parameters, state                           final loss
==========================================  ==========
float32, float32                            0.00124
bfloat16, bfloat16 (``state_dtype=None``)   0.00261
bfloat16, float32                           0.00264
float16, float32, default ``eps=1e-16``     0.00124 (no NaN; NaN within 10 steps with float16 state)
==========================================  ==========

So float32 state cures float16's ε/underflow hazard, but not bfloat16's stall: that comes from
rounding θ itself to bfloat16's 8 significant bits after each step (a float32 master copy of
the parameters would be needed, which ``state_dtype`` is not).
"""

from __future__ import annotations

import io
import math

import pytest
import torch

import amsgrad
from tests.optimizers.configs import accepting
from tests.optimizers.helpers import assert_same_run, clone_params, gradients, make_params, run_steps
from tests.optimizers.reference import initial_state, reference_step

from .small_model import train_small_mlp


def loss_curve(dtype: torch.dtype, **settings) -> tuple[list[float], dict[str, torch.dtype]]:
    """The losses of the small MLP, and the dtypes of one parameter's state."""
    losses, model, optimizer = train_small_mlp(dtype, **settings)
    weight = model[0].weight
    assert weight.dtype == dtype
    return losses, {key: value.dtype for key, value in optimizer.state[weight].items() if key != "step"}


def test_loss_curves_with_float32_state():
    reference, dtypes = loss_curve(torch.float32)
    assert set(dtypes.values()) == {torch.float32}
    assert reference[-1] < 0.002  # measured 0.00124

    bf16, dtypes = loss_curve(torch.bfloat16)
    assert set(dtypes.values()) == {torch.bfloat16}
    bf16_fp32, dtypes = loss_curve(torch.bfloat16, state_dtype=torch.float32)
    assert set(dtypes.values()) == {torch.float32}
    for losses in (bf16, bf16_fp32):
        assert all(math.isfinite(loss) for loss in losses)
        assert losses[-1] < 4 * reference[-1]  # measured 2.1x: the stall of rounding θ to bfloat16
    # float32 moments neither help nor hurt bfloat16 parameters (measured 0.00264 vs 0.00261).
    assert abs(bf16_fp32[-1] - bf16[-1]) < 0.1 * bf16[-1]

    # float16 with the default ε = 1e-16 (0 in float16): NaN with float16 state (test_precision.py),
    # finite with float32 state, and as good as float32 (measured 0.00124 against 0.00124).
    fp16_fp32, dtypes = loss_curve(torch.float16, state_dtype=torch.float32)
    assert set(dtypes.values()) == {torch.float32}
    assert all(math.isfinite(loss) for loss in fp16_fp32)
    assert fp16_fp32[-1] < 1.25 * reference[-1]


# (parameter dtype, state dtype): the reference runs in the state dtype and rounds θ to the
# parameter's dtype after every step, exactly what state_dtype promises.
WIDENINGS = [(torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.float32, torch.float64)]


@pytest.mark.parametrize("param_dtype, state_dtype", WIDENINGS, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("config", accepting(state_dtype=torch.float32, foreach=False), ids=repr)
def test_matches_the_formulas_computed_in_the_state_dtype(config, param_dtype, state_dtype):
    params = make_params(dtype=param_dtype)
    optimizer = config.make(params, state_dtype=state_dtype)
    settings = config.settings
    thetas = [p.detach().to(state_dtype) for p in params]
    states = [initial_state(theta) for theta in thetas]

    for step in range(30):
        grads = [0.1 * g for g in gradients(params, step)]  # |g| < 256 keeps g² finite in float16
        for param, grad in zip(params, grads):
            param.grad = grad
        optimizer.step()
        for index, grad in enumerate(grads):
            theta, states[index] = reference_step(thetas[index], grad.to(state_dtype), states[index], settings)
            thetas[index] = theta.to(param_dtype).to(state_dtype)  # θ rounded to the parameter's dtype

    ulp = torch.finfo(param_dtype).eps
    state_rtol = 1e-12 if state_dtype == torch.float64 else 1e-5
    for index, param in enumerate(params):
        state, expected = optimizer.state[param], states[index]
        assert param.dtype == param_dtype
        assert {key: value.dtype for key, value in state.items() if key != "step"} == dict.fromkeys(
            ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if settings.get("amsgrad") else []), state_dtype
        )
        # The same arithmetic in another order could land θ one ulp away (measured: never, in 432 elements).
        torch.testing.assert_close(param.detach().to(state_dtype), thetas[index], rtol=ulp, atol=ulp * 1e-3)
        _assert_close_in_norm(state["exp_avg"], expected["m"], state_rtol)
        _assert_close_in_norm(state["exp_avg_sq"], expected["v"], state_rtol)
        if settings.get("amsgrad"):
            _assert_close_in_norm(state["max_exp_avg_sq"], expected["v_max"], state_rtol)


def _assert_close_in_norm(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """Within ``rtol`` of the largest element: a moment near 0 is a cancellation, not an error."""
    assert actual.dtype == expected.dtype
    if expected.numel():
        error = (actual - expected).abs().max().item()
        assert error <= rtol * expected.abs().max().item(), error


@pytest.mark.parametrize("implementation", [{}, {"foreach": False}], ids=["default", "readable"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("config", accepting(state_dtype=torch.float32, foreach=False), ids=repr)
def test_a_state_dtype_no_wider_than_the_parameters_changes_nothing(config, dtype, implementation):
    # float32 parameters with state_dtype=float32, and float64 ones (the state is never narrowed).
    params = make_params(dtype=dtype)
    twins = clone_params(params)
    plain = config.make(params, **implementation)
    widened = config.make(twins, state_dtype=torch.float32, **implementation)
    run_steps(plain, params, range(12))
    run_steps(widened, twins, range(12))
    assert_same_run(plain, params, widened, twins)


def _bf16_run(steps, **settings):
    params = make_params(dtype=torch.bfloat16)
    optimizer = amsgrad.AMSGrad(params, lr=0.05, **settings)
    run_steps(optimizer, params, steps)
    return params, optimizer


def test_low_precision_parameters_take_the_readable_path():
    params, fast = _bf16_run(range(10), state_dtype=torch.float32)
    readable_params, readable = _bf16_run(range(10), state_dtype=torch.float32, foreach=False)
    assert_same_run(fast, params, readable, readable_params)

    # A group mixing float32 and bfloat16 parameters: the whole group takes the readable path.
    mixed = make_params(dtype=torch.float32)[:2] + make_params(seed=3, dtype=torch.bfloat16)[:2]
    twins = clone_params(mixed)
    default = amsgrad.AMSGrad(mixed, lr=0.05, state_dtype=torch.float32)
    loop = amsgrad.AMSGrad(twins, lr=0.05, state_dtype=torch.float32, foreach=False)
    run_steps(default, mixed, range(10))
    run_steps(loop, twins, range(10))
    assert_same_run(default, mixed, loop, twins)
    assert all(default.state[p]["exp_avg"].dtype == torch.float32 for p in mixed)


def test_resume_keeps_float32_state_of_bfloat16_parameters_bit_identically():
    params, optimizer = _bf16_run(range(10), state_dtype=torch.float32)

    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed_params = [torch.nn.Parameter(p.clone()) for p in checkpoint["params"]]
    resumed = amsgrad.AMSGrad(resumed_params, lr=0.05)  # state_dtype comes with the param groups
    resumed.load_state_dict(checkpoint["optimizer"])
    assert resumed.param_groups[0]["state_dtype"] == torch.float32
    assert_same_run(optimizer, params, resumed, resumed_params)  # float32, not rounded to bfloat16
    assert resumed.state[resumed_params[0]]["exp_avg"].dtype == torch.float32

    run_steps(optimizer, params, range(10, 25))
    run_steps(resumed, resumed_params, range(10, 25))
    assert_same_run(optimizer, params, resumed, resumed_params)


def test_loaded_state_is_converted_to_the_groups_state_dtype_and_not_shared():
    params = make_params(dtype=torch.bfloat16)
    theirs = torch.optim.Adam(params, lr=0.05, amsgrad=True)
    run_steps(theirs, params, range(5))
    saved = theirs.state_dict()

    ours = amsgrad.AMSGrad(params, lr=0.05, state_dtype=torch.float32)
    with pytest.warns(UserWarning, match="use_optimized_update"):  # torch's ε form is kept
        ours.load_state_dict(saved)  # a foreign dict: state_dtype filled from the defaults
    assert ours.param_groups[0]["state_dtype"] == torch.float32
    for param in params:
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            value, original = ours.state[param][key], theirs.state[param][key]
            assert value.dtype == torch.float32 and torch.equal(value, original.float())
    before = [p.detach().clone() for p in params]
    run_steps(ours, params, range(5, 6))
    assert not all(torch.equal(a, b) for a, b in zip(before, params))
    # Our dict loads back into torch.optim, which rounds it to the parameter's dtype, as it does.
    theirs.load_state_dict(ours.state_dict())
    assert theirs.state[params[0]]["exp_avg"].dtype == torch.bfloat16

    # Loading our own live dict twice: float32 state, shared with neither the dict nor each other.
    first, second = (amsgrad.AMSGrad(params, lr=0.05, eps=1e-8, optimized_update=False) for _ in range(2))
    for loaded in (first, second):
        loaded.load_state_dict(ours.state_dict())
    for param in params:
        tensors = [opt.state[param]["exp_avg"] for opt in (ours, first, second)]
        assert len({t.data_ptr() for t in tensors if t.numel()}) == sum(1 for t in tensors if t.numel())
        assert all(t.dtype == torch.float32 for t in tensors)


@pytest.mark.parametrize("cls", [amsgrad.Adam, amsgrad.AMSGrad])
def test_invalid_state_dtype_is_a_clear_error(cls):
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match=r"state_dtype must be None or a torch.dtype .*'float32' of type str"):
        cls([param], state_dtype="float32")
    for dtype in (torch.float16, torch.bfloat16, torch.int64):
        with pytest.raises(ValueError, match=rf"Invalid state_dtype: {dtype} \(expected None .* torch.float32 or torch.float64\)"):
            cls([param], state_dtype=dtype)
    for key in ("fused", "foreach"):
        with pytest.raises(ValueError, match=rf"Invalid {key}: True with state_dtype=torch.float32: only the readable"):
            cls([param], state_dtype=torch.float32, **{key: True})

    optimizer = cls([param], state_dtype=torch.float32)
    with pytest.raises(ValueError, match=r"param group 1: Invalid state_dtype: torch.float16"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "state_dtype": torch.float16})
    with pytest.raises(ValueError, match=r"param group 1: Invalid fused: True with state_dtype"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "fused": True})
    assert len(optimizer.param_groups) == 1
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "state_dtype": None, "fused": True})
