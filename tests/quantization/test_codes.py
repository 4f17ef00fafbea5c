"""The code maps: their tables, and the arithmetic encoders the kernels use against the tables."""

from __future__ import annotations

import dataclasses
import struct

import pytest
import torch

from amsgrad.quantization import codes
from amsgrad.quantization.formats import BLOCK_FORMATS

MAPS = {f"{name}-{key}": fmt.code_map(key) for name, fmt in BLOCK_FORMATS.items() for key in ("exp_avg", "exp_avg_sq")}
ARITHMETIC = list(MAPS.values())


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def test_the_formats_maps_are_the_documented_ones():
    int8, int4 = BLOCK_FORMATS["int8"], BLOCK_FORMATS["int4"]
    assert (int8.bits, int8.block, int4.bits, int4.block) == (8, 256, 4, 128)
    # e3m4 for m at 8 bits: 8 binades of 16 values up to 1.0, the lowest one replaced by 0.
    m8 = int8.exp_avg.magnitudes
    assert m8[0] == 0.0 and m8[-1] == 1.0 and m8[-2] == 1 - 1 / 32 and m8[1] == 2.0**-8 * (1 + 2 / 16)
    # e2m1 for m at 4 bits: 0, 1/8, 3/16, 1/4, 3/8, 1/2, 3/4, 1.
    assert int4.exp_avg.magnitudes == (0.0, 0.125, 0.1875, 0.25, 0.375, 0.5, 0.75, 1.0)
    # v and v̂, without a zero code: at 8 bits e5m3, 32 binades of 8 values, 2^-32 ... 1; at 4 bits
    # the 16 powers of two 2^-15 ... 1.
    v8 = int8.exp_avg_sq.magnitudes
    assert v8 == tuple(2.0 ** (i // 8 - 32) * (1 + (i % 8) / 8) for i in range(1, 257))
    assert int4.exp_avg_sq.magnitudes == tuple(2.0 ** (i - 15) for i in range(16))
    assert not int8.exp_avg_sq.has_zero and not int4.exp_avg_sq.has_zero
    assert int8.bytes_per_element() <= 3.1 and int4.bytes_per_element() <= 1.6


@pytest.mark.parametrize("code_map", ARITHMETIC + [codes.dynamic_tree(8, True), codes.linear(4, False, zero=False)],
                         ids=lambda m: m.name)
def test_encode_nearest_picks_the_nearest_table_value(code_map):
    generator = torch.Generator().manual_seed(0)
    mids, mags = code_map.midpoints, code_map.magnitude_table
    # Random values over many binades, every magnitude and midpoint, and their float32 neighbours.
    points = torch.cat([torch.rand(100_000, generator=generator) ** 4, mids, mags])
    points = torch.cat([points, torch.nextafter(points, torch.tensor(2.0)), torch.nextafter(points, torch.tensor(-1.0))])
    points = points[(points >= 0) & (points <= 1)]
    y = torch.cat([points, -points]) if code_map.signed else points
    got = code_map.decode(code_map.encode_nearest(y))
    magnitude = y.abs().double()
    # Nearest in the map's own metric (the square root for sqrt-linear maps), up to the float32
    # rounding of the midpoints (a relative 2^-23 of the value).
    warp = torch.sqrt if code_map.kind == "sqrt_linear" else (lambda t: t)
    distance = (warp(mags.double())[None, :] - warp(magnitude)[:, None]).abs()
    best = distance.min(dim=1).values
    chosen = (warp(got.abs().double()) - warp(magnitude)).abs()
    assert torch.all(chosen <= best + 2.0**-23 * warp(magnitude))
    if code_map.signed:
        assert torch.all((got == 0) | (torch.sign(got) == torch.sign(y)))
    # Exactly on a midpoint: the larger magnitude (half away from zero).
    assert torch.equal(code_map.decode(code_map.encode_nearest(mids)), mags[1:])


@pytest.mark.parametrize("code_map", [m for m in ARITHMETIC if not m.signed], ids=lambda m: m.name)
def test_encode_up_is_never_above_the_smallest_value_not_below(code_map):
    generator = torch.Generator().manual_seed(1)
    mags = code_map.magnitude_table
    y = torch.cat([torch.rand(100_000, generator=generator) ** 6, mags, torch.nextafter(mags, torch.tensor(2.0)),
                   torch.nextafter(mags, torch.tensor(0.0))]).clamp(0, 1)
    index = code_map.encode_up(y)
    # The smallest code whose value is not below y, or the one below it (never above).
    smallest = torch.searchsorted(mags, y, right=False).clamp(max=len(mags) - 1)
    assert torch.all((index == smallest) | (index == smallest - 1))
    random = slice(0, 100_000)  # values on (or one ulp from) a code are where the bias moves one down
    assert (index[random] == smallest[random]).float().mean() > 0.999


@pytest.mark.parametrize("code_map", ARITHMETIC, ids=lambda m: m.name)
def test_special_values_encode_as_documented(code_map):
    top = len(code_map.magnitudes) - 1
    special = torch.tensor([float("nan"), float("inf"), 2.0, 0.0])
    assert code_map.encode_nearest(special).tolist() == [top, top, top, 0]
    if not code_map.signed:
        assert code_map.encode_up(special).tolist() == [top, top, top, 0]


def test_minifloat_codes_are_shifted_float32_bit_patterns():
    m = codes.minifloat(8, 4, signed=True)
    for index in range(1, 128):
        bits = (index + m.minifloat_offset) << m.minifloat_shift
        assert m.magnitudes[index] == struct.unpack("<f", struct.pack("<I", bits))[0]
    assert codes.minifloat(8, 3, signed=False, zero=False).magnitudes[0] > 0


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="end at 1.0"):
        codes.CodeMap("x", 2, False, (0.0, 0.25, 0.5, 0.75))
    with pytest.raises(ValueError, match="4 magnitudes, expected 2"):
        codes.CodeMap("x", 2, True, (0.0, 0.25, 0.5, 1.0))
    with pytest.raises(ValueError, match="rounding up is defined for unsigned maps"):
        codes.minifloat(8, 4, signed=True).encode_up(torch.zeros(1))


def test_the_c_header_is_generated_from_the_tables():
    header = codes.c_header({"m8": BLOCK_FORMATS["int8"].exp_avg})
    assert "do not edit" in header and "#define m8_MINIFLOAT_SHIFT 19" in header
    assert f"{float.hex(BLOCK_FORMATS['int8'].exp_avg.magnitudes[1])}f" in header
    half = struct.unpack("<I", struct.pack("<f", BLOCK_FORMATS["int8"].exp_avg.magnitudes[1] / 2))[0]
    assert f"#define m8_HALF_SMALLEST_BITS {half:#010x}" in header


def test_maps_and_formats_hash_as_their_fields():
    # Their hashes are computed once (a format is a dict key at every step): equal values must
    # still hash alike, and a change of any field must make them unequal.
    for fmt in BLOCK_FORMATS.values():
        copy = dataclasses.replace(fmt, exp_avg=dataclasses.replace(fmt.exp_avg))
        assert copy is not fmt and copy == fmt and hash(copy) == hash(fmt)
        assert {fmt: 1}[copy] == 1
        other = dataclasses.replace(fmt, exp_avg_sq=fmt.exp_avg)
        assert other != fmt
    int8, int4 = BLOCK_FORMATS["int8"], BLOCK_FORMATS["int4"]
    assert int8 != int4 and hash(int8.exp_avg) != hash(int4.exp_avg)
    renamed = dataclasses.replace(int8.exp_avg, name="renamed")
    assert renamed != int8.exp_avg and hash(renamed) != hash(int8.exp_avg)
