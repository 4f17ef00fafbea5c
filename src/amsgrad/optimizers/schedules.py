r"""The per-step numbers of the decaying β1 (Reddi et al.'s Corollary 1), AdamNC and AdamX.

One definition of each, used by the readable hooks and by every fast path, so that the paths
compute the same floating-point numbers (and the experiments' compiled engine evaluates the
same expressions). ``t`` is the step count after the increment, ``1, 2, …``, a float.

* :func:`beta1_at`: :math:`β_{1,t} = β_1 λ^{t-1}`.
* :func:`beta1_product`: :math:`\prod_{k \le t} β_{1,k} = β_1^t λ^{t(t-1)/2}`, so that the
  first-moment correction is :math:`1 - \prod_{k \le t} β_{1,k}` (which is
  :math:`1 - β_1^t` for λ = 1, bit for bit).
* :func:`inverse_beta2`: AdamNC's :math:`β_{2,t} = 1 - 1/t`, with which
  :math:`v_t = \frac1t \sum_{k \le t} g_k^2`.
* :func:`adamx_factor`: AdamX's :math:`\big((1 - β_{1,t}) / (1 - β_{1,t-1})\big)^2` (1 at
  t = 1, where :math:`\hat v_1 = v_1`; exactly 1 for every t when λ = 1).

>>> beta1_at(0.9, 0.5, 3.0), beta1_product(0.9, 0.5, 3.0)  # 0.9·0.25; 0.9·0.45·0.225
(0.225, 0.091125)
>>> beta1_at(0.9, 1.0, 7.0) == 0.9 and beta1_product(0.9, 1.0, 7.0) == 0.9 ** 7.0
True
>>> inverse_beta2(4.0), adamx_factor(0.9, 1.0, 5.0)
(0.75, 1.0)
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["beta1_at", "beta1_product", "inverse_beta2", "scheduled_beta2", "adamx_factor"]


def beta1_at(beta1: float, decay: float, t: float) -> float:
    """:math:`β_{1,t} = β_1 λ^{t-1}` (``beta1`` itself when λ = 1)."""
    if decay == 1.0:
        return beta1
    return beta1 * decay ** (t - 1.0)


def beta1_product(beta1: float, decay: float, t: float) -> float:
    """:math:`\\prod_{k \\le t} β_{1,k} = β_1^t λ^{t(t-1)/2}` (``beta1 ** t`` when λ = 1)."""
    if decay == 1.0:
        return beta1**t
    return beta1**t * decay ** (t * (t - 1.0) / 2.0)


def inverse_beta2(t: float) -> float:
    """AdamNC's default :math:`β_{2,t} = 1 - 1/t` (the paper's choice for its Theorem 5)."""
    return 1.0 - 1.0 / t


def scheduled_beta2(schedule: Any, t: float) -> float:
    """:math:`β_{2,t}` of AdamNC's ``beta2_schedule``: None is :func:`inverse_beta2`; a function's value is checked."""
    if schedule is None:
        return inverse_beta2(t)
    beta2 = schedule(t)
    if isinstance(beta2, bool) or not isinstance(beta2, numbers.Real) or not 0.0 <= beta2 <= 1.0:
        raise ValueError(f"beta2_schedule({t:g}) returned {beta2!r} (expected a number in [0, 1])")
    return float(beta2)


def adamx_factor(beta1: float, decay: float, t: float) -> float:
    """:math:`\\big((1 - β_{1,t}) / (1 - β_{1,t-1})\\big)^2` for t >= 2; 1 at t = 1 and whenever λ = 1."""
    if t == 1.0 or decay == 1.0:
        return 1.0
    ratio = (1.0 - beta1 * decay ** (t - 1.0)) / (1.0 - beta1 * decay ** (t - 2.0))
    return ratio * ratio
