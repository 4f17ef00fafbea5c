"""Every fast path equals the readable path, over the whole configuration table.

The readable path (``foreach=False, fused=False``) is the reference. Each fast path runs the
same problem: mixed shapes and dtypes in one group, a zero-size parameter, a 0-d one, a
complex one, one that never has a gradient and one that has a gradient every other step (so
that the step counts differ inside the group). After 12 steps the parameters and every state
tensor must agree: bit for bit on the multi-tensor path, to rtol 1e-12 in float64 on the fused
kernels (which may fuse a multiply and an add, or fold ε differently).
"""

from __future__ import annotations

import io

import pytest
import torch

import amsgrad
from amsgrad import kernels
from amsgrad.kernels import native

from .configs import CONFIGS

STEPS = 12
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NATIVE = native.library() is not None
needs_native = pytest.mark.skipif(not NATIVE, reason=f"C kernel unavailable: {native.unavailable_reason()}")

# name -> (param-group settings, CPU fused backends to allow)
FAST_PATHS = {
    "foreach": (dict(foreach=True), kernels.CPU_FUSED_BACKENDS),
    "default": (dict(), kernels.CPU_FUSED_BACKENDS),
    "fused-native": (dict(fused=True), ("native",)),
    "fused-torch-kernel": (dict(fused=True), ("torch",)),
    "default-without-c": (dict(), ("torch",)),
    "capturable": (dict(capturable=True), kernels.CPU_FUSED_BACKENDS),
}
READABLE = dict(foreach=False, fused=False, capturable=False)


def make_problem(device: str = "cpu", seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    specs = [((3, 4), torch.float64), ((5,), torch.float64), ((), torch.float64), ((0,), torch.float64),
             ((2, 1, 3), torch.float64), ((4, 3), torch.complex128), ((6,), torch.float32),
             ((3,), torch.float64),  # never has a gradient
             ((2, 2), torch.float64)]  # has a gradient on even steps only
    return [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype).to(device)) for shape, dtype in specs]


def run(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], steps=range(STEPS), seed: int = 1) -> None:
    for step in steps:
        generator = torch.Generator().manual_seed(seed * 7919 + step)
        scale = 10.0 ** ((step % 5) - 2)
        for index, param in enumerate(params):
            if index == 7 or (index == 8 and step % 2):
                param.grad = None
                continue
            grad = scale * torch.randn(param.shape, generator=generator, dtype=param.dtype)
            param.grad = grad.to(param.device)
        optimizer.step()


def assert_close_runs(opt_a, params_a, opt_b, params_b, exact: bool) -> None:
    for index, (a, b) in enumerate(zip(params_a, params_b)):
        _assert_close(f"param {index}", a.detach(), b.detach(), exact)
        state_a, state_b = opt_a.state[a], opt_b.state[b]
        assert set(state_a) == set(state_b), f"param {index}: state keys {set(state_a)} vs {set(state_b)}"
        for key in state_a:
            _assert_close(f"param {index} {key}", state_a[key], state_b[key], exact or key == "step")


def _assert_close(name: str, a: torch.Tensor, b: torch.Tensor, exact: bool) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, name
    if exact:
        assert torch.equal(a, b), f"{name}: max |Δ| = {(a - b).abs().max()}"
        return
    # Relative to each element and to the tensor's largest one: an element that is the small
    # difference of large terms (m_t, say) keeps the rounding error of the large terms.
    rtol = 1e-5 if a.dtype in (torch.float32, torch.complex64) else 1e-12
    scale = b.abs().max().item() if b.numel() else 0.0
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale, equal_nan=True,
                               msg=lambda message: f"{name}: {message}")


def _fused_possible(config, backends, device) -> bool:
    """Whether some fused kernel can run ``config`` (the others are error cases, tested below): a float64
    state widens make_problem's float32 tensor, which no fused kernel takes (tests/quantization)."""
    settings = config.settings
    if settings.get("state_precision") == torch.float64:
        return False
    if settings.get("beta1_decay", 1.0) != 1.0 or "beta2_schedule" in settings:
        return False  # β1 or β2 changing with t: no fused kernel
    if settings.get("max_of") != "corrected":
        return True
    return device == "cpu" and "native" in backends


def _compatible(config, overrides) -> bool:
    """Whether the configuration accepts the path's settings (capturable=True refuses fused=True, say)."""
    try:
        config.make([torch.nn.Parameter(torch.zeros(1))], **overrides)
    except ValueError:
        return False
    return True


def _equality_cases():
    """Every configuration on every path that can run it (see test_impossible_fused_is_a_clear_error, and
    tests/optimizers/test_errors.py for the settings that refuse each other)."""
    for device in DEVICES:
        for path, (overrides, backends) in FAST_PATHS.items():
            marks = [needs_native] if path == "fused-native" else []
            for config in CONFIGS:
                if overrides.get("fused") and not _fused_possible(config, backends, device):
                    continue
                if not _compatible(config, overrides):
                    continue
                yield pytest.param(config, path, device, id=f"{config.name}-{path}-{device}", marks=marks)


@pytest.mark.parametrize("config, path, device", list(_equality_cases()))
def test_fast_path_equals_readable_path(config, path, device, monkeypatch):
    overrides, backends = FAST_PATHS[path]
    monkeypatch.setattr(kernels, "CPU_FUSED_BACKENDS", backends)

    reference_params, fast_params = make_problem(device), make_problem(device)
    reference = config.make(reference_params, **READABLE)
    fast = config.make(fast_params, **overrides)
    run(reference, reference_params)
    run(fast, fast_params)
    assert fast_params[7] not in fast.state  # no gradient, no state
    exact = path == "foreach" and device == "cpu"
    assert_close_runs(reference, reference_params, fast, fast_params, exact=exact)



def make_uniform_problem(device: str = "cpu") -> list[torch.nn.Parameter]:
    """One device, one dtype, all contiguous: the group the kinds are found for without a per-tensor loop."""
    generator = torch.Generator().manual_seed(2)
    shapes = [(3, 4), (5,), (), (0,), (2, 1, 3), (6,), (4,), (3,), (2, 2), (7,)]
    return [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64).to(device))
            for shape in shapes]


@pytest.mark.parametrize("path", ["default", "default-without-c"])
@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_a_uniform_group_equals_the_readable_path(config, path, monkeypatch):
    overrides, backends = FAST_PATHS[path]
    monkeypatch.setattr(kernels, "CPU_FUSED_BACKENDS", backends)
    reference_params, fast_params = make_uniform_problem(), make_uniform_problem()
    reference, fast = config.make(reference_params, **READABLE), config.make(fast_params, **overrides)
    assert len(reference_params) - 2 >= kernels._SHORTCUT_MIN_TENSORS  # parameters 7 and 8 miss gradients
    run(reference, reference_params)  # parameter 8 has a gradient every other step: two step values
    run(fast, fast_params)
    assert_close_runs(reference, reference_params, fast, fast_params, exact=False)


# Ways in which the fifth tensor of a uniform group can differ from the others: (params, grads, state) -> None.
ODD_ONE_OUT = {
    "none": lambda params, grads, state: None,
    "float64 step": lambda params, grads, state: state.update(step=state["step"].double()),
    "meta step": lambda params, grads, state: state.update(step=state["step"].to("meta")),
    "non-contiguous moment": lambda params, grads, state: state.update(exp_avg=torch.zeros(3, 2, dtype=torch.float64).t()),
    "float32 maximum": lambda params, grads, state: state.update(max_exp_avg_sq=state["max_exp_avg_sq"].float()),
    "float32 gradient": lambda params, grads, state: grads.__setitem__(4, grads[4].float()),
    "non-contiguous gradient": lambda params, grads, state: grads.__setitem__(4, torch.ones(3, 2, dtype=torch.float64).t()),
    "float32 parameter": lambda params, grads, state: setattr(params[4], "data", params[4].data.float()),
    "meta parameter": lambda params, grads, state: params.__setitem__(4, torch.nn.Parameter(params[4].to("meta"))),
}


@pytest.mark.parametrize("odd", list(ODD_ONE_OUT))
def test_kinds_of_a_group_are_those_of_its_tensors(odd):
    """The shortcut for a group of one kind finds exactly what classifying each tensor finds."""
    params = [torch.nn.Parameter(torch.randn(2, 3, dtype=torch.float64)) for _ in range(kernels._SHORTCUT_MIN_TENSORS)]
    optimizer = amsgrad.AMSGrad(params)
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer.step()
    grads = [param.grad for param in params]
    state = optimizer.state[params[4]]
    ODD_ONE_OUT[odd](params, grads, state)
    optimizer.state[params[4]] = state
    batch = kernels._Batch.gather(optimizer, optimizer.param_groups[0], params, grads, amsgrad=True)
    assert not batch.pending
    expected: dict = {}
    for index, tensors in enumerate(zip(batch.params, batch.grads, batch.exp_avgs, batch.exp_avg_sqs,
                                        batch.max_exp_avg_sqs, batch.steps)):
        expected.setdefault(kernels._kind(*tensors), []).append(index)
    assert {kind: list(indices) for kind, indices in batch.kinds().items()} == expected
    assert len(expected) == (1 if odd == "none" else 2)

@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_fused_kernels_take_non_contiguous_tensors_to_the_multi_tensor_path(config):
    def make():
        generator = torch.Generator().manual_seed(5)
        return [torch.nn.Parameter(torch.randn(4, 3, generator=generator, dtype=torch.float64).t()),
                torch.nn.Parameter(torch.randn(7, generator=generator, dtype=torch.float64))]

    reference_params, fast_params = make(), make()
    reference, fast = config.make(reference_params, **READABLE), config.make(fast_params)
    run(reference, reference_params, seed=3)
    run(fast, fast_params, seed=3)
    assert_close_runs(reference, reference_params, fast, fast_params, exact=False)


def test_half_precision_takes_torch_kernel_and_stays_close():
    params = [torch.nn.Parameter(torch.randn(64, dtype=torch.float32)) for _ in range(2)]
    halves = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in params]
    reference, fast = amsgrad.AMSGrad(params, lr=1e-2), amsgrad.AMSGrad(halves, lr=1e-2, fused=True)
    for step in range(5):
        for p, h in zip(params, halves):
            p.grad = torch.randn(64, generator=torch.Generator().manual_seed(step))
            h.grad = p.grad.to(torch.bfloat16)
        reference.step()
        fast.step()
    for p, h in zip(params, halves):
        torch.testing.assert_close(h.float(), p.detach(), rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------- choosing a path
@pytest.mark.parametrize(
    "fused, foreach, hooks, expected",
    [
        (None, None, (), "fused"),
        (True, None, (), "fused"),
        (False, None, (), "foreach"),
        (None, True, (), "foreach"),
        (False, True, (), "foreach"),
        (None, False, (), "readable"),
        (False, False, (), "readable"),
        (True, False, (), "fused"),
        (None, None, ("get_mv",), "readable"),
    ],
)
def test_implementation_choice(fused, foreach, hooks, expected):
    assert kernels.implementation({"fused": fused, "foreach": foreach}, hooks) == expected


@pytest.mark.parametrize(
    "group, compiling, expected",
    [
        ({"capturable": True}, False, "tensor-steps"),
        ({"capturable": True}, True, "tensor-steps"),
        ({"differentiable": True}, False, "readable"),
        ({"differentiable": True}, True, "readable"),
        ({}, True, "tensor-steps"),  # off the CPU (see the next test)
        ({"foreach": True}, True, "tensor-steps"),
        ({"fused": False}, True, "tensor-steps"),
        ({"fused": True}, True, "fused"),  # run outside the graph
        ({"foreach": False}, True, "readable"),  # run outside the graph
    ],
)
def test_implementation_choice_with_capturable_differentiable_and_compilation(group, compiling, expected):
    assert kernels.implementation(group, (), compiling=compiling) == expected


def test_under_compilation_a_default_cpu_group_keeps_the_fused_kernels_outside_the_graph():
    assert kernels.implementation({}, (), compiling=True, on_cpu=True) == "fused"
    assert kernels.implementation({"foreach": True}, (), compiling=True, on_cpu=True) == "tensor-steps"
    assert kernels.implementation({"capturable": True}, (), compiling=True, on_cpu=True) == "tensor-steps"


def test_fused_and_foreach_together_are_refused():
    with pytest.raises(ValueError, match=r"fused: True with foreach=True"):
        amsgrad.AMSGrad([torch.nn.Parameter(torch.zeros(2))], fused=True, foreach=True)
    optimizer = amsgrad.Adam([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match=r"param group 1: Invalid fused"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "fused": True, "foreach": True})


class DoubledMoment(amsgrad.AMSGrad):
    """A subclass with its own hook: it must run on the readable path."""

    calls = 0

    def get_mv(self, state, group, grad):
        DoubledMoment.calls += 1
        m, v = super().get_mv(state, group, grad)
        return m, 2 * v


class OnlyNewDefaults(amsgrad.AMSGrad):
    def __init__(self, params):
        super().__init__(params, lr=0.01)


def test_a_subclass_that_overrides_a_hook_runs_on_the_readable_path():
    params = make_problem()
    optimizer = DoubledMoment(params)
    DoubledMoment.calls = 0
    run(optimizer, params, range(2))
    assert DoubledMoment.calls > 0
    for key in ("fused", "foreach"):
        with pytest.raises(ValueError, match=rf"Invalid {key}: True for a subclass that overrides get_mv"):
            DoubledMoment(make_problem(), **{key: True})


def test_a_subclass_that_overrides_no_hook_keeps_the_fast_path(monkeypatch):
    monkeypatch.setattr(kernels, "CPU_FUSED_BACKENDS", ("torch",))
    params = make_problem()
    optimizer = OnlyNewDefaults(params)
    run(optimizer, params, range(1))
    assert kernels.READABLE not in optimizer.implementations()[0]
    assert DoubledMoment(make_problem()).implementations() == [{kernels.READABLE: len(params)}]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_impossible_fused_is_a_clear_error(monkeypatch, dtype):
    if dtype == torch.float64:
        monkeypatch.setattr(kernels, "CPU_FUSED_BACKENDS", ("torch",))  # as without a C compiler
    param = torch.nn.Parameter(torch.ones(3, dtype=dtype))
    before = param.detach().clone()
    optimizer = amsgrad.AMSGrad([param], max_of="corrected", fused=True)
    param.grad = torch.ones_like(param)
    with pytest.raises(RuntimeError, match=r"Invalid fused: True for a torch\.float\d+ parameter on cpu: .*max_of='corrected'"):
        optimizer.step()
    assert torch.equal(param.detach(), before) and param not in optimizer.state  # refused before any state exists
    optimizer.param_groups[0]["fused"] = None  # the automatic choice falls back instead
    optimizer.step()
    assert not torch.equal(param.detach(), before)


@pytest.mark.parametrize("make, what", [
    (lambda p: amsgrad.Adam(p, beta1_decay=0.9, fused=True), "beta1_decay=0.9"),
    (lambda p: amsgrad.AdamNC(p, fused=True), "AdamNC's beta2_schedule"),
    (lambda p: amsgrad.AdamX(p, beta1_decay=0.99, fused=True), "AdamX's rescaled maximum"),
])
def test_no_fused_kernel_for_a_beta_that_changes_with_t(make, what):
    param = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    before = param.detach().clone()
    optimizer = make([param])
    param.grad = torch.ones_like(param)
    with pytest.raises(RuntimeError, match=rf"Invalid fused: True with {what}: no fused kernel"):
        optimizer.step()
    assert torch.equal(param.detach(), before) and param not in optimizer.state
    optimizer.param_groups[0]["fused"] = None  # the automatic choice is the multi-tensor path
    assert optimizer.implementations() == [{"multi-tensor": 1}]
    optimizer.step()
    assert not torch.equal(param.detach(), before)


def test_adamx_with_a_constant_beta1_runs_the_fused_kernels():
    params = [torch.nn.Parameter(torch.ones(3, dtype=torch.float64))]
    assert amsgrad.AdamX(params).implementations() == amsgrad.AMSGrad(params).implementations()


def test_the_default_path_needs_no_c_compiler(monkeypatch):
    monkeypatch.setattr(kernels, "CPU_FUSED_BACKENDS", ("torch",))
    for config in CONFIGS:
        reference_params, fast_params = make_problem(), make_problem()
        reference, fast = config.make(reference_params, **READABLE), config.make(fast_params)
        run(reference, reference_params, range(3))
        run(fast, fast_params, range(3))
        assert_close_runs(reference, reference_params, fast, fast_params, exact=False)


def test_the_kernel_cache_key_names_the_cpu_features(monkeypatch):
    # Two CPUs of one model name but different features must not share a -march=native build.
    info = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2\n\nprocessor\t: 1\n"
    opened = []
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/cpuinfo":
            opened.append(path)
            return io.StringIO(info)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    signature = native._cpu_signature()
    assert opened and "model name\t: Some CPU" in signature and "avx2" in signature
    info = info.replace("avx2", "avx512f")
    assert native._cpu_signature() != signature


@needs_native
def test_native_kernel_runs_in_parallel_chunks_like_one_pass():
    # Large enough to be split into chunks over threads, with a tensor boundary inside a chunk.
    sizes = [300_000, 5, 8192 * 3 + 1]
    make = lambda: [torch.nn.Parameter(torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64))
                    for n in sizes]  # noqa: E731
    reference_params, fast_params = make(), make()
    reference = amsgrad.AMSGrad(reference_params, max_of="corrected", **READABLE)
    fast = amsgrad.AMSGrad(fast_params, max_of="corrected", fused=True)
    run(reference, reference_params, range(4))
    run(fast, fast_params, range(4))
    assert_close_runs(reference, reference_params, fast, fast_params, exact=False)


def test_compiled_step_gives_the_eager_results():
    params_eager, params_compiled = make_problem()[:2], make_problem()[:2]
    eager = amsgrad.AMSGrad(params_eager, lr=0.05)
    compiled = amsgrad.AMSGrad(params_compiled, lr=0.05)
    torch._dynamo.reset()
    step = torch.compile(compiled.step, backend="aot_eager")
    for index in range(3):
        for a, b in zip(params_eager, params_compiled):
            a.grad = torch.full_like(a, float(index + 1))
            b.grad = a.grad.clone()
        eager.step()
        step()
    assert_close_runs(eager, params_eager, compiled, params_compiled, exact=False)


def test_the_step_benchmark_runs_on_a_tiny_layout(monkeypatch, capsys):
    # Keeps `make bench` from rotting; it asserts nothing about timings.
    from benchmarks import optimizer_step

    monkeypatch.setitem(optimizer_step.LAYOUTS, "tiny", ([10, 3], 1))
    optimizer_step.main(["--layouts", "tiny", "--rounds", "1", "--configs", "amsgrad", "amsgrad max corrected"])
    out = capsys.readouterr().out
    assert "tiny: median ms per step" in out and "amsgrad max corrected" in out


def test_the_compiled_step_benchmark_runs_on_a_tiny_layout(monkeypatch, capsys):
    # Keeps `make bench` from rotting; dynamo's eager backend instead of inductor keeps it quick.
    from benchmarks import compiled_step

    monkeypatch.setitem(compiled_step.LAYOUTS, "tiny", lambda: torch.nn.Linear(3, 2))
    compiled_step.main(["--layouts", "tiny", "--rounds", "2", "--repeat", "2", "--backend", "eager"])
    out = capsys.readouterr().out
    assert "ratio ours compiled / torch compiled" in out and "ours compiled multi-tensor" in out
    torch._dynamo.reset()


def test_state_of_another_dtype_takes_the_multi_tensor_path():
    # A float64 state (loaded from a float64 run, say) beside float32 parameters.
    def make():
        params = [torch.nn.Parameter(torch.randn(6, generator=torch.Generator().manual_seed(2)))]
        optimizer = amsgrad.AMSGrad(params, **READABLE)
        params[0].grad = torch.ones(6)
        optimizer.step()
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            optimizer.state[params[0]][key] = optimizer.state[params[0]][key].double()
        return params, optimizer

    (reference_params, reference), (fast_params, fast) = make(), make()
    fast.param_groups[0].update(foreach=None, fused=None)
    run(reference, reference_params, range(1, 4))
    run(fast, fast_params, range(1, 4))
    assert fast.state[fast_params[0]]["exp_avg"].dtype == torch.float64
    assert_close_runs(reference, reference_params, fast, fast_params, exact=False)


# ---------------------------------------------------------------- which implementation runs
def _group(**settings):
    return amsgrad.AMSGrad([torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64)) for _ in range(3)], **settings)


@pytest.mark.parametrize(
    "settings, backends, expected",
    [
        (dict(), ("torch",), {kernels.TORCH_FUSED: 3}),
        (dict(foreach=True), kernels.CPU_FUSED_BACKENDS, {kernels.MULTI_TENSOR: 3}),
        (dict(foreach=False), kernels.CPU_FUSED_BACKENDS, {kernels.READABLE: 3}),
        (dict(capturable=True), kernels.CPU_FUSED_BACKENDS, {kernels.MULTI_TENSOR: 3}),
        (dict(differentiable=True), kernels.CPU_FUSED_BACKENDS, {kernels.READABLE: 3}),
        (dict(max_of="corrected"), ("torch",), {kernels.MULTI_TENSOR: 3}),  # no kernel: multi-tensor
        (dict(max_of="corrected", fused=True), ("torch",), {kernels.REFUSED: 3}),  # a step raises
    ],
)
def test_implementations_tell_what_each_group_runs(settings, backends, expected, monkeypatch):
    monkeypatch.setattr(kernels, "CPU_FUSED_BACKENDS", backends)
    optimizer = _group(**settings)
    assert optimizer.implementations() == [expected]
    assert not optimizer.state  # a report allocates and stores nothing


@needs_native
def test_implementations_count_each_kind_of_a_mixed_group_and_appear_in_the_repr():
    params = make_problem()  # float64, complex128 and float32 tensors, one without a gradient
    params.append(torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64).t()))  # not contiguous
    optimizer = amsgrad.AMSGrad([{"params": params}, {"params": make_problem(seed=1)[:2], "foreach": False}])
    assert optimizer.implementations() == [{kernels.C_KERNEL: 9, kernels.MULTI_TENSOR: 1}, {kernels.READABLE: 2}]
    run(optimizer, params[:9] + [], range(2))
    assert optimizer.implementations()[0] == {kernels.C_KERNEL: 9, kernels.MULTI_TENSOR: 1}
    text = repr(optimizer)
    assert "Parameter Group 0\n    implementation: C kernel (9 tensors), multi-tensor (1 tensor)\n" in text
    assert "Parameter Group 1\n    implementation: readable (2 tensors)\n" in text
    assert optimizer.implementations(compiled=True) == optimizer.implementations()  # on the CPU: the same
    optimizer.param_groups[0]["foreach"] = True
    assert optimizer.implementations(compiled=True) == [{kernels.MULTI_TENSOR: 10}, {kernels.READABLE: 2}]


def test_the_low_memory_benchmark_runs_on_a_small_tensor(capsys):
    # Keeps `make bench` from rotting; it asserts nothing about timings.
    from benchmarks import low_memory

    low_memory.main(["--size", "8192", "--rounds", "1", "--only", "torch fused AMSGrad", "ours AMSGrad int8"])
    out = capsys.readouterr().out
    assert "ours AMSGrad int8" in out and "3.05" in out
    assert "memory bandwidth (x += y over 8,192 float32, 12 bytes per element):" in out
