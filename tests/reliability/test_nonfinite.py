"""Non-finite gradients: the ``nonfinite`` setting (propagate, skip, raise) and GradScaler."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import amsgrad
from amsgrad.optimizers.nonfinite import NonFiniteGradientError

from ..optimizers.configs import accepting
from ..optimizers.helpers import assert_same_run, gradients, make_params, run_steps

BAD_VALUES = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def snapshot(optimizer, params):
    return copy.deepcopy([p.detach() for p in params]), copy.deepcopy(optimizer.state_dict())


def assert_unchanged(before, optimizer, params):
    old_params, old_state = before
    for old, new in zip(old_params, params):
        assert torch.equal(old, new.detach()) or (old.numel() == 0 and new.numel() == 0)
    new_state = optimizer.state_dict()
    assert old_state["state"].keys() == new_state["state"].keys()
    for index, entries in old_state["state"].items():
        for key, value in entries.items():
            assert torch.equal(value, new_state["state"][index][key]), (index, key)


def set_grads(params, step, bad_index=None, bad_value=math.inf):
    grads = gradients(params, step)
    if bad_index is not None:
        grads[bad_index] = grads[bad_index].clone()
        grads[bad_index].view(-1)[0] = bad_value
    for param, grad in zip(params, grads):
        param.grad = grad


@pytest.mark.parametrize("bad", list(BAD_VALUES), ids=str)
@pytest.mark.parametrize("config", accepting(nonfinite="skip"), ids=repr)
def test_skip_leaves_everything_bit_identical_and_counts(config, bad):
    params = make_params()
    optimizer = config.make(params, nonfinite="skip")
    run_steps(optimizer, params, range(3))
    before = snapshot(optimizer, params)

    set_grads(params, 3, bad_index=0, bad_value=BAD_VALUES[bad])
    optimizer.step()
    assert_unchanged(before, optimizer, params)
    assert optimizer.skipped_steps == 1
    assert all(float(optimizer.state[p]["step"]) == 3 for p in params if p.numel() or p in optimizer.state)

    # Afterwards the run is the one that never saw the bad step.
    clean = make_params()
    clean_optimizer = config.make(clean, nonfinite="skip")
    run_steps(clean_optimizer, clean, range(3))
    run_steps(optimizer, params, range(4, 8))
    run_steps(clean_optimizer, clean, range(4, 8))
    assert_same_run(optimizer, params, clean_optimizer, clean)


def test_skip_on_the_first_step_creates_no_state():
    w = torch.nn.Parameter(torch.ones(3))
    optimizer = amsgrad.AMSGrad([w], nonfinite="skip")
    w.grad = torch.tensor([0.0, math.nan, 1.0])
    optimizer.step()
    assert optimizer.state[w] == {} and torch.equal(w.detach(), torch.ones(3))
    assert optimizer.skipped_steps == 1


@pytest.mark.parametrize("bad", list(BAD_VALUES), ids=str)
def test_raise_names_the_parameter_and_modifies_nothing(bad):
    first, second = make_params(shapes=[(3,)]), make_params(seed=1, shapes=[(2, 5), (4,)])
    optimizer = amsgrad.AMSGrad([{"params": first}, {"params": second}], nonfinite="raise")
    run_steps(optimizer, first + second, range(2))
    before = snapshot(optimizer, first + second)

    set_grads(first + second, 2, bad_index=2, bad_value=BAD_VALUES[bad])
    with pytest.raises(NonFiniteGradientError) as caught:
        optimizer.step()
    message = str(caught.value)
    assert "param group 1, parameter 1 (shape (4,)" in message
    assert ("NaN" if bad == "nan" else "inf") in message and "nothing was modified" in message
    assert isinstance(caught.value, FloatingPointError)
    assert_unchanged(before, optimizer, first + second)
    assert optimizer.skipped_steps == 0


def test_raise_counts_positions_in_the_group_including_parameters_without_gradients():
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    optimizer = amsgrad.Adam([a, b, c], nonfinite="raise")
    c.grad = torch.tensor([1.0, -math.inf])
    with pytest.raises(NonFiniteGradientError, match=r"param group 0, parameter 2 \(shape \(2,\)"):
        optimizer.step()


def test_propagate_shows_the_sticky_maximum_hazard():
    # The default does what torch.optim does. A finite gradient whose square overflows makes
    # v̂ infinite for good and freezes the element silently; inf and NaN make it NaN.
    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    optimizer = amsgrad.AMSGrad([w], lr=0.1)
    w.grad = torch.ones(4, dtype=torch.float64)
    optimizer.step()
    w.grad = torch.tensor([1.0, 1e200, math.inf, math.nan], dtype=torch.float64)
    optimizer.step()
    frozen = w.detach().clone()
    for _ in range(20):
        w.grad = torch.ones(4, dtype=torch.float64)
        optimizer.step()
    v_max, w = optimizer.state[w]["max_exp_avg_sq"], w.detach()
    assert math.isinf(v_max[1]) and math.isinf(v_max[2]) and math.isnan(v_max[3])
    assert w[0] < -1.0  # the healthy element moves
    assert math.isfinite(w[1]) and w[1] == frozen[1]  # never moves again, and nothing says so
    assert math.isnan(w[2]) and math.isnan(w[3])


def test_skip_saves_the_sticky_maximum():
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = amsgrad.AMSGrad([w], lr=0.1, nonfinite="skip")
    for step in range(20):
        w.grad = torch.tensor([1.0, math.inf if step == 3 else 1.0], dtype=torch.float64)
        optimizer.step()
    assert optimizer.skipped_steps == 1
    assert torch.isfinite(optimizer.state[w]["max_exp_avg_sq"]).all()
    assert w[0] == w[1] and w[0] < -1.0


def test_skip_in_one_group_skips_every_group_and_propagate_groups_are_not_checked():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = amsgrad.AMSGrad([{"params": [a]}, {"params": [b], "nonfinite": "skip"}])
    a.grad, b.grad = torch.ones(2), torch.tensor([1.0, math.inf])
    optimizer.step()
    assert optimizer.state[a] == {} and optimizer.state[b] == {}
    assert [g["skipped_steps"] for g in optimizer.param_groups] == [1, 1]

    a.grad, b.grad = torch.tensor([math.nan, 1.0]), torch.ones(2)  # only the propagate group is bad
    optimizer.step()
    assert math.isnan(a.detach()[0]) and torch.isfinite(b).all() and optimizer.skipped_steps == 1


def test_raise_wins_over_skip():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = amsgrad.AMSGrad([{"params": [a], "nonfinite": "skip"}, {"params": [b], "nonfinite": "raise"}])
    a.grad, b.grad = torch.tensor([math.inf, 0.0]), torch.tensor([math.nan, 0.0])
    with pytest.raises(NonFiniteGradientError, match="param group 1, parameter 0"):
        optimizer.step()
    assert optimizer.skipped_steps == 0


def test_complex_and_low_precision_gradients_are_checked():
    z = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    h = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    optimizer = amsgrad.AMSGrad([z, h], nonfinite="skip")
    z.grad = torch.tensor([1 + 1j, complex(0, math.inf), 0], dtype=torch.complex64)
    h.grad = torch.ones(3, dtype=torch.bfloat16)
    optimizer.step()
    assert optimizer.skipped_steps == 1 and not optimizer.state[h]
    z.grad = torch.ones(3, dtype=torch.complex64)
    h.grad = torch.tensor([1.0, 2.0, math.nan], dtype=torch.bfloat16)
    optimizer.step()
    assert optimizer.skipped_steps == 2


def test_closure_loss_is_returned_when_the_step_is_skipped():
    w = torch.nn.Parameter(torch.ones(2))
    optimizer = amsgrad.AMSGrad([w], nonfinite="skip")

    def closure():
        optimizer.zero_grad()
        loss = (w * torch.tensor([1.0, math.inf])).sum()
        loss.backward()
        return loss

    assert torch.isinf(optimizer.step(closure)) and optimizer.skipped_steps == 1


def test_settings_are_validated_with_clear_errors():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=r"Invalid nonfinite: 'ignore' \(expected one of 'propagate', 'skip', 'raise'\)"):
        amsgrad.AMSGrad([w], nonfinite="ignore")
    optimizer = amsgrad.Adam([w])
    with pytest.raises(ValueError, match="param group 1: Invalid nonfinite: None"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], "nonfinite": None})
    with pytest.raises(ValueError, match=r"param group 1: Invalid skipped_steps: -1 \(expected an int >= 0\)"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], "skipped_steps": -1})
    assert len(optimizer.param_groups) == 1


def test_skipped_steps_and_policy_survive_state_dict_and_weights_only_load():
    params = make_params()
    optimizer = amsgrad.AMSGrad(params, nonfinite="skip")
    set_grads(params, 0, bad_index=1)
    optimizer.step()
    run_steps(optimizer, params, range(1, 3))

    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    loaded = amsgrad.AMSGrad(make_params())
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert loaded.skipped_steps == 1 and loaded.param_groups[0]["nonfinite"] == "skip"


def test_older_state_dicts_get_the_constructors_setting():
    params = make_params()
    optimizer = amsgrad.AMSGrad(params)
    run_steps(optimizer, params, range(2))
    old = optimizer.state_dict()
    for group in old["param_groups"]:
        del group["nonfinite"], group["skipped_steps"]
    loaded = amsgrad.AMSGrad(make_params(), nonfinite="raise")
    loaded.load_state_dict(old)
    assert loaded.param_groups[0]["nonfinite"] == "raise" and loaded.skipped_steps == 0

    torch_adam = torch.optim.Adam(make_params(), amsgrad=True)
    run_steps(torch_adam, torch_adam.param_groups[0]["params"], range(2))
    ours = amsgrad.AMSGrad(make_params(), nonfinite="skip")
    with pytest.warns(UserWarning, match="use_optimized_update"):  # torch's ε form is kept
        ours.load_state_dict(torch_adam.state_dict())
    assert ours.param_groups[0]["nonfinite"] == "skip" and ours.skipped_steps == 0


class CountHostSyncs(TorchDispatchMode):
    """Counts ``aten._local_scalar_dense``: what ``.item()``, ``bool()`` and ``float()`` call."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_checking_costs_one_host_sync_per_step_whatever_the_number_of_tensors(policy):
    def syncs(nonfinite, count):
        params = make_params(shapes=[(3,)] * count)
        optimizer = amsgrad.AMSGrad(params, nonfinite=nonfinite)
        run_steps(optimizer, params, range(1))
        set_grads(params, 1)
        with CountHostSyncs() as counter:
            optimizer.step()
        return counter.count

    for count in (1, 16):
        assert syncs(policy, count) - syncs("propagate", count) == 1


def _scaled_training(dtype, inject_inf_at=None, steps=30):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = amsgrad.AMSGrad(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(64, 8)
    y = x[:, :1] * 0.5 - x[:, 1:2]
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        if step == inject_inf_at:
            model[0].weight.grad[0, 0] = math.inf
            before = snapshot(optimizer, list(model.parameters()))
            scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        if step == inject_inf_at:
            assert_unchanged(before, optimizer, list(model.parameters()))
            assert scaler.get_scale() == scale / 2
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_grad_scaler_trains_and_skips_inf_steps(dtype):
    losses = _scaled_training(dtype)
    assert losses[-1] < 0.2 * losses[0]
    skipped = _scaled_training(dtype, inject_inf_at=5)
    assert skipped[-1] < 0.2 * skipped[0]
