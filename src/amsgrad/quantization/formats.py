r"""The state formats that ``state_precision`` names, and how their state is laid out.

==================  =====================================================  ==================
``state_precision``  :math:`m_t`, :math:`v_t`, :math:`\hat{v}_t`            bytes / parameter
==================  =====================================================  ==================
``None``            the parameter's dtype (as ``torch.optim``)              12 (float32)
``torch.float32``   float32 (never narrower than the parameter)             12
``torch.float64``   float64                                                 24
``torch.bfloat16``  bfloat16; m and v rounded stochastically, v̂ up          6
``"int8"``          blocks of 256, a float32 absmax scale each; m: e3m4     3.05
                    float code (signed), v and v̂: e5m3 float code
                    (unsigned, no zero code: 2^-32 ... 1)
``"int4"``          blocks of 128, two codes per byte; m: e2m1 float        1.59
                    code (signed), v and v̂: powers of two 2^-15 ... 1
                    (e4m0, unsigned, no zero code)
==================  =====================================================  ==================

Tensors with fewer than ``min_compressed_numel`` elements (a per-group setting, 4096 by
default, as bitsandbytes' ``min_8bit_size``) keep float32 state under the three compressed
formats: their memory is negligible and their statistics are the noisiest.

The block formats' maps were chosen by measurement. For :math:`m`, by the relative error of the
update direction :math:`m/\sqrt{\hat v}` after one quantization of a small convolutional
network's state (``python -m benchmarks quantization_maps``): at 8 bits the e3m4 code is as good
as the dynamic tree map of Dettmers et al. and, unlike it, encodes with integer arithmetic; at 4
bits e2m1 is the best. For :math:`v` and :math:`\hat v`, by training
(``python -m benchmarks low_memory_training``, 10 seeds): that one-shot error favours a code
linear in :math:`\sqrt{v}`, whose steps are finest near the block's scale, but AMSGrad trained
better with float codes of wide range (int8: e5m3, 32 binades; int4: e4m0, 16), which keep small
maxima near their values instead of at the bottom code, where they would shrink those elements'
steps for good. Neither has a zero code: at 4 bits a map with one (the dynamic tree's) makes the
error explode, the failure Li et al. describe (an element whose :math:`v` rounds to 0 takes a
huge step).

State keys: the float formats use torch's keys (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``)
with tensors of their dtype, so ``torch.optim.Adam`` loads them as they are. The block formats
store, for each moment ``K`` among those keys, ``K_codes`` (uint8, flat) and ``K_scales``
(float32, one per block); :meth:`amsgrad.Adam.torch_state_dict` decodes them into torch's layout.
Formats with stochastic rounding also keep ``rounding_seed`` (int64), so that a resumed run draws
the same random bits.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

from .codes import CodeMap, minifloat

__all__ = ["BlockFormat", "INT8", "INT4", "BLOCK_FORMATS", "STATE_PRECISIONS", "MOMENTS", "parse_state_precision",
           "DEFAULT_MIN_COMPRESSED_NUMEL"]

#: The moments' state keys, in torch's names; the maximum is the last.
MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

DEFAULT_MIN_COMPRESSED_NUMEL = 4096


@dataclasses.dataclass(frozen=True)
class BlockFormat:
    """A block-wise format: ``block`` elements per float32 scale, a code map for m and one for v and v̂."""

    name: str
    bits: int
    block: int
    exp_avg: CodeMap
    exp_avg_sq: CodeMap  # also the maximum's, never stored below its previous value

    def __hash__(self) -> int:  # (kept by the dataclass: a format is hashed at every step, per tensor)
        return self._hash

    @functools.cached_property
    def _hash(self) -> int:
        return hash((self.name, self.bits, self.block, self.exp_avg, self.exp_avg_sq))

    def code_map(self, key: str) -> CodeMap:
        return self.exp_avg if key == "exp_avg" else self.exp_avg_sq

    def bytes_per_element(self) -> float:
        """State bytes per parameter for three moments, scales included."""
        return 3 * (self.bits / 8 + 4 / self.block)


INT8 = BlockFormat("int8", 8, 256, minifloat(8, 4, signed=True), minifloat(8, 3, signed=False, zero=False))
INT4 = BlockFormat("int4", 4, 128, minifloat(4, 1, signed=True), minifloat(4, 0, signed=False, zero=False))
BLOCK_FORMATS = {"int8": INT8, "int4": INT4}

#: The accepted values of ``state_precision`` (strings name dtypes, too: "float32", "bfloat16", ...).
STATE_PRECISIONS: tuple[Any, ...] = (None, torch.float32, torch.float64, torch.bfloat16, "int8", "int4")
_BY_NAME = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
            "torch.float32": torch.float32, "torch.float64": torch.float64, "torch.bfloat16": torch.bfloat16,
            "int8": "int8", "int4": "int4"}


def parse_state_precision(value: Any) -> Any:
    """The canonical ``state_precision``: None, a torch.dtype, or ``"int8"``/``"int4"``; ValueError otherwise."""
    if value is None or (isinstance(value, torch.dtype) and value in STATE_PRECISIONS):
        return value
    if isinstance(value, str) and value.strip().lower() in _BY_NAME:
        return _BY_NAME[value.strip().lower()]
    choices = "None, torch.float32, torch.float64, torch.bfloat16, 'int8', 'int4' (dtype names as strings too)"
    raise ValueError(f"Invalid state_precision: {value!r} (expected one of {choices})")
