r"""The reference compressed step: what the numbers of a step with low-memory state are, in torch ops.

One tensor at a time, on any device. The fast kernels (:mod:`amsgrad.kernels.native`) compute
exactly this, bit for bit, for a constant β1 and β2 (a decaying β1, AdamNC's β2 schedule and
AdamX's rescaled maximum run here only): every line below is one correctly rounded float32 operation
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
    m_t &= \tilde{m}_{t-1} β_{1,t} + g (1 - β_{1,t}) \\
    v_t &= \tilde{v}_{t-1} β_{2,t} + (g g)(1 - β_{2,t}) \\
    u_t &= \max(\tilde{v}^{\max}_{t-1}, v_t) \text{ or } \max(\tilde{v}^{\max}_{t-1}, v_t / (1 - β_2^t))
        \text{ (AMSGrad)}, \quad \max(\tilde{v}^{\max}_{t-1} φ_t, v_t) \text{ (AdamX)}, \quad
        u_t = v_t \text{ (Adam)} \\
    θ_t &= θ + (m_t · (-η_t)) / (\sqrt{u_t} / δ_t + ε)

with :math:`β_{1,t}, β_{2,t}` the group's (constant β1 and β2, or ``beta1_decay``'s and AdamNC's
schedules, :meth:`amsgrad.kernels.StepSettings.beta1_at`, ``beta2_at``), AdamX's factor
:math:`φ_t = ((1 - β_{1,t}) / (1 - β_{1,t-1}))^2` (:meth:`~amsgrad.kernels.StepSettings.adamx_factor`),
the step size :math:`η_t` and divisor :math:`δ_t` of :meth:`amsgrad.kernels.StepSettings.update_scalars`
(both update forms, with or without bias correction). Then :math:`m_t, v_t, u_t` are stored
(to nearest, stochastically, or, for the maximum, up in bfloat16 and, in the block formats, to
nearest but never below :math:`\tilde{v}^{\max}_{t-1}` (φ_t-scaled), see :func:`.blockwise.quantize`)
and θ is written in its dtype, to
nearest even or, with ``stochastic_rounding``, stochastically. The update uses the exact
float32 :math:`m_t, u_t`; only the next step sees them decoded.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import torch

from . import rounding
from .state import Storage, compute_dtype, decode, encode, write_param

if TYPE_CHECKING:  # the formats do not import the kernels (which import them)
    from ..kernels.settings import StepSettings

__all__ = ["compressed_step"]


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def compressed_step(settings: StepSettings, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any],
                    storage: Storage, stochastic_rounding: bool = False) -> None:
    """One step of one real tensor (a complex one as its real view), state in ``storage``; increments ``step``."""
    s = settings
    dtype = compute_dtype(param, storage)
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
    beta1, beta2 = s.beta1_at(t), s.beta2_at(t)  # the constants themselves without a schedule
    m = decode(state, "exp_avg", storage, param) * scalar(beta1) + g * scalar(1.0 - beta1)
    v = decode(state, "exp_avg_sq", storage, param) * scalar(beta2) + (g * g) * scalar(1.0 - beta2)
    u = v
    if amsgrad:
        candidate = v / scalar(c2) if s.max_of == "corrected" else v
        previous = decode(state, "max_exp_avg_sq", storage, param)
        factor = s.adamx_factor(t)
        if factor != 1.0:
            previous = previous * scalar(factor)
        u = torch.maximum(previous, candidate)
    d = rounding.sqrt_float32(u)
    if divisor != 1.0:
        d = d / scalar(divisor)
    d = d + scalar(s.eps)
    theta = theta + (m * scalar(-step_size)) / d

    step = int(t)
    encode(state, "exp_avg", storage, m, seed, step)
    encode(state, "exp_avg_sq", storage, v, seed, step)
    if amsgrad:
        encode(state, "max_exp_avg_sq", storage, u, seed, step, floor=previous)
    write_param(param, theta, stochastic_rounding, seed, step)
