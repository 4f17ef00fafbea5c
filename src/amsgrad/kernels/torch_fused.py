"""torch's fused Adam kernels (``torch._fused_adam_``, ``torch._fused_adamw_``), for our settings.

torch's kernel computes, per element and for a step tensor holding t,

.. math::

    θ ← θ - \\frac{α}{1 - β_1^t} \\cdot \\frac{m_t}{\\sqrt{u_t} / \\sqrt{1 - β_2^t} + ε}

with :math:`u_t` = :math:`v_t` or the running maximum of raw :math:`v_t`, after coupled L2
(``_fused_adam_``) or θ ← θ(1 - αλ) (``_fused_adamw_``). Our other settings become arguments:

* ``optimized_update=True`` (θ ← θ - α √(1-β2^t)/(1-β1^t) · m / (√u + ε̂)) is the same update
  with ε = ε̂ / √(1 - β2^t), which depends on t: one kernel call per distinct step value;
* ``bias_correction=False`` is the kernel given a scratch step tensor holding 2^62, for which
  β^t, even for the largest β below 1, is below 2^-500, so that 1 - β^t is exactly 1;
* absolute decay θ ← θ(1 - λ) is ``_fused_adamw_`` with decay λ/α, nudged by an ulp if needed
  so that 1 - α·(λ/α) rounds to 1 - λ exactly (α = 0: one ``_foreach_mul_`` first).

The maximum of *corrected* :math:`v_t` has no such mapping; it runs on our own kernel
(:mod:`amsgrad.kernels.native`) or on the multi-tensor path.
"""

from __future__ import annotations

import math

import torch

from .settings import StepSettings

__all__ = ["supports", "torch_fused_step"]

# Step value given to the kernel for bias_correction=False: β^(2^62) == 0 for every β in [0, 1).
NO_BIAS_CORRECTION_STEP = 2.0**62


def supports(settings: StepSettings) -> bool:
    """Whether torch's kernel can compute these settings (everything but the corrected maximum)."""
    return settings.max_of != "corrected"


def torch_fused_step(
    settings: StepSettings,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor] | None,
    step_values: list[float],
) -> None:
    """One step of contiguous tensors of one device and dtype whose steps already hold ``step_values``."""
    s = settings
    kernel, weight_decay = torch._fused_adam_, s.weight_decay
    if s.weight_decay != 0.0 and s.decoupled:
        kernel = torch._fused_adamw_
        if s.absolute:
            weight_decay = _absolute_decay_as_relative(s.weight_decay, s.lr)
            if weight_decay is None:  # α = 0: decay first, then a plain step
                torch._foreach_mul_(params, s.decay_factor)
                kernel, weight_decay = torch._fused_adam_, 0.0

    device = params[0].device
    for t, members in _group_by_value(step_values).items():
        pick = (lambda tensors: tensors) if len(members) == len(params) else (lambda tensors: [tensors[i] for i in members])
        _, c2 = s.corrections(t)
        eps = s.eps / math.sqrt(c2) if s.optimized_update else s.eps
        # A fill, not a copy from the host: on CUDA it does not wait for the queued kernels.
        step = torch.full((), t if s.bias_correction else NO_BIAS_CORRECTION_STEP, dtype=torch.float32, device=device)
        kernel(
            pick(params),
            pick(grads),
            pick(exp_avgs),
            pick(exp_avg_sqs),
            pick(max_exp_avg_sqs) if max_exp_avg_sqs is not None else [],
            [step] * len(members),
            amsgrad=max_exp_avg_sqs is not None,
            lr=s.lr,
            beta1=s.beta1,
            beta2=s.beta2,
            weight_decay=weight_decay,
            eps=eps,
            maximize=s.maximize,
        )


def _group_by_value(values: list[float]) -> dict[float, list[int]]:
    first = values[0]
    if all(value == first for value in values):
        return {first: list(range(len(values)))}
    groups: dict[float, list[int]] = {}
    for index, value in enumerate(values):
        groups.setdefault(value, []).append(index)
    return groups


def _absolute_decay_as_relative(decay: float, lr: float) -> float | None:
    """λ' with ``1 - lr * λ' == 1 - decay`` exactly in float64, or None if there is none near λ/α."""
    if lr == 0.0:
        return None
    target = 1.0 - decay
    candidate = decay / lr
    for _ in range(4):
        product = 1.0 - lr * candidate
        if product == target:
            return candidate
        # 1 - lr·λ' too large means lr·λ' too small: move λ' up, and vice versa.
        candidate = math.nextafter(candidate, math.inf if product > target else -math.inf)
    return None
