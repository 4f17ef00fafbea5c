"""One parameter's low-memory state: which storage it gets, and its moments in and out of it.

:func:`storage_for` turns a group's ``state_precision`` into a :class:`Storage` for one parameter;
:func:`init_storage`, :func:`decode` and :func:`encode` create, read and write its moments;
:func:`conform_state` converts a state from whatever layout it has (a float state from
``torch.optim.Adam``, a checkpoint of another precision) into the storage asked for, and
:func:`float_moments` gives the moments as float tensors under torch's keys.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from . import blockwise, rounding
from .formats import BLOCK_FORMATS, MOMENTS, BlockFormat

__all__ = ["Storage", "storage_for", "needs_compressed_step", "compute_dtype", "init_storage", "decode", "encode",
           "write_param", "conform_state", "is_conformed", "has_moment", "float_moments", "state_layout"]


@dataclasses.dataclass(frozen=True)
class Storage:
    """How one parameter's moments are stored.

    ``kind``: ``"float"`` (tensors of ``dtype``, written to nearest, as torch does), ``"bfloat16"``
    (m, v stochastically rounded, v̂ rounded up) or ``"block"`` (``block_format``).
    """

    kind: str
    dtype: torch.dtype | None = None
    block_format: BlockFormat | None = None

    @property
    def stochastic(self) -> bool:
        return self.kind == "bfloat16"


def compute_dtype(param: torch.Tensor, storage: "Storage | None" = None) -> torch.dtype:
    """The arithmetic's dtype: float32, or the parameter's or a float state's if wider (float64)."""
    dtype = torch.promote_types(param.dtype, torch.float32)
    if storage is not None and storage.kind == "float":
        dtype = torch.promote_types(dtype, storage.dtype)
    return dtype


def storage_for(precision: Any, param: torch.Tensor, min_compressed_numel: int) -> Storage:
    """The storage that ``state_precision`` (canonical) gives ``param``.

    Complex parameters, and tensors below ``min_compressed_numel`` elements, keep a float state.
    """
    if param.is_complex() or _is_real_view_of_complex(param):
        wider = isinstance(precision, torch.dtype) and precision != torch.bfloat16
        return Storage("float", torch.promote_types(param.dtype, precision) if wider else param.dtype)
    if precision is None:
        return Storage("float", param.dtype)
    if isinstance(precision, torch.dtype) and precision != torch.bfloat16:
        return Storage("float", torch.promote_types(param.dtype, precision))
    if param.numel() < min_compressed_numel:
        return Storage("float", compute_dtype(param))
    if precision == torch.bfloat16:
        return Storage("bfloat16", torch.bfloat16)
    return Storage("block", block_format=BLOCK_FORMATS[precision])


def init_storage(state: dict[str, Any], storage: Storage, param: torch.Tensor, keys=MOMENTS) -> None:
    """Zero moments for ``keys`` in ``storage`` (codes and scales for a block format)."""
    for key in keys:
        if storage.kind == "block":
            fmt = storage.block_format
            state[f"{key}_codes"] = torch.zeros(blockwise.code_bytes(param.numel(), fmt.bits), dtype=torch.uint8,
                                                device=param.device)
            state[f"{key}_scales"] = torch.zeros(blockwise.block_count(param.numel(), fmt.block), dtype=torch.float32,
                                                 device=param.device)
        else:
            state[key] = torch.zeros_like(param, dtype=storage.dtype, memory_format=torch.preserve_format)


def decode(state: dict[str, Any], key: str, storage: Storage, param: torch.Tensor) -> torch.Tensor:
    """The moment ``key`` as a tensor shaped like ``param``, in the arithmetic's dtype."""
    dtype = compute_dtype(param, storage)
    if storage.kind == "block":
        fmt = storage.block_format
        values = blockwise.dequantize(state[f"{key}_codes"], state[f"{key}_scales"], fmt.code_map(key), fmt.block,
                                      param.numel())
        return values.to(dtype).reshape(param.shape)
    return state[key].to(dtype)


def encode(state: dict[str, Any], key: str, storage: Storage, value: torch.Tensor, seed: int | None = None,
           step: int = 0, floor: torch.Tensor | None = None) -> None:
    """Store ``value`` (the new moment) into the state, rounding as the storage says.

    ``floor``: for the maximum in a block format, the previous decoded maximum (a step's rule, see
    :func:`.blockwise.quantize`: nearest, never below it); without one the maximum is rounded up
    (a state converted or created from float values)."""
    if storage.kind == "block":
        fmt = storage.block_format
        maximum = key == "max_exp_avg_sq"
        codes, scales = blockwise.quantize(value, fmt.code_map(key), fmt.block, round_up=maximum,
                                           floor=floor if maximum else None)
        state[f"{key}_codes"].copy_(codes)
        state[f"{key}_scales"].copy_(scales)
    elif storage.kind == "bfloat16":
        if key == "max_exp_avg_sq":
            rounded = rounding.round_up_bfloat16(value)
        else:
            role = rounding.ROLE_EXP_AVG if key == "exp_avg" else rounding.ROLE_EXP_AVG_SQ
            bits = rounding.random_bits(rounding.rounding_key(seed, step, role), 0, value.numel(), value.device)
            rounded = rounding.stochastic_round_bfloat16(value, bits)
        state[key].copy_(rounded.reshape(state[key].shape))
    else:
        state[key].copy_(value)


def write_param(param: torch.Tensor, value: torch.Tensor, stochastic: bool, seed: int | None, step: int) -> None:
    """θ into its dtype: to nearest even, or stochastically for a bfloat16 parameter."""
    if stochastic and param.dtype == torch.bfloat16:
        bits = rounding.random_bits(rounding.rounding_key(seed, step, rounding.ROLE_PARAM), 0, value.numel(),
                                    value.device)
        param.copy_(rounding.stochastic_round_bfloat16(value, bits).reshape(param.shape))
    elif param.dtype == torch.bfloat16:
        param.copy_(rounding.round_nearest_bfloat16(value).reshape(param.shape))
    else:
        param.copy_(value)


def _is_real_view_of_complex(param: torch.Tensor) -> bool:
    """``torch.view_as_real`` of a complex parameter (how the readable path hands it to the hooks)."""
    base = param._base
    return base is not None and base.is_complex()


def needs_compressed_step(storage: Storage, param: torch.Tensor) -> bool:
    """Whether ``param`` takes the compressed step (:mod:`.step`): any storage but the parameter's own
    dtype, and every bfloat16 parameter (computed in float32, rounded once)."""
    return not (storage.kind == "float" and storage.dtype == param.dtype) or param.dtype == torch.bfloat16


def state_layout(state: dict[str, Any], key: str, numel: int) -> Storage | None:
    """The storage that moment ``key`` of a state is in now (None: absent)."""
    codes = state.get(f"{key}_codes")
    if codes is not None:
        return Storage("block", block_format=_block_format_of(codes, key, numel))
    value = state.get(key)
    if value is None:
        return None
    return Storage("float", value.dtype)


def conform_state(state: dict[str, Any], storage: Storage, param: torch.Tensor) -> None:
    """Convert every moment of ``state`` to ``storage`` (a no-op when it is there already).

    Block formats quantize (the maximum rounded up); bfloat16 rounds m and v to nearest and the
    maximum up; float formats decode. Values are never shared with the state they came from.
    """
    for key in MOMENTS:
        if _in_storage(state, key, storage, param.numel()):
            continue
        current = state_layout(state, key, param.numel())
        value = decode(state, key, current, param)
        for name in (key, f"{key}_codes", f"{key}_scales"):
            state.pop(name, None)
        init_storage(state, storage, param, keys=(key,))
        if storage.kind == "bfloat16":
            rounded = rounding.round_up_bfloat16(value) if key == "max_exp_avg_sq" else \
                rounding.round_nearest_bfloat16(value)
            state[key].copy_(rounded.reshape(state[key].shape))
        else:
            encode(state, key, storage, value)


def is_conformed(state: dict[str, Any], storage: Storage, param: torch.Tensor) -> bool:
    """Whether every moment present in ``state`` is in ``storage`` already (:func:`conform_state` would
    leave it as it is)."""
    numel = param.numel()
    for key in MOMENTS:
        if not _in_storage(state, key, storage, numel):
            return False
    return True


_CODES_KEY = {key: f"{key}_codes" for key in MOMENTS}


def _in_storage(state: dict[str, Any], key: str, storage: Storage, numel: int) -> bool:
    """Whether moment ``key`` of ``state`` is absent or in ``storage`` already. Block formats are the
    same when their formats are; float ones (bfloat16 included, whether written to nearest or
    stochastically) when their dtypes are. It runs for every tensor at every step, so it reads the
    state's layout without making a :class:`Storage` of it."""
    codes = state.get(_CODES_KEY[key])
    if codes is not None:
        return storage.kind == "block" and _block_format_of(codes, key, numel) == storage.block_format
    value = state.get(key)
    return value is None or (storage.kind != "block" and value.dtype == storage.dtype)


def _block_format_of(codes: torch.Tensor, key: str, numel: int) -> BlockFormat:
    for fmt in BLOCK_FORMATS.values():
        if codes.numel() == blockwise.code_bytes(numel, fmt.bits):
            return fmt
    raise ValueError(f"state {key}_codes has {codes.numel()} codes for {numel} elements: no known format")


def has_moment(state: dict[str, Any], key: str) -> bool:
    """Whether ``state`` holds moment ``key``, as a float tensor or as codes."""
    return key in state or f"{key}_codes" in state


def float_moments(state: dict[str, Any], param: torch.Tensor, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The moments present in ``state`` as new float tensors shaped like ``param`` (``dtype``, default the
    parameter's), under torch's keys."""
    out = {}
    for key in MOMENTS:
        layout = state_layout(state, key, param.numel())
        if layout is not None:
            out[key] = decode(state, key, layout, param).to(dtype or param.dtype).reshape(param.shape).clone()
    return out
