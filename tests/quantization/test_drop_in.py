"""``state_precision`` with the drop-in features of ``tests/optimizers/test_drop_in.py``: which
implementation runs, refusals that change nothing (and states converted only once a step runs),
the load hooks, ``enable_amsgrad`` and ``use_optimized_update``, ``capturable``,
``differentiable``, ``torch.compile`` and ``torch_state_dict``.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import amsgrad
from amsgrad import kernels
from amsgrad.kernels import native
from amsgrad.optimizers.nonfinite import NonFiniteGradientError
from amsgrad.quantization.state import float_moments
from tests.optimizers.helpers import assert_same_run, clone_params, gradients, run_steps
from tests.optimizers.test_capturable_differentiable import NoHostReads
from tests.optimizers.test_refusals import assert_unchanged, snapshot, two_groups
from tests.quantization.test_low_memory import rounded_up_limit

PRECISIONS = [torch.bfloat16, "int8", "int4"]
PRECISION_IDS = ["bfloat16", "int8", "int4"]
needs_native = pytest.mark.skipif(native.library() is None, reason="C kernel unavailable")


def make_params(seed=0, dtype=torch.float32, shapes=((5000,), (70, 80), (3, 4))):
    """Two tensors large enough to compress and a small one, which keeps a float state."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for shape in shapes]


def decoded(optimizer, param, key):
    return float_moments(optimizer.state[param], param, torch.float32)[key]


def _load_quietly(optimizer, state_dict):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer.load_state_dict(state_dict)
    return [str(warning.message) for warning in caught]


# ------------------------------------------------------------ which implementation runs
@pytest.mark.parametrize(
    "settings, backends, expected",
    [
        (dict(), kernels.CPU_FUSED_BACKENDS, {kernels.COMPRESSED_C_KERNEL: 2, kernels.C_KERNEL: 1}),
        (dict(foreach=True), kernels.CPU_FUSED_BACKENDS, {kernels.COMPRESSED_REFERENCE: 2, kernels.MULTI_TENSOR: 1}),
        (dict(fused=False), kernels.CPU_FUSED_BACKENDS, {kernels.COMPRESSED_REFERENCE: 2, kernels.MULTI_TENSOR: 1}),
        (dict(foreach=False), kernels.CPU_FUSED_BACKENDS, {kernels.READABLE: 3}),
        (dict(), ("torch",), {kernels.COMPRESSED_REFERENCE: 2, kernels.TORCH_FUSED: 1}),  # no C kernel
        (dict(fused=True), ("torch",), {kernels.REFUSED: 2, kernels.TORCH_FUSED: 1}),  # a step raises
    ],
)
def test_implementations_name_the_compressed_step(settings, backends, expected, monkeypatch):
    if kernels.C_KERNEL in expected or kernels.COMPRESSED_C_KERNEL in expected:
        if native.library() is None:
            pytest.skip("C kernel unavailable")
    monkeypatch.setattr(kernels, "CPU_FUSED_BACKENDS", backends)
    params = make_params()
    optimizer = amsgrad.AMSGrad(params, state_precision="int8", **settings)
    assert optimizer.implementations() == [expected]
    assert not optimizer.state  # a report allocates and stores nothing
    if kernels.REFUSED in expected:
        return
    run_steps(optimizer, params, range(2))
    assert optimizer.implementations() == [expected]
    assert "exp_avg_codes" in optimizer.state[params[0]] and "exp_avg" in optimizer.state[params[2]]


@needs_native
def test_the_repr_and_a_compiled_report_show_the_compressed_step():
    optimizer = amsgrad.AMSGrad([{"params": make_params()}, {"params": make_params(seed=1), "foreach": True},
                                 {"params": make_params(seed=2, dtype=torch.bfloat16), "state_precision": None}],
                                state_precision="int8")
    assert "Parameter Group 0\n    implementation: compressed C kernel (2 tensors), C kernel (1 tensor)\n" \
        in repr(optimizer)
    # bfloat16 parameters take the compressed kernel whatever their state: computed in float32, rounded once
    assert optimizer.implementations()[2] == {kernels.COMPRESSED_C_KERNEL: 3}
    # compiled: the compressed step (and the C kernel) run before the graph, the multi-tensor rest in it
    assert optimizer.implementations(compiled=True) == optimizer.implementations()


# ------------------------------------------------------------ schedules: β1 decay, AdamNC, AdamX
SCHEDULED = {
    "adam-beta1-decay": (amsgrad.Adam, dict(beta1_decay=0.8), dict()),
    "amsgrad-corrected-beta1-decay": (amsgrad.AMSGrad, dict(beta1_decay=0.8, max_of="corrected"), dict()),
    "adamnc": (amsgrad.AdamNC, dict(beta1_decay=0.9), dict(beta2_schedule=lambda t: 1.0 - 0.5 / t)),
    "adamx": (amsgrad.AdamX, dict(beta1_decay=0.7), dict()),
}


@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
@pytest.mark.parametrize("name", list(SCHEDULED))
def test_a_schedule_runs_the_reference_compressed_step_and_follows_the_float_state(name, precision):
    # The C kernel has constant betas: a group whose β1 or β2 changes with t takes the reference step
    # (every path alike: tests/quantization/test_low_memory.py), which follows the float32 state's
    # run within the format's rounding, and not the run without the schedule.
    cls, schedule, other = SCHEDULED[name]
    make = lambda params, **extra: cls(params, lr=0.01, **schedule, **other, **extra)  # noqa: E731
    params, float_params, plain_params = make_params(), make_params(), make_params()
    optimizer = make(params, state_precision=precision)
    assert optimizer.implementations() == [{kernels.COMPRESSED_REFERENCE: 2, kernels.MULTI_TENSOR: 1}]
    float_run = make(float_params)
    plain = cls(plain_params, lr=0.01, **{**schedule, "beta1_decay": 1.0}, **other, state_precision=precision)
    for opt, group in ((optimizer, params), (float_run, float_params), (plain, plain_params)):
        run_steps(opt, group, range(12))
    assert optimizer.implementations() == [{kernels.COMPRESSED_REFERENCE: 2, kernels.MULTI_TENSOR: 1}]
    for index in (0, 1):  # relative to how far the float32 run moved θ (L2): 0.001, 0.01, 0.1 measured
        start = make_params()[index].detach()
        moved = (float_params[index] - start).norm()
        error = (params[index] - float_params[index]).norm()
        without = (plain_params[index] - float_params[index]).norm()  # 0.4-0.7 measured
        assert error < {torch.bfloat16: 0.005, "int8": 0.03, "int4": 0.25}[precision] * moved, (error, moved)
        assert error < 0.4 * without, (error, without)
    refused = make(make_params(), state_precision=precision, fused=True)
    with pytest.raises(RuntimeError, match="no fused kernel computes a step whose beta1 or beta2 changes"):
        run_steps(refused, refused.param_groups[0]["params"], range(1))
    assert not refused.state


# ------------------------------------------------------------ refusals change nothing
def compressed_groups(**second):
    """Two int8 groups (every tensor compressed), as :func:`two_groups` makes them."""
    return two_groups(dict(state_precision="int8", min_compressed_numel=0), torch.float32, **second)


REFUSALS = {
    "fused=True without the C kernel": (dict(fused=True), RuntimeError,
                                        r"Invalid fused: True for a torch.float32 parameter on cpu with int8 state: "
                                        r"the C kernel is unavailable"),
    "fused=True with a decaying beta1": (dict(fused=True, beta1_decay=0.9), RuntimeError,
                                         r"Invalid fused: True with beta1_decay=0.9: no fused kernel .* fall back to "
                                         r"the reference compressed step"),
    "nonfinite raise": (dict(nonfinite="raise"), NonFiniteGradientError, r"param group 1, parameter 0"),
    "precision changed, then nonfinite raise": (dict(state_precision=torch.bfloat16, nonfinite="raise"),
                                                NonFiniteGradientError, r"param group 1, parameter 0"),
    "precision dropped, then nonfinite raise": (dict(state_precision=None, nonfinite="raise"),
                                                NonFiniteGradientError, r"param group 1, parameter 0"),
    "an invalid precision set by hand": (dict(state_precision="int3"), ValueError,
                                         r"param group 1: Invalid state_precision: 'int3'"),
    "capturable set by hand": (dict(capturable=True), ValueError,
                               r"param group 1: Invalid state_precision: 'int8' with capturable=True"),
    "differentiable set by hand": (dict(differentiable=True), ValueError,
                                   r"param group 1: Invalid state_precision: 'int8' with differentiable=True"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_step_changes_nothing_in_any_compressed_group(case, monkeypatch):
    settings, error, pattern = REFUSALS[case]
    if case.startswith("fused=True"):
        monkeypatch.setattr(kernels, "CPU_FUSED_BACKENDS", ("torch",))
    optimizer, params = compressed_groups(**settings)
    if "nonfinite" in case:
        params[3].grad = params[3].grad.clone()
        params[3].grad.view(-1)[0] = float("nan")
    before = snapshot(optimizer, params)
    with pytest.raises(error, match=pattern):
        optimizer.step()
    assert_unchanged(before, optimizer, params)  # the states of group 1 kept their int8 codes, too
    assert params[2] not in optimizer.state and params[-1] not in optimizer.state


def test_a_changed_precision_converts_every_state_of_the_group_once_a_step_runs():
    params = make_params()
    optimizer = amsgrad.AMSGrad(params, state_precision="int8", nonfinite="skip")
    run_steps(optimizer, params, range(2))
    codes = optimizer.state[params[0]]["exp_avg_codes"].clone()
    optimizer.param_groups[0]["state_precision"] = torch.bfloat16
    for param, grad in zip(params, gradients(params, 2)):
        param.grad = grad
    params[1].grad[0, 0] = float("inf")
    optimizer.step()  # skipped: nothing changes, the conversion included
    assert optimizer.skipped_steps == 1 and torch.equal(optimizer.state[params[0]]["exp_avg_codes"], codes)
    expected = float_moments(optimizer.state[params[0]], params[0], torch.float32)
    params[0].grad, params[1].grad = gradients(params, 3)[0], None  # one parameter without a gradient
    optimizer.step()
    assert optimizer.state[params[0]]["exp_avg"].dtype == torch.bfloat16
    assert optimizer.state[params[1]]["exp_avg"].dtype == torch.bfloat16  # converted though not stepped
    assert float(optimizer.state[params[1]]["step"]) == 2
    assert all("exp_avg_codes" not in optimizer.state[p] and "rounding_seed" in optimizer.state[p] for p in params[:2])
    assert torch.all(decoded(optimizer, params[0], "max_exp_avg_sq") >= expected["max_exp_avg_sq"])


# ------------------------------------------------------------ loading
def test_load_hooks_run_in_order_and_the_post_hooks_see_the_quantized_state():
    params = make_params()
    theirs = torch.optim.Adam(params, lr=1e-3, amsgrad=True)
    run_steps(theirs, params, range(3))
    saved = theirs.state_dict()
    target = amsgrad.AMSGrad(clone_params(params), lr=1e-3, eps=1e-8, optimized_update=False)
    calls, seen = [], {}

    def pre_hook(optimizer, state_dict):
        calls.append("pre")
        return {**state_dict, "param_groups": [{**group, "state_precision": "int8"}
                                               for group in state_dict["param_groups"]]}

    def post_hook(optimizer):
        calls.append("post")
        state = optimizer.state[optimizer.param_groups[0]["params"][0]]
        seen.update(keys=sorted(state), precision=optimizer.param_groups[0]["state_precision"])

    target.register_load_state_dict_pre_hook(pre_hook)
    target.register_load_state_dict_post_hook(post_hook)
    target.load_state_dict(saved)
    assert calls == ["pre", "post"] and seen["precision"] == "int8"  # the name became canonical, and quantized:
    assert seen["keys"] == ["exp_avg_codes", "exp_avg_scales", "exp_avg_sq_codes", "exp_avg_sq_scales",
                            "max_exp_avg_sq_codes", "max_exp_avg_sq_scales", "step"]
    param = target.param_groups[0]["params"][0]
    assert torch.all(decoded(target, param, "max_exp_avg_sq") >= theirs.state[params[0]]["max_exp_avg_sq"])
    assert target.state[target.param_groups[0]["params"][2]]["exp_avg"].dtype == torch.float32  # small: float


def test_a_loaded_state_whose_codes_fit_no_format_is_refused_before_anything_changes():
    params = make_params()
    source = amsgrad.AMSGrad(params, state_precision="int8")
    run_steps(source, params, range(2))
    saved = source.state_dict()
    saved["state"][0]["exp_avg_sq_codes"] = saved["state"][0]["exp_avg_sq_codes"][:-1]
    target_params = clone_params(params)
    target = amsgrad.AMSGrad(target_params, lr=0.3)
    run_steps(target, target_params, range(1))
    before = snapshot(target, target_params)
    with pytest.raises(ValueError, match=r"the saved state of parameter 0 \(shape \(5000,\)\): state exp_avg_sq_codes "
                                         r"has 4999 codes for 5000 elements: no known format"):
        target.load_state_dict(saved)
    assert_unchanged(before, target, target_params)


# ------------------------------------------------------------ enable_amsgrad, use_optimized_update
@pytest.mark.parametrize("max_of", ["raw", "corrected"])
@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
def test_enable_amsgrad_encodes_the_maximum_from_v_rounded_up(precision, max_of):
    params = make_params()
    optimizer = amsgrad.AMSGrad(params, amsgrad=False, max_of=max_of, betas=(0.9, 0.99), state_precision=precision)
    run_steps(optimizer, params, range(3))
    assert all("max_exp_avg_sq" not in optimizer.state[p] and "max_exp_avg_sq_codes" not in optimizer.state[p]
               for p in params)
    assert optimizer.enable_amsgrad() == [0] and optimizer.enable_amsgrad() == []
    correction = 1 - 0.99**3 if max_of == "corrected" else 1.0
    for param in params:
        state = optimizer.state[param]
        v, maximum = decoded(optimizer, param, "exp_avg_sq") / correction, decoded(optimizer, param, "max_exp_avg_sq")
        # in v's own format: codes for the block formats, bfloat16 for bfloat16, float32 for the small tensor
        if param.numel() < 4096 or precision == torch.bfloat16:
            assert state["max_exp_avg_sq"].dtype == state["exp_avg_sq"].dtype
        else:
            assert state["max_exp_avg_sq_codes"].dtype == torch.uint8 and "max_exp_avg_sq" not in state
        assert torch.all(maximum >= v)  # rounded up: never below the v it starts from
        if max_of == "raw":
            assert torch.equal(maximum, v)  # v is on the grid already: encoding it again gives it back
        else:
            assert torch.all(maximum <= rounded_up_limit(precision, v))  # by less than one code step


@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
def test_after_enable_amsgrad_every_path_continues_alike(precision):
    params = make_params()[:2]  # the compressed ones: every path computes them bit for bit alike
    adam = amsgrad.AMSGrad(params, amsgrad=False, state_precision=precision)
    run_steps(adam, params, range(3))
    adam.enable_amsgrad()
    runs = []
    for path in (dict(), dict(foreach=True), dict(foreach=False)):
        twins = clone_params(params)
        optimizer = amsgrad.AMSGrad(twins, **path)
        optimizer.load_state_dict(copy.deepcopy(adam.state_dict()))
        run_steps(optimizer, twins, range(3, 8))
        runs.append((optimizer, twins))
    for optimizer, twins in runs[1:]:
        assert_same_run(runs[0][0], runs[0][1], optimizer, twins)


def test_a_torch_adam_checkpoint_continues_as_compressed_amsgrad():
    params = make_params()
    theirs = torch.optim.Adam(params, lr=1e-3)
    run_steps(theirs, params, range(3))
    ours = amsgrad.AMSGrad(clone_params(params), lr=1e-3, state_precision="int8")
    messages = _load_quietly(ours, theirs.state_dict())
    assert any("enable_amsgrad" in m for m in messages) and any("use_optimized_update" in m for m in messages)
    assert ours.enable_amsgrad() == [0] and ours.use_optimized_update() == [0]
    mine = ours.param_groups[0]["params"]
    previous = [decoded(ours, p, "max_exp_avg_sq") for p in mine]
    assert all(torch.all(m >= decoded(ours, p, "exp_avg_sq")) for m, p in zip(previous, mine))
    run_steps(ours, mine, range(3, 6))
    for param, before in zip(mine, previous):
        assert torch.all(decoded(ours, param, "max_exp_avg_sq") >= before)


@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
def test_use_optimized_update_switches_compressed_groups_on_every_path(precision):
    params = make_params()[:2]
    theirs = torch.optim.Adam(params, lr=1e-3, amsgrad=True)
    run_steps(theirs, params, range(3))
    runs = []
    for path in (dict(), dict(foreach=True), dict(foreach=False)):
        twins = clone_params(params)
        ours = amsgrad.AMSGrad(twins, lr=1e-3, state_precision=precision, **path)
        _load_quietly(ours, theirs.state_dict())
        assert ours.use_optimized_update() == [0] and ours.param_groups[0]["eps"] == 1e-8
        run_steps(ours, twins, range(3, 8))
        runs.append((ours, twins))
    for optimizer, twins in runs[1:]:
        assert_same_run(runs[0][0], runs[0][1], optimizer, twins)


# ------------------------------------------------------------ capturable and differentiable
def test_capturable_refuses_a_state_precision_wherever_it_is_set():
    with pytest.raises(ValueError, match=r"Invalid state_precision: 'int8' with capturable=True: .* reads each step "
                                         r"count on the host; use state_precision=None"):
        amsgrad.AMSGrad(make_params(), capturable=True, state_precision="int8")
    optimizer = amsgrad.AMSGrad(make_params(), capturable=True)
    with pytest.raises(ValueError, match=r"param group 1: Invalid state_precision: torch.bfloat16 with capturable"):
        optimizer.add_param_group({"params": make_params(seed=1), "state_precision": "bfloat16"})
    # a loaded group that combines them is refused, naming the group, before anything changes
    saved = amsgrad.AMSGrad(make_params(), state_precision="int4").state_dict()
    saved["param_groups"][0]["capturable"] = True
    with pytest.raises(ValueError, match=r"param group 0 of the loaded state dict: Invalid state_precision: 'int4' "
                                         r"with capturable=True"):
        optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["capturable"] is True and len(optimizer.param_groups) == 1


def test_capturable_steps_bfloat16_parameters_in_bfloat16_without_host_reads():
    params = make_params(dtype=torch.bfloat16)
    optimizer = amsgrad.AMSGrad(params, lr=torch.tensor(1e-2), capturable=True)
    assert optimizer.implementations() == [{kernels.MULTI_TENSOR: 3}]  # not the compressed step, which reads t
    counter = NoHostReads()
    with counter:
        run_steps(optimizer, params, range(3))
    assert counter.reads == []
    for param in params:
        state = optimizer.state[param]
        assert state["exp_avg"].dtype == torch.bfloat16 and float(state["step"]) == 3
    # as the differentiable (readable) step, which also steps them in bfloat16, as torch.optim does
    twins = [p.detach().clone() for p in make_params(dtype=torch.bfloat16)]  # updated in place under autograd
    readable = amsgrad.AMSGrad(twins, lr=1e-2, differentiable=True)
    run_steps(readable, twins, range(3))
    for a, b in zip(params, twins):
        torch.testing.assert_close(a.detach().float(), b.float(), rtol=2e-2, atol=1e-2)


def test_differentiable_honours_a_wider_float_state():
    weight = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    param = weight * 2  # not a leaf: what a meta-learning loop optimizes
    optimizer = amsgrad.AMSGrad([param], lr=0.1, weight_decay=0.1, differentiable=True, state_precision=torch.float64)
    assert optimizer.implementations() == [{kernels.READABLE: 1}]
    for step in range(3):
        param.grad = gradients([param], step)[0].detach()
        optimizer.step()
    assert param.dtype == torch.float32 and optimizer.state[param]["exp_avg"].dtype == torch.float64
    assert optimizer.state[param]["exp_avg"].grad_fn is not None
    (param * torch.linspace(-1, 1, 30).reshape(6, 5)).sum().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()

    # The same steps, differentiated in float64 throughout: the same gradient, to float32's rounding of θ.
    weight64 = weight.detach().double().requires_grad_()
    param64 = weight64 * 2
    reference = amsgrad.AMSGrad([param64], lr=0.1, weight_decay=0.1, differentiable=True)
    for step in range(3):
        param64.grad = gradients([param], step)[0].detach().double()
        reference.step()
    (param64 * torch.linspace(-1, 1, 30, dtype=torch.float64).reshape(6, 5)).sum().backward()
    torch.testing.assert_close(weight.grad.double(), weight64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(param.detach().double(), param64.detach(), rtol=1e-6, atol=1e-6)

    # and the numbers are those of the step that is not differentiable, in the same float64 state
    plain = torch.nn.Parameter(weight.detach() * 2)
    undifferentiated = amsgrad.AMSGrad([plain], lr=0.1, weight_decay=0.1, state_precision=torch.float64)
    for step in range(3):
        plain.grad = gradients([param], step)[0].detach()
        undifferentiated.step()
    torch.testing.assert_close(param.detach(), plain.detach(), rtol=1e-6, atol=1e-7)


def test_differentiable_steps_bfloat16_parameters_in_bfloat16_and_records_them():
    weight = torch.randn(8, dtype=torch.bfloat16, requires_grad=True)
    param = weight * 2
    optimizer = amsgrad.AMSGrad([param], lr=0.1, differentiable=True)
    assert optimizer.implementations() == [{kernels.READABLE: 1}]
    param.grad = torch.ones(8, dtype=torch.bfloat16)
    optimizer.step()
    assert optimizer.state[param]["exp_avg"].dtype == torch.bfloat16 and param.grad_fn is not None
    param.float().sum().backward()
    assert weight.grad is not None


# ------------------------------------------------------------ torch.compile
@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("path, graphs", [(dict(), 0), (dict(foreach=True), 1)], ids=["default", "foreach"])
def test_a_compiled_step_with_compressed_state_compiles_once_and_gives_the_eager_results(path, graphs, fresh_dynamo):
    params_eager = make_params()
    params_compiled = clone_params(params_eager)
    eager = amsgrad.AMSGrad(params_eager, lr=1e-2, state_precision="int8", **path)
    compiled = amsgrad.AMSGrad(params_compiled, lr=1e-2, state_precision="int8", **path)
    schedulers = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=5e-2, total_steps=100) for o in (eager, compiled)]
    step = torch.compile(compiled.step, backend="eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        for index in range(6):
            for a, b, grad in zip(params_eager, params_compiled, gradients(params_eager, index)):
                a.grad, b.grad = grad, grad.clone()
            eager.step()
            step()
            for scheduler in schedulers:
                scheduler.step()
    assert counters["stats"]["unique_graphs"] == graphs  # the small tensor's multi-tensor step, traced
    assert_same_run(eager, params_eager[:2], compiled, params_compiled[:2])  # the compressed step ran eagerly
    assert_same_run(eager, params_eager[2:], compiled, params_compiled[2:], exact=False, atol=1e-6)


# ------------------------------------------------------------ odd ones
def test_torch_state_dict_of_adam_has_no_maximum_even_from_an_amsgrad_checkpoint():
    params = make_params()
    source = amsgrad.AMSGrad(params, state_precision="int8")
    run_steps(source, params, range(2))
    adam = amsgrad.Adam(clone_params(params), state_precision="int8")
    assert any("Adam keeps no running maximum" in m for m in _load_quietly(adam, source.state_dict()))
    exported = adam.torch_state_dict()
    assert exported["param_groups"][0]["amsgrad"] is False
    assert all("max_exp_avg_sq" not in state for state in exported["state"].values())
    torch.optim.Adam(clone_params(params)).load_state_dict(exported)


@pytest.mark.parametrize("path", [dict(), dict(foreach=True)], ids=["default", "foreach"])
def test_complex_parameters_with_a_wider_state_take_the_compressed_step_as_their_real_view(path):
    def make():
        generator = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(5, 3, dtype=torch.complex64, generator=generator)),
                torch.nn.Parameter(torch.randn(4, generator=generator))]

    params, twins = make(), make()
    fast = amsgrad.AMSGrad(params, state_precision=torch.float64, **path)
    readable = amsgrad.AMSGrad(twins, state_precision=torch.float64, foreach=False)
    run_steps(fast, params, range(4))
    run_steps(readable, twins, range(4))
    assert_same_run(fast, params, readable, twins)
    assert fast.state[params[0]]["max_exp_avg_sq"].dtype == torch.complex128
