r"""The reference compressed step: what the numbers of a step with low-memory state are, in torch ops.

One tensor at a time, on any device. The fast kernels (:mod:`amsgrad.kernels.native`) compute
exactly this, bit for bit: every line below is one correctly rounded float32 operation
(``*``, ``+``, ``/``, ``maximum``, and ``sqrt`` through :func:`.rounding.sqrt_float32`, since
torch's own float32 ``sqrt`` on CPU is not correctly rounded) on float32 numbers, with the
group's scalars rounded to float32 first, so there is only one way to evaluate it. (The float32 kernel of
:mod:`amsgrad.kernels.native` instead follows torch's ops, with their fused multiply-adds,
which is why a float32 state is not stored through this path.)

For each element, with :math:`\tilde{x}` the decoded state (see :mod:`.blockwise`,
:mod:`.rounding`), σ = -1 under ``maximize`` and 1 otherwise:

.. math::

    g &\leftarrow σ g, \quad θ \leftarrow θ·(1 - αλ) \text{ (decoupled)}, \quad
        g \leftarrow g + λθ \text{ (coupled)} \\
    m_t &= \tilde{m}_{t-1} β_1 + g (1 - β_1) \\
    v_t &= \tilde{v}_{t-1} β_2 + (g g)(1 - β_2) \\
    u_t &= \max(\tilde{v}^{\max}_{t-1}, v_t) \text{ or } \max(\tilde{v}^{\max}_{t-1}, v_t / (1 - β_2^t))
        \text{ (AMSGrad)}, \quad u_t = v_t \text{ (Adam)} \\
    θ_t &= θ + (m_t · (-η_t)) / (\sqrt{u_t} / δ_t + ε)

with the step size :math:`η_t` and divisor :math:`δ_t` of :meth:`amsgrad.kernels.StepSettings.update_scalars`
(both update forms, with or without bias correction). Then :math:`m_t, v_t, u_t` are stored
(to nearest, stochastically, or, for the maximum, up) and θ is written in its dtype, to
nearest even or, with ``stochastic_rounding``, stochastically. The update uses the exact
float32 :math:`m_t, u_t`; only the next step sees them decoded.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import torch

from ..kernels.settings import StepSettings
from . import blockwise, rounding
from .formats import BLOCK_FORMATS, MOMENTS, BlockFormat

__all__ = ["Storage", "storage_for", "init_storage", "decode", "encode", "compressed_step"]


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


def compute_dtype(param: torch.Tensor) -> torch.dtype:
    """The arithmetic's dtype: float32, or the parameter's if wider (float64)."""
    return torch.promote_types(param.dtype, torch.float32)


def storage_for(precision: Any, param: torch.Tensor, min_compressed_numel: int) -> Storage:
    """The storage that ``state_precision`` (canonical) gives ``param``."""
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
            state[key] = torch.zeros_like(param, dtype=storage.dtype, memory_format=torch.contiguous_format)


def decode(state: dict[str, Any], key: str, storage: Storage, param: torch.Tensor) -> torch.Tensor:
    """The moment ``key`` as a tensor shaped like ``param``, in the arithmetic's dtype."""
    dtype = compute_dtype(param)
    if storage.kind == "block":
        fmt = storage.block_format
        values = blockwise.dequantize(state[f"{key}_codes"], state[f"{key}_scales"], fmt.code_map(key), fmt.block,
                                      param.numel())
        return values.to(dtype).reshape(param.shape)
    return state[key].to(dtype)


def encode(state: dict[str, Any], key: str, storage: Storage, value: torch.Tensor, seed: int | None = None,
           step: int = 0) -> None:
    """Store ``value`` (the new moment) into the state, rounding as the storage says."""
    if storage.kind == "block":
        fmt = storage.block_format
        codes, scales = blockwise.quantize(value, fmt.code_map(key), fmt.block, round_up=key == "max_exp_avg_sq")
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


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def compressed_step(settings: StepSettings, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any],
                    storage: Storage, stochastic_rounding: bool = False) -> None:
    """One step of one real tensor (a complex one as its real view), state in ``storage``; increments ``step``."""
    s = settings
    dtype = compute_dtype(param)
    scalar = _f32 if dtype == torch.float32 else float
    amsgrad = s.max_of is not None
    state["step"] += 1
    t = float(state["step"])
    c2, divisor, step_size = s.update_scalars(t)
    seed = int(state["rounding_seed"]) if "rounding_seed" in state else None

    g = grad.to(dtype) * scalar(-1.0 if s.maximize else 1.0)
    theta = param.to(dtype)
    if s.weight_decay != 0.0:
        if s.decoupled:
            theta = theta * scalar(s.decay_factor)
        else:
            g = g + theta * scalar(s.weight_decay)
    m = decode(state, "exp_avg", storage, param) * scalar(s.beta1) + g * scalar(1.0 - s.beta1)
    v = decode(state, "exp_avg_sq", storage, param) * scalar(s.beta2) + (g * g) * scalar(1.0 - s.beta2)
    u = v
    if amsgrad:
        candidate = v / scalar(c2) if s.max_of == "corrected" else v
        u = torch.maximum(decode(state, "max_exp_avg_sq", storage, param), candidate)
    d = rounding.sqrt_float32(u)
    if divisor != 1.0:
        d = d / scalar(divisor)
    d = d + scalar(s.eps)
    theta = theta + (m * scalar(-step_size)) / d

    step = int(t)
    encode(state, "exp_avg", storage, m, seed, step)
    encode(state, "exp_avg_sq", storage, v, seed, step)
    if amsgrad:
        encode(state, "max_exp_avg_sq", storage, u, seed, step)
    write_param(param, theta, stochastic_rounding, seed, step)
