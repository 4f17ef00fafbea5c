"""``state_precision`` on the optimizers: paths, the sticky maximum, checkpoints, torch interop, memory.

Every configuration of the table runs with bfloat16, int8 and int4 state on the fused, the
multi-tensor and the readable path, on a group that mixes tensors large enough to compress with
small, 0-d, zero-size and complex ones (which keep a float state), one without a gradient and
one with a gradient every other step. All paths agree bit for bit on the compressed tensors;
the small float32 ones take the float kernel, which follows torch's ops within float32 rounding
(``tests/optimizers/test_fast_path.py`` checks it in float64).
"""

from __future__ import annotations

import io
import math

import pytest
import torch

import amsgrad
from amsgrad.quantization.state import float_moments
from tests.optimizers.configs import AMSGRAD_CONFIGS, CONFIGS, accepting
from tests.optimizers.helpers import assert_same_run
from tests.reliability.small_model import train_small_mlp

PRECISIONS = [torch.bfloat16, "int8", "int4"]
PRECISION_IDS = ["bfloat16", "int8", "int4"]

#: The maximum's codes: one step up is a factor 1 + 2^-M for their M mantissa bits (int8: e5m3,
#: int4: e4m0, bfloat16: 7), and the smallest code's value, relative to its block's scale.
MAXIMUM_STEP_AND_SMALLEST = {"int8": (2.0**-3, 2.0**-32), "int4": (1.0, 2.0**-15), torch.bfloat16: (2.0**-7, 0.0)}


def rounded_up_limit(precision, values: torch.Tensor) -> torch.Tensor:
    """The most that a maximum rounded up from ``values`` may decode to: less than one code step
    above each value, or the smallest code's value (in a block whose scale is at most the largest)."""
    step, smallest = MAXIMUM_STEP_AND_SMALLEST[precision]
    return torch.clamp(values * (1 + step) * (1 + 2.0**-20), min=smallest * float(values.max()))
READABLE = dict(foreach=False, fused=False)


def make_group(dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    specs = [((70, 80), dtype), ((4096,), dtype), ((5000,), dtype), ((3, 4), dtype), ((), dtype), ((0,), dtype),
             ((6,), torch.complex64), ((4100,), dtype),  # never has a gradient
             ((4200,), dtype)]  # has a gradient on even steps only
    return [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype)
                               if not dt.is_complex else torch.randn(shape, generator=generator, dtype=dt))
            for shape, dt in specs]


COMPRESSED = [0, 1, 2, 7, 8]  # the tensors of make_group with at least 4096 elements
FLOAT = [3, 4, 5, 6]


def assert_same_paths(opt_a, params_a, opt_b, params_b):
    pick = lambda params, indices: [params[i] for i in indices]  # noqa: E731
    assert_same_run(opt_a, pick(params_a, COMPRESSED), opt_b, pick(params_b, COMPRESSED))
    assert_same_run(opt_a, pick(params_a, FLOAT), opt_b, pick(params_b, FLOAT), exact=False, atol=1e-5)


def clone(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def run(optimizer, params, steps, seed=1):
    for step in steps:
        generator = torch.Generator().manual_seed(seed * 7919 + step)
        scale = 10.0 ** ((step % 5) - 2)
        for index, param in enumerate(params):
            if index == 7 or (index == 8 and step % 2):
                param.grad = None
                continue
            grad = scale * torch.randn(param.shape, generator=generator,
                                       dtype=torch.complex64 if param.is_complex() else torch.float32)
            if grad.numel() > 10:
                grad.view(-1)[(step * 131) % grad.numel()] *= 300.0  # spikes move the block scales
            param.grad = grad.to(param.dtype)
        optimizer.step()


# int8 over the whole table (the rows that take a state_precision: capturable=True refuses one, see
# test_capturable_and_differentiable_with_a_state_precision); the other formats over a few rows
# (test_kernels.py crosses them all).
PATH_CASES = [(config, "int8") for config in accepting(state_precision="int8")] + [
    (config, precision) for config in CONFIGS if config.name in ("adam-l2", "amsgrad", "amsgrad-max-corrected-torch-form")
    for precision in (torch.bfloat16, "int4")]


@pytest.mark.parametrize("path", [dict(), dict(foreach=True)], ids=["default", "foreach"])
@pytest.mark.parametrize("config, precision", PATH_CASES, ids=[f"{c.name}-{str(p)[6:] if not isinstance(p, str) else p}"
                                                               for c, p in PATH_CASES])
def test_every_path_computes_the_same_numbers(config, precision, path):
    params, twins = make_group(), None
    twins = clone(params)
    fast = config.make(params, state_precision=precision, **path)
    readable = config.make(twins, state_precision=precision, **READABLE)
    run(fast, params, range(6))
    run(readable, twins, range(6))
    assert_same_paths(fast, params, readable, twins)
    big, small = fast.state[params[0]], fast.state[params[3]]
    if precision == torch.bfloat16:
        assert big["exp_avg"].dtype == torch.bfloat16 and "rounding_seed" in big
    else:
        assert big["exp_avg_codes"].dtype == torch.uint8 and "exp_avg" not in big
    assert small["exp_avg"].dtype == torch.float32  # below min_compressed_numel


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("precision", [None, torch.float32] + PRECISIONS, ids=["none", "float32"] + PRECISION_IDS)
def test_bfloat16_parameters_take_the_same_numbers_on_every_path(precision, stochastic):
    params = make_group(torch.bfloat16)
    twins, loop_twins = clone(params), clone(params)
    settings = dict(lr=0.05, state_precision=precision, stochastic_rounding=stochastic)
    fast = amsgrad.AMSGrad(params, **settings)
    foreach = amsgrad.AMSGrad(twins, foreach=True, **settings)
    readable = amsgrad.AMSGrad(loop_twins, **READABLE, **settings)
    for optimizer, group in ((fast, params), (foreach, twins), (readable, loop_twins)):
        run(optimizer, group, range(6))
    assert_same_run(fast, params, readable, loop_twins)
    assert_same_run(foreach, twins, readable, loop_twins)
    assert params[0].dtype == torch.bfloat16


def _decoded_maximum(optimizer, param):
    return float_moments(optimizer.state[param], param, torch.float32)["max_exp_avg_sq"]


@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
@pytest.mark.parametrize("config", [c for c in AMSGRAD_CONFIGS if c.accepts(state_precision="int8")], ids=repr)
def test_the_decoded_maximum_never_decreases_at_any_step(config, precision):
    param = torch.nn.Parameter(torch.randn(9000))
    optimizer = config.make([param], state_precision=precision)
    previous = torch.zeros(9000)
    generator = torch.Generator().manual_seed(0)
    for step in range(40):
        grad = torch.randn(9000, generator=generator) * 10.0 ** (-(step % 7))  # decaying magnitudes
        if step % 5 == 0:
            grad[torch.randint(0, 9000, (20,), generator=generator)] *= 1e4  # and spikes
        param.grad = grad
        optimizer.step()
        decoded = _decoded_maximum(optimizer, param)
        assert torch.all(decoded >= previous), f"step {step}: {(decoded < previous).sum()} elements decreased"
        previous = decoded


def _save_and_load(optimizer, params):
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("param_dtype, stochastic", [(torch.float32, False), (torch.bfloat16, True)],
                         ids=["float32", "bfloat16-stochastic"])
@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
def test_resume_from_a_checkpoint_is_bit_identical(precision, param_dtype, stochastic):
    params = make_group(param_dtype)
    optimizer = amsgrad.AMSGrad(params, lr=0.05, state_precision=precision, stochastic_rounding=stochastic)
    run(optimizer, params, range(5))
    checkpoint = _save_and_load(optimizer, params)
    resumed_params = [torch.nn.Parameter(p.clone()) for p in checkpoint["params"]]
    resumed = amsgrad.AMSGrad(resumed_params, lr=0.05)  # the settings come with the param groups
    resumed.load_state_dict(checkpoint["optimizer"])
    assert resumed.param_groups[0]["state_precision"] == precision
    assert_same_run(optimizer, params, resumed, resumed_params)
    run(optimizer, params, range(5, 12))
    run(resumed, resumed_params, range(5, 12))
    assert_same_run(optimizer, params, resumed, resumed_params)


@pytest.mark.parametrize("precision", PRECISIONS, ids=PRECISION_IDS)
def test_a_float32_state_loaded_into_a_compressed_optimizer_is_quantized(precision):
    params = [torch.nn.Parameter(torch.randn(8192)), torch.nn.Parameter(torch.randn(10))]
    theirs = torch.optim.Adam(params, lr=1e-3, amsgrad=True)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        theirs.step()
    ours = amsgrad.AMSGrad(params, lr=1e-3, state_precision=precision)
    with pytest.warns(UserWarning, match="use_optimized_update"):  # torch's ε form is kept
        ours.load_state_dict(theirs.state_dict())
    state = ours.state[params[0]]
    assert ("exp_avg" in state) == (precision == torch.bfloat16)
    decoded = float_moments(state, params[0], torch.float32)
    # v and v̂ codes are float codes (int8: e5m3, int4: e4m0): v to nearest within half a code step
    # of the block's scale, the maximum rounded up within one step of each value (rounded_up_limit)
    m_bound, v_bound = {"int8": (0.02, 2.0**-4), "int4": (0.2, 0.25)}.get(precision, (0.02, 0.02))
    step = MAXIMUM_STEP_AND_SMALLEST[precision][0]
    for key, bound in (("exp_avg", m_bound), ("exp_avg_sq", v_bound), ("max_exp_avg_sq", step)):
        original = theirs.state[params[0]][key]
        error = (decoded[key] - original).abs().max() / original.abs().max()
        assert error <= bound, (key, error)
    original = theirs.state[params[0]]["max_exp_avg_sq"]
    assert torch.all(decoded["max_exp_avg_sq"] <= rounded_up_limit(precision, original))
    assert torch.all(decoded["max_exp_avg_sq"] >= theirs.state[params[0]]["max_exp_avg_sq"])  # rounded up
    assert ours.state[params[1]]["exp_avg"].dtype == torch.float32  # small: full precision, as it was
    before = params[0].detach().clone()
    params[0].grad = torch.randn(8192)
    ours.step()
    assert not torch.equal(before, params[0])
    # Our own float32 checkpoint too, and from a compressed one back into float32.
    plain = amsgrad.AMSGrad(params, lr=1e-3)
    with pytest.warns(UserWarning, match="use_optimized_update"):  # and travels with the checkpoint
        plain.load_state_dict(ours.state_dict())
    assert plain.param_groups[0]["state_precision"] == precision  # the checkpoint's setting wins
    plain.param_groups[0]["state_precision"] = None
    params[0].grad = torch.randn(8192)
    plain.step()  # the state follows the group's new setting
    assert plain.state[params[0]]["exp_avg"].dtype == torch.float32


@pytest.mark.parametrize("precision", [None] + PRECISIONS, ids=["none"] + PRECISION_IDS)
@pytest.mark.parametrize("torch_class, decay", [(torch.optim.Adam, None), (torch.optim.AdamW, amsgrad.WeightDecay(0.01))],
                         ids=["Adam", "AdamW"])
def test_torch_state_dict_loads_into_torch_and_continues(precision, torch_class, decay):
    params = [torch.nn.Parameter(torch.randn(8192)), torch.nn.Parameter(torch.randn(3, 4))]
    ours = amsgrad.AMSGrad(params, lr=1e-3, eps=1e-8, optimized_update=False, weight_decay=decay,
                           state_precision=precision)
    reference = amsgrad.AMSGrad(clone(params), lr=1e-3, eps=1e-8, optimized_update=False, weight_decay=decay)
    exported = None
    for step in range(4):
        for p in params:
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
        ours.step()
    exported = ours.torch_state_dict()
    twins = clone(params)
    theirs = torch_class(twins, lr=1e-3, amsgrad=True)
    theirs.load_state_dict(exported)
    for mine, their in zip(params, twins):
        expected = float_moments(ours.state[mine], mine)
        for key, value in expected.items():
            assert torch.equal(theirs.state[their][key], value)
        assert float(theirs.state[their]["step"]) == 4
    # One step more on each side: torch continues from our state with the same update (up to the
    # rounding of storing the new state in our precision).
    for mine, their in zip(params, twins):
        g = torch.randn(mine.shape, generator=torch.Generator().manual_seed(99))
        mine.grad, their.grad = g, g.clone()
    ours.step()
    theirs.step()
    for mine, their in zip(params, twins):
        torch.testing.assert_close(their.detach(), mine.detach(), rtol=0, atol=1e-6)
    assert exported["param_groups"][0]["decoupled_weight_decay"] == ours.param_groups[0]["decoupled_weight_decay"]
    del reference


@pytest.mark.parametrize("precision, limit", [(torch.bfloat16, 6.1), ("int8", 3.1), ("int4", 1.6)],
                         ids=PRECISION_IDS)
def test_state_bytes_per_parameter_on_a_4m_tensor(precision, limit):
    param = torch.nn.Parameter(torch.zeros(4 * 1024 * 1024))
    optimizer = amsgrad.AMSGrad([param], state_precision=precision)
    param.grad = torch.ones_like(param)
    optimizer.step()
    state_bytes = sum(value.numel() * value.element_size() for value in optimizer.state[param].values()
                      if isinstance(value, torch.Tensor))
    per_parameter = state_bytes / param.numel()
    assert per_parameter <= limit, per_parameter
    float32 = amsgrad.AMSGrad([param])
    float32.step()
    assert sum(v.numel() * v.element_size() for v in float32.state[param].values()) / param.numel() >= 12


def test_small_tensors_keep_float32_state_by_a_per_group_threshold():
    big, small = torch.nn.Parameter(torch.randn(5000)), torch.nn.Parameter(torch.randn(100))
    optimizer = amsgrad.AMSGrad([{"params": [big], "min_compressed_numel": 10_000}, {"params": [small]}],
                                state_precision="int8", min_compressed_numel=0)
    for p in (big, small):
        p.grad = torch.randn_like(p)
    optimizer.step()
    assert optimizer.state[big]["exp_avg"].dtype == torch.float32
    assert optimizer.state[small]["exp_avg_codes"].dtype == torch.uint8


def test_stochastic_rounding_lets_bfloat16_parameters_train_like_float32():
    reference, _, _ = train_small_mlp(torch.float32)
    nearest, _, _ = train_small_mlp(torch.bfloat16)
    stochastic, _, _ = train_small_mlp(torch.bfloat16, stochastic_rounding=True)
    assert nearest[-1] > 1.5 * reference[-1]  # the stall of rounding θ to nearest
    assert stochastic[-1] < 1.25 * reference[-1]
    assert all(math.isfinite(loss) for loss in stochastic)
    again, _, _ = train_small_mlp(torch.bfloat16, stochastic_rounding=True)
    assert again == stochastic  # seeded: the same run twice


class ConstantLR(amsgrad.AMSGrad):
    """A subclass that overrides a hook: it runs on the readable path, its hooks on decoded moments."""

    def get_lr(self, state, group):
        return 1e-3


def test_a_subclass_with_hooks_runs_them_on_the_decoded_state():
    params = [torch.nn.Parameter(torch.randn(8192))]
    twins = clone(params)
    custom = ConstantLR(params, lr=123.0, state_precision="int8")
    builtin = amsgrad.AMSGrad(twins, lr=1e-3, state_precision="int8")
    run(custom, params, range(5))
    run(builtin, twins, range(5))
    assert "exp_avg_codes" in custom.state[params[0]]
    # The hooks use torch's fused ops, the built-in step the reference's: a few codes apart at most.
    torch.testing.assert_close(params[0].detach(), twins[0].detach(), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="Invalid fused: True for a subclass that overrides get_lr"):
        ConstantLR(params, state_precision="int8", fused=True)


def test_fused_true_refuses_what_the_kernel_cannot_take_before_anything_changes():
    param = torch.nn.Parameter(torch.randn(100, 100).t())  # not contiguous
    optimizer = amsgrad.AMSGrad([param], state_precision="int8", fused=True)
    param.grad = torch.randn(100, 100).t()
    with pytest.raises(RuntimeError, match=r"Invalid fused: True for a torch.float32 parameter on cpu with int8 state"):
        optimizer.step()
    assert not optimizer.state[param]
    amsgrad.AMSGrad([param], state_precision="int8").step()  # the default falls back to the reference step


def test_dtensor_parameters_with_compressed_state_are_refused():
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        param = torch.nn.Parameter(distribute_tensor(torch.randn(8192), mesh))
        param.grad = distribute_tensor(torch.randn(8192), mesh)
        plain = torch.nn.Parameter(torch.randn(5000))
        for path in (dict(), dict(foreach=False)):
            # refused before anything changes, in any group, on every path (the readable one creates states late)
            optimizer = amsgrad.AMSGrad([{"params": [plain], "state_precision": None}, {"params": [param]}],
                                        state_precision="int8", **path)
            plain.grad = torch.randn(5000)
            before = plain.detach().clone()
            with pytest.raises(ValueError, match=r"Invalid state_precision: 'int8' for a DTensor parameter \(FSDP2"):
                optimizer.step()
            assert torch.equal(plain.detach(), before) and not optimizer.state[plain] and not optimizer.state[param]
        amsgrad.AMSGrad([param], state_precision=torch.float32).step()  # a float state works on the shards

        # ... and so is a compressed checkpoint loaded for a DTensor parameter
        source_param = torch.nn.Parameter(torch.randn(8192))
        source = amsgrad.AMSGrad([source_param], state_precision="int8")
        source_param.grad = torch.randn(8192)
        source.step()
        target = amsgrad.AMSGrad([param])
        with pytest.raises(ValueError, match=r"Invalid state_precision: 'int8' for a DTensor parameter"):
            target.load_state_dict(source.state_dict())
        assert not target.state and target.param_groups[0]["state_precision"] is None
    finally:
        dist.destroy_process_group()
