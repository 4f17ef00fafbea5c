"""The multi-tensor step: the readable path's operations, each applied to a whole list at once.

Every ``torch._foreach_*`` call below is the list form of one line of
:meth:`amsgrad.Adam.step_param` (and :meth:`amsgrad.AMSGrad.get_mv`, :meth:`amsgrad.AdamX.get_mv`),
in the same order with the same scalars, so on CPU the result equals the readable path bit for
bit. A decaying β1 or AdamNC's β2,t changes with the step count: the moments of tensors with
the same count are then updated together. It runs on any
device and dtype torch's ``_foreach`` ops take, and :func:`torch.compile` traces it; it costs
a pass over memory per operation and a few list-sized temporaries, like
``torch.optim.Adam(foreach=True)``.
"""

from __future__ import annotations

import torch

from .settings import StepSettings

__all__ = ["foreach_step", "read_steps"]


def read_steps(steps: list[torch.Tensor]) -> list[float]:
    """The values of 0-d step tensors, with one synchronisation rather than one per tensor."""
    if len(steps) == 1:
        return [float(steps[0])]
    return torch.stack(steps).tolist() if steps else []  # mixed float32/float64 steps promote


def foreach_step(
    settings: StepSettings,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor] | None,
    steps: list[torch.Tensor],
) -> None:
    """One step of real tensors (complex ones arrive as their real views); ``grads`` stay unmodified."""
    s = settings
    if s.maximize:
        grads = torch._foreach_neg(grads)
    if s.weight_decay != 0.0:
        if s.decoupled:
            torch._foreach_mul_(params, s.decay_factor)
        else:
            grads = torch._foreach_add(grads, params, alpha=s.weight_decay)

    torch._foreach_add_(steps, 1)
    step_values = read_steps(steps)
    scalars = [s.update_scalars(t) for t in step_values]

    # m_t = β1 m_{t-1} + (1 - β1) g_t ;  v_t = β2 v_{t-1} + (1 - β2) g_t²
    if s.plain:
        _moments(s.beta1, s.beta2, grads, exp_avgs, exp_avg_sqs)
    else:  # β1,t and β2,t of each step count (a group's tensors mostly share one)
        for t, indices in _by_value(step_values).items():
            pick = _picker(indices, len(step_values))
            _moments(s.beta1_at(t), s.beta2_at(t), pick(grads), pick(exp_avgs), pick(exp_avg_sqs))

    second_moments = exp_avg_sqs
    if s.max_of is not None:
        if s.max_of == "corrected":  # v̂_t = max(v̂_{t-1}, v_t / (1 - β2^t))
            torch._foreach_maximum_(max_exp_avg_sqs, torch._foreach_div(exp_avg_sqs, [c2 for c2, _, _ in scalars]))
        else:  # v̂_t = max(v̂_{t-1}, v_t), AdamX's v̂_{t-1} rescaled first
            if s.max_of == "adamx":
                factors = [s.adamx_factor(t) for t in step_values]
                if any(factor != 1.0 for factor in factors):
                    torch._foreach_mul_(max_exp_avg_sqs, factors)
            torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        second_moments = max_exp_avg_sqs

    # θ_t = θ_{t-1} - step size · m_t / (√v_t / divisor + ε)
    denominators = torch._foreach_sqrt(second_moments)
    divisors = [divisor for _, divisor, _ in scalars]
    if any(divisor != 1.0 for divisor in divisors):
        torch._foreach_div_(denominators, divisors)
    torch._foreach_add_(denominators, s.eps)
    torch._foreach_addcdiv_(params, exp_avgs, denominators, [-step_size for _, _, step_size in scalars])


def _moments(beta1, beta2, grads, exp_avgs, exp_avg_sqs) -> None:
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)


def _by_value(values: list[float]) -> dict[float, list[int]]:
    groups: dict[float, list[int]] = {}
    for index, value in enumerate(values):
        groups.setdefault(value, []).append(index)
    return groups


def _picker(indices: list[int], size: int):
    if len(indices) == size:
        return lambda tensors: tensors
    return lambda tensors: [tensors[i] for i in indices]
