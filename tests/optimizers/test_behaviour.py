"""Behaviour every configuration must have: torch.optim conventions and simple invariants."""

import copy
import io
import pickle

import pytest
import torch

import amsgrad

from .configs import CONFIGS
from .helpers import assert_same_run, clone_params, gradients, make_params, run_steps

NON_MAXIMIZING = [c for c in CONFIGS if not c.settings["maximize"]]


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_resume_from_checkpoint_is_bit_identical(config):
    params = make_params()
    optimizer = config.make(params)
    run_steps(optimizer, params, range(10))

    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed_params = [torch.nn.Parameter(p.clone()) for p in checkpoint["params"]]
    resumed = config.make(resumed_params)
    resumed.load_state_dict(checkpoint["optimizer"])

    run_steps(optimizer, params, range(10, 25))
    run_steps(resumed, resumed_params, range(10, 25))
    assert_same_run(optimizer, params, resumed, resumed_params)


# With eps=0 a zero gradient is 0/0 by definition: see test_eps_zero_zero_gradient.
@pytest.mark.parametrize("config", [c for c in CONFIGS if c.settings["eps"] > 0], ids=repr)
def test_zero_gradient_changes_params_only_by_decoupled_decay(config):
    settings = config.settings
    params = make_params()
    before = [p.detach().clone() for p in params]
    optimizer = config.make(params)
    for param in params:
        param.grad = torch.zeros_like(param)
    optimizer.step()

    decay, lr = settings["weight_decay"], settings["lr"]
    for old, new in zip(before, params):
        if decay and not settings["decoupled_weight_decay"]:
            # Coupled L2 turns a zero gradient into λθ: the parameter moves towards zero.
            assert bool((new.abs() <= old.abs()).all())
            assert not torch.equal(new, old) or old.numel() == 0 or bool((old == 0).all())
        elif decay:
            factor = 1 - decay if settings["absolute_weight_decay"] else 1 - lr * decay
            assert torch.equal(new.detach(), old * factor)
        else:
            assert torch.equal(new.detach(), old)


def test_eps_zero_zero_gradient():
    # The paper's Algorithm 2 has no ε: an element that has only seen zero gradients is 0/0.
    w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    optimizer = amsgrad.AMSGrad([w], eps=0.0, bias_correction=False)
    w.grad = torch.tensor([0.0, 1.0], dtype=torch.float64)
    optimizer.step()
    assert torch.isnan(w[0]) and torch.isfinite(w[1])


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_grad_is_never_modified(config):
    params = make_params()
    optimizer = config.make(params)
    for step in range(3):
        grads = gradients(params, step)
        for param, grad in zip(params, grads):
            param.grad = grad.clone()
        optimizer.step()
        for param, grad in zip(params, grads):
            assert torch.equal(param.grad, grad)


@pytest.mark.parametrize("config", NON_MAXIMIZING, ids=repr)
def test_maximize_equals_minimizing_the_negative(config):
    params_min, params_max = make_params(), make_params()
    minimizer = config.make(params_min)
    maximizer = config.make(params_max, maximize=True)
    for _ in range(15):
        for params, optimizer, sign in ((params_min, minimizer, -1.0), (params_max, maximizer, 1.0)):
            optimizer.zero_grad()
            objective = sum((torch.sin(3 * p) + p**2).sum() for p in params)
            (sign * objective).backward()
            optimizer.step()
    assert_same_run(minimizer, params_min, maximizer, params_max)


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_closure_is_evaluated_with_grad_and_its_loss_returned(config):
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    optimizer = config.make([w])
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        optimizer.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = optimizer.step(closure)
    assert calls == [True]
    assert loss.item() == 5.0
    assert optimizer.step() is None


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_deepcopy_and_pickle_continue_identically(config):
    params = make_params()
    optimizer = config.make(params)
    run_steps(optimizer, params, range(5))

    copied = copy.deepcopy({"params": params, "optimizer": optimizer})
    pickled = pickle.loads(pickle.dumps({"params": params, "optimizer": optimizer}))
    run_steps(optimizer, params, range(5, 12))
    for twin in (copied, pickled):
        run_steps(twin["optimizer"], twin["params"], range(5, 12))
        assert_same_run(optimizer, params, twin["optimizer"], twin["params"])


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_complex_parameter_behaves_as_its_real_view(config):
    generator = torch.Generator().manual_seed(3)
    z = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.complex128, generator=generator))
    r = torch.nn.Parameter(torch.view_as_real(z.detach()).clone())
    opt_z, opt_r = config.make([z]), config.make([r])
    for step in range(12):
        grad = gradients([r], step)[0]
        r.grad = grad
        z.grad = torch.view_as_complex(grad.clone())
        opt_z.step()
        opt_r.step()
    assert torch.equal(torch.view_as_real(z.detach()), r.detach())
    for key, value in opt_r.state[r].items():
        ours = opt_z.state[z][key]
        if value.dim():
            assert ours.is_complex()  # the state keeps the parameter's dtype, as in torch.optim
            ours = torch.view_as_real(ours)
        assert torch.equal(ours, value), key


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_lr_as_a_tensor_equals_lr_as_a_float(config):
    lr = config.settings["lr"]
    params_f, params_t = make_params(), make_params()
    opt_f, opt_t = config.make(params_f), config.make(params_t, lr=torch.tensor(lr, dtype=torch.float64))
    run_steps(opt_f, params_f, range(8))
    run_steps(opt_t, params_t, range(8))
    assert_same_run(opt_f, params_f, opt_t, params_t)


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_parameters_without_gradients_are_left_alone(config):
    params = make_params()
    optimizer = config.make(params)
    frozen = params[0].detach().clone()
    for param, grad in zip(params[1:], gradients(params[1:], 0)):
        param.grad = grad
    optimizer.step()
    assert torch.equal(params[0].detach(), frozen)
    assert params[0] not in optimizer.state


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_state_uses_torch_keys_and_the_parameter_dtype(config):
    params = make_params(dtype=torch.float32)
    optimizer = config.make(params)
    run_steps(optimizer, params, range(2))
    expected = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if config.settings.get("amsgrad") else set())
    for param in params:
        state = optimizer.state[param]
        assert set(state) == expected
        assert state["step"].dtype == torch.float32 and state["step"].dim() == 0
        for key in expected - {"step"}:
            assert state[key].dtype == param.dtype and state[key].shape == param.shape


def test_per_group_settings_survive_state_dict():
    a, b = make_params(shapes=[(3,)]), make_params(seed=1, shapes=[(3,)])
    groups = [
        {"params": a},
        {"params": b, "lr": 0.2, "betas": (0.5, 0.9), "eps": 1e-8, "amsgrad": False, "max_of": "corrected",
         "optimized_update": False, "maximize": True, "weight_decay": amsgrad.WeightDecay(0.1, absolute=True)},
    ]
    optimizer = amsgrad.AMSGrad(groups, lr=0.01)
    run_steps(optimizer, a + b, range(4))

    saved = optimizer.state_dict()
    other = amsgrad.AMSGrad([{"params": clone_params(a)}, {"params": clone_params(b)}], lr=1.0, betas=(0.1, 0.2))
    with pytest.warns(UserWarning) as caught:
        other.load_state_dict(saved)  # group 1 runs otherwise than built: the saved settings win, and it says so
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and "param group 1 was saved in torch's update form" in messages[0]
    assert "param group 1 was saved with amsgrad=False" in messages[1]
    for key in ("lr", "betas", "eps", "amsgrad", "max_of", "optimized_update", "maximize",
                "weight_decay", "decoupled_weight_decay", "absolute_weight_decay"):
        assert other.param_groups[1][key] == optimizer.param_groups[1][key], key
        assert other.param_groups[0][key] == optimizer.param_groups[0][key], key
    assert other.param_groups[1]["absolute_weight_decay"] is True


def test_each_group_follows_its_own_settings():
    shapes = [(4,)]
    setting = {"lr": 0.2, "betas": (0.5, 0.9), "eps": 1e-8, "amsgrad": False, "optimized_update": False,
               "maximize": True, "weight_decay": amsgrad.WeightDecay(0.1, absolute=True)}
    a, b = make_params(seed=0, shapes=shapes), make_params(seed=1, shapes=shapes)
    together = amsgrad.AMSGrad([{"params": a}, {"params": b, **setting}], lr=0.01)
    a_alone, b_alone = make_params(seed=0, shapes=shapes), make_params(seed=1, shapes=shapes)
    opt_a, opt_b = amsgrad.AMSGrad(a_alone, lr=0.01), amsgrad.AMSGrad(b_alone, **setting)
    for step in range(6):
        grad_a, grad_b = gradients(a, step)[0], gradients(b, step, seed=2)[0]
        a[0].grad, b[0].grad, a_alone[0].grad, b_alone[0].grad = grad_a, grad_b, grad_a, grad_b
        for optimizer in (together, opt_a, opt_b):
            optimizer.step()
    assert torch.equal(a[0], a_alone[0]) and torch.equal(b[0], b_alone[0])


@pytest.mark.parametrize(
    "entry, expected",
    [
        # a plain number is coupled L2 beside a decoupled default, as in torch.optim.Adam
        ({"weight_decay": 0.1}, (0.1, False, False)),
        ({"weight_decay": 0.0}, (0.0, False, False)),
        ({"weight_decay": None}, (0.0, False, False)),
        # torch's key, written in the dict, is honoured; absolute decay is a decoupled mode
        ({"weight_decay": 0.1, "decoupled_weight_decay": True}, (0.1, True, False)),
        ({"weight_decay": 0.1, "absolute_weight_decay": True}, (0.1, True, True)),
        # a WeightDecay gives its own mode
        ({"weight_decay": amsgrad.WeightDecay(0.2, weight_decouple=False)}, (0.2, False, False)),
        ({"weight_decay": amsgrad.WeightDecay(0.2, absolute=True)}, (0.2, True, True)),
        # no weight_decay key: the constructor's decay, with only the written keys changed
        ({}, (0.3, True, False)),
        ({"decoupled_weight_decay": False}, (0.3, False, False)),
    ],
)
def test_weight_decay_in_a_group_dict(entry, expected):
    optimizer = amsgrad.AMSGrad([{"params": make_params(shapes=[(3,)])},
                                 {"params": make_params(seed=1, shapes=[(3,)]), **entry}],
                                weight_decay=amsgrad.WeightDecay(0.3))
    group = optimizer.param_groups[1]
    assert (group["weight_decay"], group["decoupled_weight_decay"], group["absolute_weight_decay"]) == expected
    assert optimizer.param_groups[0]["decoupled_weight_decay"] is True


def test_no_weight_decay_has_torchs_default_mode():
    for optimizer in (amsgrad.AMSGrad(make_params()), amsgrad.Adam(make_params(), weight_decay=None)):
        group = optimizer.param_groups[0]
        assert (group["weight_decay"], group["decoupled_weight_decay"]) == (0.0, False)
    # so a group that only names λ gets coupled L2, as under torch.optim.Adam
    optimizer = amsgrad.Adam([{"params": make_params()}, {"params": make_params(seed=1), "weight_decay": 0.1}])
    assert optimizer.param_groups[1]["decoupled_weight_decay"] is False


def test_a_weight_decay_object_and_a_disagreeing_mode_key_are_refused():
    with pytest.raises(ValueError, match=r"param group 0: Invalid decoupled_weight_decay: False beside weight_decay="
                                         r"WeightDecay\(weight_decay=0\.1, weight_decouple=True"):
        amsgrad.AMSGrad([{"params": make_params(), "weight_decay": amsgrad.WeightDecay(0.1),
                          "decoupled_weight_decay": False}])


def test_caller_defaults_are_not_mutated():
    defaults = {"custom": 1}
    amsgrad.AMSGrad(make_params(), defaults=defaults)
    amsgrad.Adam(make_params(), defaults=defaults)
    assert defaults == {"custom": 1}


def test_step_and_state_dict_hooks_of_torch_optimizer_run():
    params = make_params()
    optimizer = amsgrad.AMSGrad(params)
    calls = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    optimizer.register_state_dict_post_hook(lambda opt, sd: calls.append("state_dict") or sd)
    optimizer.register_load_state_dict_pre_hook(lambda opt, sd: calls.append("load") or sd)
    run_steps(optimizer, params, range(1))
    optimizer.load_state_dict(optimizer.state_dict())
    assert calls == ["pre", "post", "state_dict", "load"]


def test_zero_grad_clears_gradients():
    params = make_params()
    optimizer = amsgrad.AMSGrad(params)
    run_steps(optimizer, params, range(1))
    optimizer.zero_grad()
    assert all(p.grad is None for p in params)


def test_a_subclass_that_overrides_a_hook_keeps_working():
    class WarmupAMSGrad(amsgrad.AMSGrad):
        """α_t = α·min(1, t/10): a linear warm-up written as a get_lr hook."""

        def get_lr(self, state, group):
            return super().get_lr(state, group) * min(1.0, float(state["step"]) / 10)

    params_sub, params_sched = make_params(), make_params()
    subclass = WarmupAMSGrad(params_sub, lr=0.05)
    plain = amsgrad.AMSGrad(params_sched, lr=0.05, foreach=False)  # the subclass runs readable too
    scheduler = torch.optim.lr_scheduler.LambdaLR(plain, lambda k: min(1.0, (k + 1) / 10))
    for step in range(15):
        for params, optimizer in ((params_sub, subclass), (params_sched, plain)):
            for param, grad in zip(params, gradients(params, step)):
                param.grad = grad
            optimizer.step()
        scheduler.step()
    assert_same_run(subclass, params_sub, plain, params_sched)


def test_optimizers_loaded_from_one_state_dict_share_no_state():
    params = make_params()
    source = amsgrad.AMSGrad(params)
    run_steps(source, params, range(3))
    saved = source.state_dict()
    copies = [clone_params(params), clone_params(params)]
    loaded = [amsgrad.AMSGrad(copy) for copy in copies]
    for optimizer in loaded:
        optimizer.load_state_dict(saved)
    run_steps(loaded[0], copies[0], range(3, 5))
    run_steps(loaded[1], copies[1], range(3, 5))
    run_steps(source, params, range(3, 5))  # the source, still live, goes on by itself too
    for optimizer, twin in zip([source, *loaded], [params, *copies]):
        assert [float(optimizer.state[p]["step"]) for p in twin] == [5.0] * len(twin)
        assert_same_run(optimizer, twin, loaded[0], copies[0])
