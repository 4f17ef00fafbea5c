r"""Rounding float32 to bfloat16: to nearest, up (for the maximum), and stochastically.

bfloat16 is the top half of a float32, so each rounding is integer arithmetic on the float32
bit pattern, written here in torch ops (any device) and, the same steps, in the C kernels:

* :func:`round_up_bfloat16`: toward :math:`+\infty`, for :math:`\hat{v}_t`; since
  :math:`\hat{v}_t \ge \hat{v}_{t-1}` in float32 and :math:`\hat{v}_{t-1}` is a bfloat16
  number, the stored maximum never decreases (round-to-nearest would do too, per element, being
  monotonic; the block formats are where nearest fails, see :mod:`.blockwise`).
* :func:`stochastic_round_bfloat16`: up with probability (distance to the lower neighbour) /
  (gap), so that the rounding is unbiased, :math:`E[\mathrm{sr}(x)] = x`. An update smaller
  than half a bfloat16 ulp of θ is then applied *on average* instead of never (Gupta et al.,
  *Deep Learning with Limited Numerical Precision*, ICML 2015; Zamirai et al., 2020).

The random bits come from a counter-based generator (:func:`random_bits`): a hash of
(seed, step, role, element index), so that a step gives the same bits whatever the number of
threads, the order of the work, or whether the run was resumed from a checkpoint.
NaN becomes the canonical quiet NaN (``0x7FC0``) under every rounding.
"""

from __future__ import annotations

import torch

__all__ = ["lowbias32", "rounding_key", "random_bits", "round_up_bfloat16", "stochastic_round_bfloat16",
           "round_nearest_bfloat16", "ROLE_EXP_AVG", "ROLE_EXP_AVG_SQ", "ROLE_PARAM"]

_MASK32 = 0xFFFFFFFF
#: Which rounding a key is for: each role draws its own, independent bits.
ROLE_PARAM, ROLE_EXP_AVG, ROLE_EXP_AVG_SQ = 0, 1, 2


def _lowbias32_int(x: int) -> int:
    """Wellons' ``lowbias32`` integer hash (a bijection of 32-bit words), on a Python int."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    x ^= x >> 16
    return x


def lowbias32(x: torch.Tensor) -> torch.Tensor:
    """``lowbias32`` of int64 tensors holding 32-bit words (the result is in [0, 2**32))."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def rounding_key(seed: int, step: int, role: int) -> int:
    """The 32-bit key of one tensor's rounding at one step (the C kernels compute the same)."""
    seed &= (1 << 64) - 1
    mixed = _lowbias32_int((seed >> 32) + ((role * 0x9E3779B9) & _MASK32))
    mixed = _lowbias32_int((seed & _MASK32) ^ mixed)
    return _lowbias32_int(mixed + (step & _MASK32))


def random_bits(key: int, start: int, count: int, device=None) -> torch.Tensor:
    """16 random bits (int64 in [0, 65536)) for elements ``start .. start + count - 1``: the top half of
    ``lowbias32(index + key)``."""
    index = torch.arange(start, start + count, dtype=torch.int64, device=device)
    return lowbias32(index + key) >> 16


def _canonical_nan(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(x), torch.full_like(bits, 0x7FC00000), bits)


def _to_bfloat16(bits: torch.Tensor) -> torch.Tensor:
    """float32 bit patterns (int64) whose low 16 bits are zero, as bfloat16."""
    top = ((bits >> 16) & 0xFFFF).to(torch.int32)
    return (top - ((top >= 0x8000).to(torch.int32) << 16)).to(torch.int16).view(torch.bfloat16)


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.float().contiguous().view(torch.int32).to(torch.int64) & _MASK32


def round_up_bfloat16(x: torch.Tensor) -> torch.Tensor:
    """float32 → bfloat16, toward +∞ (a negative number is truncated toward 0)."""
    bits = _bits(x)
    positive = (bits >> 31) == 0
    bump = ((bits & 0xFFFF) != 0) & positive & ~torch.isnan(x)
    bits = (bits + bump.to(torch.int64) * 0x10000) & 0xFFFF0000
    return _to_bfloat16(_canonical_nan(x, bits))


def stochastic_round_bfloat16(x: torch.Tensor, random16: torch.Tensor) -> torch.Tensor:
    """float32 → bfloat16, rounding the magnitude up when its low 16 bits + ``random16`` carry."""
    bits = (_bits(x) + random16.reshape(x.shape)) & 0xFFFF0000
    return _to_bfloat16(_canonical_nan(x, bits))


def round_nearest_bfloat16(x: torch.Tensor) -> torch.Tensor:
    """float32 → bfloat16 to nearest, ties to even (torch's ``.to(torch.bfloat16)``), NaN canonical."""
    bits = _bits(x)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return _to_bfloat16(_canonical_nan(x, bits))


def sqrt_float32(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded float32 square root (IEEE 754's, which C's ``sqrtf`` is).

    torch's CPU ``sqrt`` for float32 is within an ulp but not always correctly rounded (a fifth
    of random inputs differ), so the reference corrects it: a float32 candidate ``r`` is right
    when :math:`x` lies between the squares of the midpoints to its neighbours, and those squares
    are exact in float64 (25-bit numbers squared).
    """
    if x.dtype != torch.float32:
        return torch.sqrt(x)
    r = torch.sqrt(x)
    wide = x.double()
    up = torch.nextafter(r, torch.full_like(r, float("inf")))
    middle = (r.double() + up.double()) / 2
    r = torch.where(middle * middle <= wide, up, r)
    down = torch.nextafter(r, torch.full_like(r, -float("inf")))
    middle = (r.double() + down.double()) / 2
    return torch.where((middle * middle > wide) & (r > 0), down, r)
