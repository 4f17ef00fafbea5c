"""Block-wise quantization, and the property AMSGrad needs: the stored maximum never decreases."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from amsgrad.quantization import blockwise
from amsgrad.quantization.formats import BLOCK_FORMATS, INT4, INT8

FORMATS = [INT8, INT4]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("numel", [1, 127, 128, 129, 256, 1000, 4099])
def test_round_trip_within_half_a_code_step(fmt, numel):
    generator = torch.Generator().manual_seed(numel)
    for key, signed in (("exp_avg", True), ("exp_avg_sq", False)):
        x = torch.randn(numel, generator=generator) * torch.logspace(-3, 0, numel)
        x = x if signed else x * x
        code_map = fmt.code_map(key)
        storage, scales = blockwise.quantize(x, code_map, fmt.block)
        assert storage.dtype == torch.uint8 and storage.numel() == blockwise.code_bytes(numel, fmt.bits)
        assert scales.numel() == blockwise.block_count(numel, fmt.block)
        back = blockwise.dequantize(storage, scales, code_map, fmt.block, numel)
        rows_max = torch.cat([x.abs(), x.new_zeros((-numel) % fmt.block)]).reshape(-1, fmt.block).amax(dim=1)
        assert torch.equal(scales, rows_max)
        # The element that sets each block's scale is exact; every other one within the map's gap.
        gaps = (code_map.magnitude_table[1:] - code_map.magnitude_table[:-1]).max()
        scale_of = scales.repeat_interleave(fmt.block)[:numel]
        assert torch.all((back - x).abs() <= gaps * scale_of / 2 * (1 + 1e-6))


def test_four_bit_codes_pack_two_to_a_byte():
    codes = torch.tensor([1, 2, 3, 15, 7])
    packed = blockwise.pack(codes, 4)
    assert packed.tolist() == [0x21, 0xF3, 0x07]
    assert torch.equal(blockwise.unpack(packed, 4, 5), codes)


def test_zero_and_tiny_blocks_are_exact_zero_and_finite():
    for fmt in FORMATS:
        for key in ("exp_avg", "exp_avg_sq"):
            zeros = torch.zeros(300)
            storage, scales = blockwise.quantize(zeros, fmt.code_map(key), fmt.block, round_up=key == "exp_avg_sq")
            assert torch.equal(blockwise.dequantize(storage, scales, fmt.code_map(key), fmt.block, 300), zeros)
            # A subnormal scale: its reciprocal is capped, so nothing overflows (the precision is lost).
            tiny = torch.full((300,), 1e-44)
            storage, scales = blockwise.quantize(tiny, fmt.code_map(key), fmt.block, round_up=key == "exp_avg_sq")
            back = blockwise.dequantize(storage, scales, fmt.code_map(key), fmt.block, 300)
            assert torch.isfinite(back).all() and torch.all(back <= tiny)
            if key == "exp_avg_sq":
                assert torch.equal(back, tiny)  # rounded up, and the top code decodes to the scale


def test_a_nan_poisons_its_block_only():
    x = torch.rand(512)
    x[3] = float("nan")
    storage, scales = blockwise.quantize(x, INT8.exp_avg_sq, 256, round_up=True)
    back = blockwise.dequantize(storage, scales, INT8.exp_avg_sq, 256, 512)
    assert torch.isnan(back[:256]).all() and torch.isfinite(back[256:]).all()


def _gradient_sequences():
    """Per step: a gradient of 300 elements (2+ blocks at 4 bits), with decaying and spiking magnitudes."""
    step = st.tuples(
        st.floats(-75, 10),  # log2 of the step's overall magnitude: decays and spikes (to underflow)
        st.integers(0, 299),  # where a spike lands
        st.floats(0, 40),  # how large the spike is (log2)
        st.integers(0, 2**31 - 1),  # the noise
    )
    return st.lists(step, min_size=1, max_size=25)


def _stored_maxima(sequence, beta2: float, fmt, step_rule: bool = True):
    """Per step of ``sequence``: (u, the previous decoded maximum, codes and scales of u as stored).

    u is the kernels' u_t = max(previous decoded maximum, v_t) for a v_t of those gradients;
    ``step_rule``: stored by the optimizers' rule (nearest, never below the previous decoded
    maximum), else rounded up, the rule of a state converted from float values.
    """
    numel, code_map = 300, fmt.exp_avg_sq
    v = torch.zeros(numel)
    previous = torch.zeros(numel)
    for log_scale, where, log_spike, noise in sequence:
        g = torch.randn(numel, generator=torch.Generator().manual_seed(noise)) * 2.0**log_scale
        g[where] *= 2.0**log_spike
        v = v * beta2 + (g * g) * (1 - beta2)
        u = torch.maximum(previous, v)
        stored = blockwise.quantize(u, code_map, fmt.block, round_up=True, floor=previous if step_rule else None)
        yield u, previous, stored
        previous = blockwise.dequantize(*stored, code_map, fmt.block, numel)


@settings(max_examples=60, deadline=None)
@given(sequence=_gradient_sequences(), beta2=st.sampled_from([0.0, 0.5, 0.9, 0.999]),
       fmt_name=st.sampled_from(sorted(BLOCK_FORMATS)), step_rule=st.booleans())
def test_the_stored_maximum_never_decreases(sequence, beta2, fmt_name, step_rule):
    fmt = BLOCK_FORMATS[fmt_name]
    code_map, block = fmt.exp_avg_sq, fmt.block
    for u, previous, stored in _stored_maxima(sequence, beta2, fmt, step_rule):
        decoded = blockwise.dequantize(*stored, code_map, block, u.numel())
        assert torch.all(decoded >= previous)
        if step_rule:  # the nearest code, unless that one is below the floor
            nearest = blockwise.dequantize(*blockwise.quantize(u, code_map, block), code_map, block, u.numel())
            tiny = (stored[1] < blockwise.TINY_SCALE).repeat_interleave(block)[:u.numel()]
            assert torch.all((decoded == nearest) | (decoded >= previous) & (nearest < previous) | tiny)
        else:
            assert torch.all(decoded >= u)


@settings(max_examples=60, deadline=None)
@given(sequence=_gradient_sequences(), beta2=st.sampled_from([0.0, 0.5, 0.9, 0.999]),
       fmt_name=st.sampled_from(sorted(BLOCK_FORMATS)))
def test_one_code_up_is_the_larger_of_nearest_and_the_smallest_code_not_below_the_floor(sequence, beta2, fmt_name):
    # The identity the module docstring proves: the step rule's single step up lands exactly
    # where max(nearest code, smallest code whose value is not below the floor) does.
    fmt = BLOCK_FORMATS[fmt_name]
    code_map, block = fmt.exp_avg_sq, fmt.block
    for u, previous, (storage, scales) in _stored_maxima(sequence, beta2, fmt):
        numel = u.numel()
        nearest = blockwise.unpack(blockwise.quantize(u, code_map, block)[0], code_map.bits, numel)
        # the smallest code not below the floor, on u's scales: by search over the decoded grid
        grid = code_map.magnitude_table[None, :] * scales.repeat_interleave(block)[:numel, None]
        enough = (grid >= previous[:, None]).int().argmax(dim=1)
        expected = torch.maximum(nearest, enough)
        ordinary = (scales >= blockwise.TINY_SCALE).repeat_interleave(block)[:numel]
        assert torch.equal(blockwise.unpack(storage, code_map.bits, numel)[ordinary], expected[ordinary])


def _skewed_blocks(seed: int, log_scale: float, fmt_name: str):
    """Two blocks of the maximum's values, most of them far below their block's largest."""
    fmt = BLOCK_FORMATS[fmt_name]
    generator = torch.Generator().manual_seed(seed)
    return fmt, fmt.exp_avg_sq, torch.rand(2 * fmt.block, generator=generator) ** 8 * 2.0**log_scale


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-90, 60), fmt_name=st.sampled_from(sorted(BLOCK_FORMATS)))
def test_the_step_rule_keeps_an_unchanged_maximum_and_rounds_a_new_one_to_nearest(seed, log_scale, fmt_name):
    fmt, code_map, x = _skewed_blocks(seed, log_scale, fmt_name)
    storage, scales = blockwise.quantize(x, code_map, fmt.block, round_up=True)
    decoded = blockwise.dequantize(storage, scales, code_map, fmt.block, x.numel())
    # nothing new: the same codes (it does not creep up)
    again = blockwise.quantize(decoded, code_map, fmt.block, round_up=True, floor=decoded)
    assert torch.equal(again[0], storage) and torch.equal(again[1], scales)
    # a floor of zero: plain nearest rounding (outside blocks too small to decode safely)
    fresh = blockwise.quantize(x, code_map, fmt.block, round_up=True, floor=torch.zeros_like(x))
    if bool((scales >= blockwise.TINY_SCALE).all()):
        assert torch.equal(fresh[0], blockwise.quantize(x, code_map, fmt.block)[0])


def test_round_to_nearest_would_let_the_maximum_decrease():
    # The counter-example of the module docstring: a spike in one element raises its block's
    # scale, and its neighbours, re-encoded to nearest on the new grid, go down.
    code_map, block = INT8.exp_avg_sq, 256
    u = torch.rand(block) * 0.01 + 0.001
    nearest = blockwise.dequantize(*blockwise.quantize(u, code_map, block), code_map, block, block)
    spiked = nearest.clone()
    spiked[0] = 7.3
    after_nearest = blockwise.dequantize(*blockwise.quantize(spiked, code_map, block), code_map, block, block)
    after_up = blockwise.dequantize(*blockwise.quantize(spiked, code_map, block, round_up=True), code_map, block, block)
    assert (after_nearest[1:] < nearest[1:]).any()
    assert torch.all(after_up >= spiked)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-90, 60), fmt_name=st.sampled_from(sorted(BLOCK_FORMATS)))
def test_rounding_up_gives_the_smallest_sufficient_code(seed, log_scale, fmt_name):
    fmt, code_map, x = _skewed_blocks(seed, log_scale, fmt_name)
    storage, scales = blockwise.quantize(x, code_map, fmt.block, round_up=True)
    codes = blockwise.unpack(storage, fmt.bits, x.numel())
    scale_of = scales.repeat_interleave(fmt.block)
    decoded = code_map.magnitude_table[codes] * scale_of
    assert torch.all(decoded >= x)
    below = code_map.magnitude_table[(codes - 1).clamp(min=0)] * scale_of
    assert torch.all((codes == 0) | (below < x))
    # A maximum that did not change is stored again as the same code: it does not creep up.
    again = blockwise.quantize(decoded, code_map, fmt.block, round_up=True)
    assert torch.equal(again[0], storage) and torch.equal(again[1], scales)
