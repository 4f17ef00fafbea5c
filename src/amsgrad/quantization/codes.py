r"""Code maps: which real number in [-1, 1] (or [0, 1]) each k-bit code stands for.

A block-wise format (:mod:`.blockwise`) stores ``x / s`` for a block scale ``s`` (the block's
absolute maximum) as the code whose value is nearest, or, for AMSGrad's maximum, as the
smallest code whose value is not below it. This module defines the maps once, as plain Python
numbers; the reference quantizer looks codes up in these tables, and the C kernels' constants
are generated from them (:func:`c_header`), so the two cannot drift apart.

Signed maps are sign-magnitude: the top bit is the sign, the other bits index a table of
magnitudes that starts at 0, so that ``+x`` and ``-x`` round alike and 0 is exact. Unsigned
maps (for :math:`v_t` and :math:`\hat{v}_t`, which are never negative) index the table
directly. Every table ends at exactly 1.0, so the element that sets the scale is stored exactly.

The maps, and where they come from:

* :func:`minifloat`: a float code with ``mantissa_bits`` fraction bits whose largest value is
  1.0, each binade below holding :math:`2^{M}` equally spaced values (as float8's e4m3 or e5m2,
  but anchored at 1.0 and without special values). Its codes are float32 bit patterns shifted
  right, so the C kernels encode and decode with integer arithmetic instead of a table search.
* :func:`dynamic_tree`: the dynamic tree map of Dettmers, Lewis, Shleifer & Zettlemoyer,
  *8-bit Optimizers via Block-wise Quantization* (ICLR 2022): a decimal exponent (the count of
  leading zero bits), then a linear fraction in [0.1, 1] with the remaining bits.
* :func:`sqrt_linear`: equally spaced in :math:`\sqrt{x}`, without a zero: the smallest code is
  :math:`(1/2^b)^2`. Li, Chen & Zhu, *Memory Efficient Optimizers with 4-bit States*
  (NeurIPS 2023), show that a zero code ruins the second moment at 4 bits (an element whose
  :math:`v` rounds to 0 gets a huge step); a map without zero rounds small values *up*.
* :func:`linear`: equally spaced values, with or without zero (Li et al.'s map for :math:`v`).

Which map each format uses is decided in :mod:`.formats`, by measurement
(``python -m benchmarks quantization_maps``).
"""

from __future__ import annotations

import dataclasses
import math
import struct
from functools import cached_property

import torch

from .rounding import sqrt_float32

__all__ = ["CodeMap", "minifloat", "dynamic_tree", "sqrt_linear", "linear", "c_header"]


#: The rounding-up encoders aim this much low (a float32 number), so that they never overshoot.
UP_BIAS = 1.0 - 2.0**-19


def _float32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def _bits_to_float(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


@dataclasses.dataclass(frozen=True)
class CodeMap:
    """A k-bit code: ``magnitudes[i]`` is the value of magnitude index ``i`` (float32 numbers, increasing).

    ``signed`` maps have ``2**(bits-1)`` magnitudes starting with 0.0; unsigned maps have
    ``2**bits``. ``minifloat_shift``/``minifloat_offset`` are set for :func:`minifloat` maps:
    magnitude ``i > 0`` (or any ``i`` without a zero) is the float32 with bits
    ``(i + offset) << shift``.
    """

    name: str
    bits: int
    signed: bool
    magnitudes: tuple[float, ...]
    minifloat_shift: int = 0
    minifloat_offset: int = 0
    has_zero: bool = True

    def __post_init__(self) -> None:
        count = 2 ** (self.bits - 1) if self.signed else 2**self.bits
        if len(self.magnitudes) != count:
            raise ValueError(f"{self.name}: {len(self.magnitudes)} magnitudes, expected {count}")
        if any(_float32(m) != m for m in self.magnitudes):
            raise ValueError(f"{self.name}: magnitudes must be float32 numbers")
        if list(self.magnitudes) != sorted(set(self.magnitudes)) or self.magnitudes[-1] != 1.0:
            raise ValueError(f"{self.name}: magnitudes must increase strictly and end at 1.0")
        if self.signed and self.magnitudes[0] != 0.0:
            raise ValueError(f"{self.name}: a signed map starts its magnitudes at 0")

    def __hash__(self) -> int:  # (kept by the dataclass; the magnitudes are hashed once, not at each lookup)
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash(dataclasses.astuple(self))

    # ----------------------------------------------------------- tables
    @property
    def size(self) -> int:
        """The number of codes, ``2**bits``."""
        return 2**self.bits

    @cached_property
    def magnitude_table(self) -> torch.Tensor:
        return torch.tensor(self.magnitudes, dtype=torch.float32)

    @cached_property
    def midpoints(self) -> torch.Tensor:
        """Float32 midpoints between neighbouring magnitudes: the boundaries of round-to-nearest.

        Computed as ``a + (b - a) / 2`` in float64 and rounded to float32 (for sqrt-linear maps,
        between the square roots); a value exactly on a midpoint rounds to the larger magnitude.
        """
        m = self.magnitudes
        if self.kind == "sqrt_linear":  # nearest in the square root: the midpoints of √m, squared
            return torch.tensor([((i + 1.5) / self.size) ** 2 for i in range(len(m) - 1)], dtype=torch.float64).float()
        return torch.tensor([a + (b - a) / 2 for a, b in zip(m[:-1], m[1:])], dtype=torch.float64).float()

    @cached_property
    def values(self) -> torch.Tensor:
        """The value of every code, in code order (``values[code]``), float32."""
        if not self.signed:
            return self.magnitude_table.clone()
        return torch.cat([self.magnitude_table, -self.magnitude_table])

    # --------------------------------------------------- reference coding
    @property
    def kind(self) -> str:
        """How the kernels encode: ``"minifloat"``, ``"sqrt_linear"`` (arithmetic), or ``"table"``."""
        if self.minifloat_shift:
            return "minifloat"
        if self.name.startswith("sqrt-linear"):
            return "sqrt_linear"
        return "table"

    def encode_nearest(self, y: torch.Tensor) -> torch.Tensor:
        r"""The code nearest to each float32 ``y`` (normally in [-1, 1]), as int64; half away from zero.

        Minifloat maps round the float32 bit pattern of :math:`|y|` (exactly the nearest table
        value; NaN of either sign is the largest pattern); sqrt-linear maps round
        :math:`\sqrt{y} \cdot 2^b` (nearest in the square root); other maps search the table's
        midpoints. Out-of-range values clamp to the end codes; NaN gets the top code.
        """
        magnitude = y.abs() if self.signed else y
        top = len(self.magnitudes) - 1
        if self.kind == "minifloat":
            # |y|: so that a NaN's sign bit (which torch ops do not define) never changes its code
            bits = y.abs().contiguous().view(torch.int32).to(torch.int64)
            index = ((bits + (1 << (self.minifloat_shift - 1))) >> self.minifloat_shift) - self.minifloat_offset
            if self.has_zero:
                first = self.magnitudes[1] / 2  # exact: a power of two times a float32
                index = torch.where(index <= 0, (magnitude >= first).to(torch.int64), index)
            index = index.clamp_(0, top)
        elif self.kind == "sqrt_linear":
            q = sqrt_float32(magnitude) * float(self.size) + 0.5
            q = torch.where(q < float(self.size), q, torch.full_like(q, float(self.size)))  # NaN too
            index = (q.to(torch.int64) - 1).clamp_(0, top)
        else:
            index = torch.searchsorted(self.midpoints.to(magnitude.device), magnitude.contiguous(), right=True)
            index = torch.where(torch.isnan(magnitude), top, index)
        return self._with_sign(index, y)

    def encode_up(self, y: torch.Tensor) -> torch.Tensor:
        """For ``y >= 0``: the code of the smallest value ``>= y``, or one code below it.

        Never above the smallest such code: sqrt-linear maps compute :math:`\\lceil \\sqrt{y}\\,2^b (1 - 2^{-20})
        \\rceil - 1`, whose bias is larger than the float32 rounding of :math:`\\sqrt{y}` and of the
        caller's :math:`y = x r` together, and much smaller than a code step; :func:`.blockwise.quantize`
        then moves up one code where the decoded product is still below. Clamped at the top; NaN: the top.
        """
        if self.signed:
            raise ValueError(f"{self.name}: rounding up is defined for unsigned maps (the maximum is never negative)")
        top = len(self.magnitudes) - 1
        if self.kind == "sqrt_linear":
            q = (sqrt_float32(y) * float(self.size)) * UP_BIAS
            q = torch.where(q < float(self.size), q, torch.full_like(q, float(self.size)))
            whole = q.to(torch.int64)
            return (whole + (q > whole).to(torch.int64) - 1).clamp_(0, top)
        lowered = y * UP_BIAS
        index = torch.searchsorted(self.magnitude_table.to(y.device), lowered.contiguous(), right=False)
        return torch.where(torch.isnan(y), top, index.clamp_(max=top))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``values[codes]`` (float32), for integer codes of any integer dtype."""
        return self.values.to(codes.device)[codes.long()]

    def _with_sign(self, index: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.signed:
            return index
        negative = torch.signbit(y) & (index > 0)  # zero is always the code 0
        return index + negative.long() * (2 ** (self.bits - 1))

    def describe(self) -> str:
        smallest = next(m for m in self.magnitudes if m > 0)
        return (f"{self.name}: {self.bits}-bit {'signed' if self.signed else 'unsigned'}, "
                f"{'with' if self.has_zero else 'no'} zero, smallest non-zero {smallest:.3g}")


def minifloat(bits: int, mantissa_bits: int, signed: bool, zero: bool = True) -> CodeMap:
    """A float code anchored at 1.0: magnitude ``i`` is the float32 with bits ``(i + offset) << (23 - M)``.

    With ``zero`` the first magnitude is 0 instead; the others are unchanged. The number of
    binades is ``2**(bits - signed) / 2**M``.
    """
    count = 2 ** (bits - 1) if signed else 2**bits
    shift = 23 - mantissa_bits
    offset = (0x3F800000 >> shift) - (count - 1)
    if offset <= 0:
        raise ValueError("too many codes for float32's exponent range")
    magnitudes = [_bits_to_float((i + offset) << shift) for i in range(count)]
    if zero:
        magnitudes[0] = 0.0
    exponent_bits = int(math.log2(count)) - mantissa_bits
    name = f"float e{exponent_bits}m{mantissa_bits}{'' if zero else ', no zero'}"
    return CodeMap(name, bits, signed, tuple(magnitudes), shift, offset, zero)


def dynamic_tree(bits: int, signed: bool) -> CodeMap:
    """Dettmers et al.'s dynamic tree map: for E = 0, 1, ... leading zeros, 10^-E times a linear fraction.

    With ``n`` bits after the sign, exponent E leaves ``n - 1 - E`` fraction bits, whose
    :math:`2^{n-1-E}` values are the midpoints of ``linspace(0.1, 1, 2^{n-1-E} + 1)``; 0 and 1.0
    are added and, where that is one value too many, the smallest non-zero value is dropped.
    """
    n = bits - 1 if signed else bits
    count = 2**n
    values: set[float] = {0.0, 1.0}
    for exponent in range(n):
        fractions = 2 ** (n - 1 - exponent)
        edges = [0.1 + 0.9 * i / fractions for i in range(fractions + 1)]
        values.update(_float32(10.0**-exponent * (a + b) / 2) for a, b in zip(edges[:-1], edges[1:]))
    magnitudes = sorted(values)
    while len(magnitudes) > count:
        del magnitudes[1]
    while len(magnitudes) < count:  # only for tiny bit widths: fill below the smallest
        magnitudes.insert(1, _float32(magnitudes[1] / 10))
    return CodeMap("dynamic tree", bits, signed, tuple(magnitudes))


def sqrt_linear(bits: int) -> CodeMap:
    """Unsigned, equally spaced in the square root, no zero: magnitude ``i`` is ``((i + 1) / 2**bits) ** 2``."""
    count = 2**bits
    return CodeMap("sqrt-linear, no zero", bits, False,
                   tuple(_float32(((i + 1) / count) ** 2) for i in range(count)), has_zero=False)


def linear(bits: int, signed: bool, zero: bool = True) -> CodeMap:
    """Equally spaced magnitudes ending at 1: ``i / (count - 1)`` with zero, ``(i + 1) / count`` without."""
    count = 2 ** (bits - 1) if signed else 2**bits
    if zero:
        magnitudes = tuple(_float32(i / (count - 1)) for i in range(count))
    else:
        magnitudes = tuple(_float32((i + 1) / count) for i in range(count))
    return CodeMap(f"linear{'' if zero else ', no zero'}", bits, signed, magnitudes, has_zero=zero)


def c_header(maps: dict[str, CodeMap]) -> str:
    """C declarations of the maps (tables, midpoints, minifloat constants), generated from the definitions."""
    lines = ["/* Generated by amsgrad.quantization.codes.c_header from the Python code maps: do not edit. */",
             "#pragma once", "#include <stdint.h>", ""]
    for prefix, code_map in maps.items():
        up = prefix
        lines.append(f"/* {code_map.describe()} */")
        lines.append(f"#define {up}_BITS {code_map.bits}")
        lines.append(f"#define {up}_SIGNED {int(code_map.signed)}")
        lines.append(f"#define {up}_HAS_ZERO {int(code_map.has_zero)}")
        lines.append(f"#define {up}_COUNT {len(code_map.magnitudes)}")
        lines.append(f"#define {up}_SQRT_LINEAR {int(code_map.kind == 'sqrt_linear')}")
        lines.append(f"#define {up}_MINIFLOAT_SHIFT {code_map.minifloat_shift}")
        lines.append(f"#define {up}_MINIFLOAT_OFFSET {code_map.minifloat_offset}")
        # where a map with a zero code leaves it: half its smallest non-zero value (exact), as bits
        half = struct.unpack("<I", struct.pack("<f", next(m for m in code_map.magnitudes if m > 0) / 2))[0]
        lines.append(f"#define {up}_HALF_SMALLEST_BITS {half:#010x}")
        floats = ", ".join(f"{float.hex(m)}f" for m in code_map.magnitudes)
        lines.append(f"static const float {prefix}_magnitudes[{len(code_map.magnitudes)}] = {{{floats}}};")
        mids = ", ".join(f"{float.hex(float(m))}f" for m in code_map.midpoints.tolist())
        lines.append(f"static const float {prefix}_midpoints[{len(code_map.magnitudes) - 1}] = {{{mids}}};")
        lines.append("")
    return "\n".join(lines)
