"""The compressed C kernel computes exactly the reference compressed step, bit for bit.

Every configuration of the optimizer table with a constant β1 and β2 (decay modes, raw or
corrected maximum, both update forms, no bias correction, maximize, Adam, AdamX with λ = 1), every storage the kernel has (bfloat16 with
stochastic rounding, int8, int4 for float32 parameters; and float32, bfloat16-to-nearest and
the same three for bfloat16 parameters, with θ to nearest or stochastic), over sizes that end
in a partial block, span several chunks, and (once) use both threads.
"""

from __future__ import annotations

import copy
import os
import platform
import subprocess
import sys

import pytest
import torch

from amsgrad.kernels import native
from amsgrad.kernels.compressed import fused_compressed_step, native_layout, reference_compressed_step
from amsgrad.kernels.settings import StepSettings
from amsgrad.quantization.formats import BLOCK_FORMATS
from amsgrad.quantization.state import Storage, init_storage
from tests.optimizers.configs import CONFIGS, amsgrad_probe_param

LIB = native.library()
pytestmark = pytest.mark.skipif(LIB is None, reason=f"C kernel unavailable: {native.unavailable_reason()}")

STORAGES = {
    "bfloat16": Storage("bfloat16", torch.bfloat16),
    "int8": Storage("block", block_format=BLOCK_FORMATS["int8"]),
    "int4": Storage("block", block_format=BLOCK_FORMATS["int4"]),
    "float32": Storage("float", torch.float32),
    "bfloat16-nearest": Storage("float", torch.bfloat16),
}
CASES = [(torch.float32, name, False) for name in ("bfloat16", "int8", "int4")] + [
    (torch.bfloat16, name, stochastic) for name in STORAGES for stochastic in (False, True)]


def _problem(dtype, storage, sizes, seed=0, step_dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=generator).to(dtype) for n in sizes]
    states = []
    for index, param in enumerate(params):
        state = {"step": torch.tensor(0.0, dtype=step_dtype), "rounding_seed": torch.tensor(1000 + index)}
        init_storage(state, storage, param)
        states.append(state)
    return params, states


def _gradients(params, step, seed=1):
    generator = torch.Generator().manual_seed(seed * 7919 + step)
    scale = 10.0 ** ((step % 5) - 2)
    grads = []
    for param in params:
        g = torch.randn(param.shape, generator=generator) * scale
        g[step * 37 % param.numel()] *= 1e4  # a spike: a block's scale jumps
        if step == 2:
            g[: param.numel() // 3] = 0.0  # a stretch of zero gradients
        grads.append(g.to(param.dtype))
    return grads


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t.view(torch.int32) if t.dtype == torch.float32 else t


def _same_bits(a: torch.Tensor, b: torch.Tensor, any_nan: bool) -> bool:
    """Bit for bit; with ``any_nan``, a NaN matches any NaN (torch ops leave a NaN's sign and
    payload undefined, and float state stores them as they come)."""
    if not any_nan or not a.is_floating_point():
        return torch.equal(_bits(a), _bits(b))
    both = torch.isnan(a) & torch.isnan(b)
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(_bits(a)[~both], _bits(b)[~both])


def _assert_identical(params_a, states_a, params_b, states_b, any_nan: bool = False, nan_bits_kept: bool = False):
    """``any_nan``: NaNs of float32 tensors, and of bfloat16 state kept as torch writes it
    (``nan_bits_kept``), match any NaN; bfloat16 written by the kernels' own rounding (θ, and
    the stochastically rounded state) stores the canonical NaN, bit for bit."""
    def loose(tensor, is_state):
        return any_nan and (tensor.dtype != torch.bfloat16 or (is_state and nan_bits_kept))

    for index, (a, b) in enumerate(zip(params_a, params_b)):
        assert _same_bits(a, b, loose(a, False)), f"param {index}: {(a.float() != b.float()).sum()} elements differ"
    for index, (sa, sb) in enumerate(zip(states_a, states_b)):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert _same_bits(sa[key], sb[key], loose(sa[key], True)), f"param {index} {key} differs"


def _settings(config) -> StepSettings:
    optimizer = config.make([amsgrad_probe_param()])
    group = optimizer.param_groups[0]
    return StepSettings.from_group(group, optimizer._max_of(group))


#: The rows the C kernel computes: a constant β1 and β2 (a decaying β1, AdamNC and AdamX's
#: rescaled maximum run the reference step only; tests/quantization/test_low_memory.py).
KERNEL_CONFIGS = [config for config in CONFIGS if _settings(config).plain]


def _run(config, dtype, storage_name, stochastic, sizes, steps=6, step_dtype=torch.float32, edit=None,
         any_nan=False, edit_states=None):
    """Both steps on the same problem, compared after every step; ``edit(step, grads)`` may change
    the gradients first, and ``edit_states(states)`` the initial states."""
    storage = STORAGES[storage_name]
    settings = _settings(config)
    params, states = _problem(dtype, storage, sizes, step_dtype=step_dtype)
    if edit_states is not None:
        edit_states(states)
    ref_params, ref_states = [p.clone() for p in params], copy.deepcopy(states)
    for step in range(steps):
        grads = _gradients(params, step)
        if edit is not None:
            edit(step, grads)
        layout = native_layout(storage, params[0], grads[0], states[0], stochastic)
        assert layout is not None
        fused_compressed_step(LIB, settings, storage, layout, params, grads, states)
        reference_compressed_step(settings, storage, ref_params, grads, ref_states, stochastic)
        _assert_identical(params, states, ref_params, ref_states, any_nan,
                          nan_bits_kept=storage_name == "bfloat16-nearest")
    return params, states


CASE_IDS = [f"{str(d)[6:]}-{n}{'-sr' if s else ''}" for d, n, s in CASES]


@pytest.mark.parametrize("dtype, storage_name, stochastic", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("config", KERNEL_CONFIGS, ids=repr)
def test_the_kernel_is_the_reference_bit_for_bit(config, dtype, storage_name, stochastic):
    # Full blocks of both sizes and a partial one; chunks and threads are the next test's. The
    # gradients grow tenfold for 5 steps, then start small again: the maximum's blocks keep
    # their scale on steps 6 to 8 (where no code needs to move up to its floor).
    _run(config, dtype, storage_name, stochastic, sizes=[2 * 256 + 77, 129], steps=8)


NONFINITE_CONFIGS = [c for c in KERNEL_CONFIGS if c.name in ("amsgrad", "amsgrad-max-corrected", "adam")]


@pytest.mark.parametrize("dtype, storage_name, stochastic", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("config", NONFINITE_CONFIGS, ids=repr)
def test_nan_and_inf_gradients_give_the_reference_bits(config, dtype, storage_name, stochastic):
    # A NaN of either sign, +inf and -inf in the gradients (nonfinite="propagate"): the codes and
    # scales they leave are the reference's bit for bit (v's and the maximum's encoders read |x|,
    # m's keeps a NaN's sign, which both steps propagate alike); the rest as _assert_identical says.
    def poison(step, grads):
        if step == 1:
            grads[0][5], grads[0][9], grads[1][7] = float("nan"), -float("nan"), float("inf")
        if step == 2:
            grads[0][300] = -float("inf")

    _run(config, dtype, storage_name, stochastic, sizes=[600, 300], steps=4, edit=poison, any_nan=True)


MAXIMUM_CONFIGS = [c for c in KERNEL_CONFIGS if c.name in ("amsgrad", "amsgrad-max-corrected")]


@pytest.mark.parametrize("dtype, storage_name, stochastic", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("config", MAXIMUM_CONFIGS, ids=repr)
def test_zero_tiny_and_nan_maxima_give_the_reference_bits(config, dtype, storage_name, stochastic):
    # The first 256 elements never get a gradient (their blocks' scales stay 0: the maximum's
    # codes are all set to the top), the next 256 get ones so small that v's scales fall below
    # TINY_SCALE, and the stored maximum alone holds a NaN (its block's scale, or one element of a
    # float state) where v holds none: a NaN maximum wins over v, as in torch.maximum.
    def quiet(step, grads):
        grads[0][:256] = 0.0
        grads[0][256:512] = 1e-17

    def nan_maximum(states):
        state = states[0]
        if "max_exp_avg_sq_scales" in state:
            state["max_exp_avg_sq_scales"][-1] = float("nan")
        else:
            state["max_exp_avg_sq"][700] = float("nan")

    _run(config, dtype, storage_name, stochastic, sizes=[768, 129], steps=3, edit=quiet, any_nan=True,
         edit_states=nan_maximum)


@pytest.mark.parametrize("storage_name", ["int8", "int4", "bfloat16"])
def test_many_chunks_on_every_thread_float64_steps(storage_name):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        config = next(c for c in CONFIGS if c.name == "amsgrad-decoupled")
        _run(config, torch.float32, storage_name, False, sizes=[300_001, 5000], steps=3, step_dtype=torch.float64)
    finally:
        torch.set_num_threads(threads)


def test_the_result_does_not_depend_on_the_thread_count():
    config = next(c for c in CONFIGS if c.name == "amsgrad")
    results = []
    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            results.append(_run(config, torch.bfloat16, "bfloat16", True, sizes=[300_000], steps=2))
        finally:
            torch.set_num_threads(previous)
    (params_a, states_a), (params_b, states_b) = results
    _assert_identical(params_a, states_a, params_b, states_b)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64")
                    or not {"avx2", "fma"} <= set(native._cpu_signature().split()),
                    reason="needs an x86 CPU with AVX2 and FMA")
@pytest.mark.skipif("AMSGRAD_NATIVE_FLAGS" in os.environ, reason="the build under test is already chosen by flags")
@pytest.mark.parametrize("flags", ["-mavx2 -mfma -fopenmp", "-march=native -fopenmp -DAMSGRAD_PLAIN_LOOPS"],
                         ids=["avx2", "plain-loops"])
def test_the_other_builds_are_the_reference_bit_for_bit(flags):
    # The build a machine without AVX-512 gets (its own intrinsics, 8 lanes, blends for masks), and
    # the plain C loops every block takes where neither vector step is built (elsewhere only the
    # partial blocks do): every test of this module, in a process whose kernel is built so.
    env = dict(os.environ, AMSGRAD_NATIVE_FLAGS=flags)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" in result.stdout  # this test, in the child
