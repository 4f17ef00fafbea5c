r"""Block-wise absmax quantization (Dettmers et al., ICLR 2022), the reference in torch ops.

A flat float32 tensor is cut into blocks of ``B`` elements (the last one may be shorter). Each
block keeps its scale :math:`s = \max_i |x_i|` in float32 and one code per element, the code
of :math:`y_i = x_i \cdot r` with :math:`r = 1/s` (rounded to float32, capped at the largest
float32 so that a zero or subnormal scale stays finite). Decoding is
:math:`\tilde{x}_i = \mathrm{value}(c_i) \cdot s`, one float32 product. 4-bit codes are packed
two to a byte, the even element in the low nibble.

**The maximum never decreases.** AMSGrad's promise is :math:`\hat{v}_t \ge \hat{v}_{t-1}` for
every element at every step. The quantized kernels compute
:math:`u_i = \max(\tilde{v}^{\max}_{t-1,i}, v_{t,i})` exactly in float32 and store the block
with :func:`quantize` ``(round_up=True, floor=`` :math:`\tilde{v}^{\max}_{t-1}` ``)``: the new scale
is :math:`s' = \max_i u_i`, and each element gets its nearest code, or the next one up where the
nearest one decodes below :math:`\tilde{v}^{\max}_{t-1,i}` (checked with the decoder's own
float32 product, so no rounding in between can undo it). One step up always suffices: the nearest
code of :math:`u_i` is within half a code step of it (in the square root for a sqrt-linear map),
so the next one decodes above :math:`u_i \ge \tilde{v}^{\max}_{t-1,i}`; and at the top code,
whose value is :math:`s'` itself, nothing is short. The result is the larger of the nearest code and the smallest code
that is not below the floor. Hence :math:`\tilde{v}^{\max}_{t} \ge \tilde{v}^{\max}_{t-1}`,
element by element, at every step, in every format. Without ``floor`` (a state converted from
float values) each element gets the smallest code not below :math:`u_i` itself. Rounding every
:math:`u_i` up also keeps the maximum non-decreasing, but each re-encoding on a grown scale then
inflates it again, which at 4 bits costs training quality; the floor rule rounds to nearest
wherever that keeps the promise.

Why round-to-nearest breaks it: the codes are relative to the block's scale, and the scale
changes whenever any element of the block sets a new maximum. An element whose maximum did not
change must then be re-encoded on a new, coarser grid, and the nearest point of that grid is
below its old value about half the time; one element's spike lowers its neighbours' maxima.
It is a decrease of up to half a code step (several percent at 8 bits, tens of percent at 4),
every time a block's scale grows, compounding over steps. torchao's low-bit optimizers
requantize the maximum to nearest and so let it decrease; bitsandbytes refuses 8-bit AMSGrad.
Per-element formats (bfloat16) with a monotonic rounding do not have the problem, since the
old value is representable and rounding maps it to itself.
"""

from __future__ import annotations

import torch

from . import rounding
from .codes import UP_BIAS, CodeMap

__all__ = ["block_count", "code_bytes", "quantize", "dequantize", "pack", "unpack", "reciprocal_scale"]

FLOAT32_MAX = torch.finfo(torch.float32).max
#: Blocks whose scale is below this store every maximum as the top code (see :func:`quantize`).
TINY_SCALE = 2.0**-96


def block_count(numel: int, block: int) -> int:
    return (numel + block - 1) // block


def code_bytes(numel: int, bits: int) -> int:
    """Bytes of codes for ``numel`` elements: one per element at 8 bits, one per two at 4."""
    return numel if bits == 8 else (numel + 1) // 2


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """int64 codes → uint8 storage (two 4-bit codes per byte, even element low)."""
    if bits == 8:
        return codes.to(torch.uint8)
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    pairs = codes.reshape(-1, 2)
    return (pairs[:, 0] | (pairs[:, 1] << 4)).to(torch.uint8)


def unpack(storage: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """uint8 storage → int64 codes, ``numel`` of them."""
    codes = storage.to(torch.int64)
    if bits == 8:
        return codes[:numel]
    return torch.stack([codes & 0xF, codes >> 4], dim=1).reshape(-1)[:numel]


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """``x`` (flat) as rows of ``block``, the last row padded with zeros."""
    pad = (-x.numel()) % block
    if pad:
        x = torch.cat([x, x.new_zeros(pad)])
    return x.reshape(-1, block)


def reciprocal_scale(scales: torch.Tensor) -> torch.Tensor:
    """:math:`r = 1/s` in float32, capped at the largest float32 (a NaN scale gives the cap too)."""
    r = torch.div(torch.ones_like(scales), scales)
    return torch.where(r < FLOAT32_MAX, r, torch.full_like(r, FLOAT32_MAX))


def quantize(x: torch.Tensor, code_map: CodeMap, block: int, round_up: bool = False,
             floor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (uint8 storage) and float32 scales of the flat float32 tensor ``x``.

    ``round_up=False``: each element gets the code of the value nearest to :math:`x \\cdot r`
    (half away from zero); for a sqrt-linear map, nearest in the square root, computed as
    :math:`\\sqrt{x} \\cdot (\\sqrt{r}\\, 2^b)` so that a kernel can reuse the :math:`\\sqrt{x}` of the
    update. ``round_up=True`` (unsigned maps, for the maximum): the smallest code whose decoded
    value is not below the element (see the module docstring); in a block whose scale is below
    2^-96, where a decoded product could underflow, every element gets the top code, whose value
    is the scale itself.

    ``floor`` (with ``round_up=True``; flat, like ``x``, every element at most ``x``'s): the
    maximum's step rule. Each element gets its nearest code on the block's new scale (that of
    ``x``), one code up where that one decodes below its floor (the previous decoded maximum): the
    decoded value never falls below the floor, and is the nearest one where that allows. (This is
    the larger of the nearest code and the smallest code not below the floor; see the module
    docstring for why one step up suffices.)
    """
    x = x.reshape(-1).float()
    numel = x.numel()
    rows = _blocks(x, block)
    # The scale propagates NaN (as the canonical NaN), so a NaN poisons its block, as it would the
    # element. (v and v̂ are never negative: their absolute maximum is their maximum.)
    scales = rows.abs().amax(dim=1) if numel else x.new_zeros(0)
    scales = torch.where(torch.isnan(scales), torch.full_like(scales, float("nan")), scales)
    if not round_up:
        codes = _codes(rows, scales, code_map, round_up=False)
    elif floor is None:
        codes = _codes(rows, scales, code_map, round_up=True)
    else:
        codes = _codes(rows, scales, code_map, round_up=False)
        short = code_map.magnitude_table.to(rows.device)[codes] * scales[:, None] < _blocks(floor.reshape(-1).float(), block)
        codes = torch.where(short, (codes + 1).clamp_(max=len(code_map.magnitudes) - 1), codes)
    if round_up:  # below this scale a product could underflow: the whole block takes the top code (= the scale)
        top = len(code_map.magnitudes) - 1
        tiny = ~(scales >= TINY_SCALE)
        codes = torch.where(tiny[:, None] & ~torch.isnan(scales)[:, None], torch.full_like(codes, top), codes)
    return pack(codes.reshape(-1)[:numel], code_map.bits), scales


def _codes(rows: torch.Tensor, scales: torch.Tensor, code_map: CodeMap, round_up: bool) -> torch.Tensor:
    """The codes of ``rows`` (blocks of float32 values) on the blocks' ``scales``: nearest, or the
    smallest code whose decoded value is not below the value (``round_up``)."""
    r = reciprocal_scale(scales)[:, None]
    top = len(code_map.magnitudes) - 1
    if code_map.kind == "sqrt_linear":
        # In the square root: q = √x · (√r · 2^b) (+ 1/2 to round to nearest; lowered to round up).
        root = rounding.sqrt_float32(rows)
        gain = rounding.sqrt_float32(r) * float(code_map.size)
        if not round_up:
            q = root * gain + 0.5
            q = torch.where(q < float(code_map.size), q, torch.full_like(q, float(code_map.size)))
            return (q.to(torch.int64) - 1).clamp_(0, top)
        q = root * (gain * UP_BIAS)
        q = torch.where(q < float(code_map.size), q, torch.full_like(q, float(code_map.size)))
        whole = q.to(torch.int64)
        codes = (whole + (q > whole).to(torch.int64) - 1).clamp_(0, top)
    elif round_up:
        codes = code_map.encode_up(rows * r)
    else:
        return code_map.encode_nearest(rows * r)
    # from the smallest sufficient code or the one below it: check with the decoder's product
    table = code_map.magnitude_table.to(rows.device)
    short = table[codes] * scales[:, None] < rows
    return torch.where(short, (codes + 1).clamp_(max=top), codes)


def dequantize(storage: torch.Tensor, scales: torch.Tensor, code_map: CodeMap, block: int, numel: int) -> torch.Tensor:
    """The float32 values (flat, ``numel``) of codes and scales made by :func:`quantize`."""
    codes = unpack(storage, code_map.bits, numel)
    pad = (-numel) % block
    if pad:
        codes = torch.cat([codes, codes.new_zeros(pad)])
    values = code_map.decode(codes).reshape(-1, block) * scales[:, None]
    return values.reshape(-1)[:numel]
