r"""The multi-tensor step with tensor step counts: no host synchronisation, one graph under :func:`torch.compile`.

The other fast paths read each step count :math:`t` on the host, as a Python number, to compute
the bias corrections :math:`1 - β_1^t` and :math:`1 - β_2^t` as scalars. That read is a device
synchronisation (CUDA), and under :func:`torch.compile` a number that changes every step is a
new constant, hence a new graph every step. Here the counts stay 0-d tensors (on the
parameters' device with ``capturable=True``) and every per-step number is a tensor operation:

.. math::

    c_1 = 1 - β_1^t, \quad c_2 = 1 - β_2^t, \quad
    θ_t = θ_{t-1} + \frac{(-\text{step size}) \cdot m_t}{\text{denominator}}

with the step size and denominator of :meth:`amsgrad.Adam.adam_update` (``max_of="corrected"``
divides :math:`v_t` by :math:`c_2` before the maximum, and uses 1 for :math:`c_2` afterwards).
A decaying β1 (:math:`β_{1,t} = β_1 λ^{t-1}`, :math:`c_1 = 1 - β_1^t λ^{t(t-1)/2}`), AdamNC's
:math:`β_{2,t} = 1 - 1/t` and AdamX's rescaled maximum are tensor operations on the step counts
too; a ``beta2_schedule`` function is not (it takes a number), and runs on the other paths.

The settings' numbers α, β1, β2, ε, λ come in one small float64 tensor (:func:`coefficients`),
made before the step (under :func:`torch.compile`, before the graph, which takes it as an
input): a scheduler that changes α or β every step, and the step count itself, then change only
the values fed to the same graph. From the step counts, :func:`tensor_step` computes each
tensor's step size and corrections with a few vector operations over all tensors at once, in
float64 as the readable path does (a float32 step count widens exactly), and returns them: as
an output of the compiled graph they are computed once, where the compiler would otherwise
recompute powers and divisions inside every element loop. What changes the code (the decay
mode, the update form, ``max_of``, ...) is :class:`TensorStepConfig`, fixed per graph.

Every line is the readable path's operation in list form, with the same scalars computed in
the same order (a scalar argument becomes a 0-d tensor operand: ``add_(g, alpha=1 - β1)`` is
``addcmul_(g, 1 - β1)``, the same fused multiply-add on CPU); the update ``addcdiv_`` becomes
its three roundings, a multiplication, a division and an addition. Only the powers may round
differently (a vectorised ``pow``); the tests allow a relative 1e-12 in float64.
"""

from __future__ import annotations

import array
import dataclasses
import functools

import torch

from .settings import StepSettings

__all__ = ["TensorStepConfig", "coefficients", "tensor_step"]


@dataclasses.dataclass(frozen=True)
class TensorStepConfig:
    """What selects the operations of a step (as opposed to the numbers they are fed)."""

    maximize: bool
    decay: str  # "none", "coupled", "decoupled" or "absolute"
    optimized_update: bool
    bias_correction: bool
    max_of: str | None  # None for Adam, else "raw", "corrected" or "adamx"
    beta1_decays: bool = False  # β1,t = β1 λ^(t-1)
    beta2_inverse: bool = False  # AdamNC's β2,t = 1 - 1/t

    @classmethod
    def from_settings(cls, s: StepSettings) -> "TensorStepConfig":
        if s.weight_decay == 0.0:
            decay = "none"
        elif not s.decoupled:
            decay = "coupled"
        else:
            decay = "absolute" if s.absolute else "decoupled"
        if s.beta2_schedule not in (None, "inverse"):
            raise ValueError("a beta2_schedule function cannot run on tensor step counts (only the default 1 - 1/t can)")
        return _config(s.maximize, decay, s.optimized_update, s.bias_correction, s.max_of, s.beta1_decay != 1.0,
                       s.beta2_schedule == "inverse")


@functools.lru_cache(maxsize=None)
def _config(*fields) -> TensorStepConfig:
    return TensorStepConfig(*fields)  # one object per combination: a constant for dynamo's guards


def coefficients(config: TensorStepConfig, settings: StepSettings, device: torch.device) -> torch.Tensor:
    """(α, β1, 1 - β1, β2, 1 - β2, ε, λ or the decoupled factor 1 - αλ or 1 - λ, the β1 decay) on
    ``device``, in float64.

    α and β may be tensors (a capturable group's are not read on the host).
    """
    s = settings
    decay = s.weight_decay if config.decay != "absolute" else 1.0 - s.weight_decay
    tensors = isinstance(s.lr, torch.Tensor) or isinstance(s.beta1, torch.Tensor) or isinstance(s.beta2, torch.Tensor)
    if device.type == "cpu" and not tensors:
        if config.decay == "decoupled":
            decay = 1.0 - s.lr * s.weight_decay
        values = array.array("d", (s.lr, s.beta1, 1.0 - s.beta1, s.beta2, 1.0 - s.beta2, s.eps, decay, s.beta1_decay))
        # from a buffer of doubles: a third of the time of torch.tensor(values), and this runs every step
        return torch.frombuffer(values, dtype=torch.float64)
    dtype = torch.float32 if device.type == "mps" else torch.float64

    def tensor(value) -> torch.Tensor:  # a fill, not a copy from the host: no synchronisation
        if isinstance(value, torch.Tensor):
            return value.detach().to(device=device, dtype=dtype).reshape(())
        return torch.full((), value, dtype=dtype, device=device)

    for name, value in (("lr", s.lr), ("betas", s.beta1), ("betas", s.beta2)):
        if isinstance(value, torch.Tensor) and value.device != device:  # only a capturable group keeps tensors
            raise ValueError(
                f"Invalid {name}: a tensor on {value.device} with capturable=True and parameters on {device}: "
                f"copying it to them every step would synchronise (put it on {device}, or pass a number)"
            )

    lr, beta1, beta2 = tensor(s.lr), tensor(s.beta1), tensor(s.beta2)
    decay = 1.0 - lr * s.weight_decay if config.decay == "decoupled" else tensor(decay)
    return torch.stack([lr, beta1, 1.0 - beta1, beta2, 1.0 - beta2, tensor(s.eps), decay, tensor(s.beta1_decay)])


def tensor_step(
    config: TensorStepConfig,
    coefficients: torch.Tensor,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor] | None,
    steps: list[torch.Tensor],
) -> torch.Tensor:
    """One step of real tensors whose step counts ``steps`` are 0-d tensors; ``grads`` stay unmodified.

    Returns the per-tensor numbers it computed (a compiled graph then computes them only once).
    """
    c, n = config, len(params)
    lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, decay, beta1_decay = coefficients.unbind()
    if c.maximize:
        grads = torch._foreach_neg(grads)
    if c.decay in ("decoupled", "absolute"):  # θ ← θ(1 - αλ) or θ(1 - λ)
        torch._foreach_mul_(params, decay)
    elif c.decay == "coupled":  # g + λθ, rounded once like add(θ, alpha=λ)
        grads = torch._foreach_addcmul(grads, params, [decay] * n)

    torch._foreach_add_(steps, 1.0)
    t = torch.stack(steps).to(coefficients.dtype) if (c.bias_correction or c.beta1_decays or c.beta2_inverse) else None

    # m_t = β1 m_{t-1} + (1 - β1) g_t ;  v_t = β2 v_{t-1} + (1 - β2) g_t²  (as add(alpha=) and addcmul(value=)),
    # with β1,t = β1 λ^(t-1) and AdamNC's β2,t = 1 - 1/t where they change with t: one number per tensor
    if c.beta1_decays:
        beta1_t = beta1 * beta1_decay.pow(t - 1.0)
        torch._foreach_mul_(exp_avgs, beta1_t.unbind())
        torch._foreach_addcmul_(exp_avgs, grads, (1.0 - beta1_t).unbind())
    else:
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_addcmul_(exp_avgs, grads, [one_minus_beta1] * n)
    if c.beta2_inverse:
        beta2_t = 1.0 - 1.0 / t
        torch._foreach_mul_(exp_avg_sqs, beta2_t.unbind())
        torch._foreach_addcmul_(exp_avg_sqs, torch._foreach_mul(grads, (1.0 - beta2_t).unbind()), grads)
    else:
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, torch._foreach_mul(grads, one_minus_beta2), grads)

    # Per tensor, as vectors: -step size, then √c2 (torch's form) or c2 (a corrected maximum) where used.
    corrected = c.max_of == "corrected"
    divide = c.bias_correction and not c.optimized_update and not corrected
    if c.bias_correction:
        # as the readable path's 1.0 - beta**t, and 1 - ∏ β1,k = 1 - β1^t λ^(t(t-1)/2) for a decaying β1
        product = beta1.pow(t) * beta1_decay.pow(t * (t - 1.0) / 2.0) if c.beta1_decays else beta1.pow(t)
        c1, c2 = 1.0 - product, 1.0 - beta2.pow(t)
        # α √c2 / c1 or α / c1, each one division (a number divided by a tensor would be two roundings)
        rows = [-torch.div(lr * c2.sqrt() if c.optimized_update and not corrected else lr, c1)]
        rows += ([c2.sqrt()] if divide else []) + ([c2] if corrected else [])
        numbers = torch.stack(rows)
    else:
        numbers = (-lr).expand(1, n)

    second_moments = exp_avg_sqs
    if c.max_of is not None:
        if corrected and c.bias_correction:  # v̂_t = max(v̂_{t-1}, v_t / (1 - β2^t))
            torch._foreach_maximum_(max_exp_avg_sqs, torch._foreach_div(exp_avg_sqs, numbers[-1].unbind()))
        else:  # v̂_t = max(v̂_{t-1}, v_t); AdamX's v̂_{t-1} rescaled by ((1 - β1,t)/(1 - β1,t-1))² first (1 at t = 1)
            if c.max_of == "adamx":
                ratio = (1.0 - beta1 * beta1_decay.pow(t - 1.0)) / (1.0 - beta1 * beta1_decay.pow(t - 2.0))
                factor = torch.where(t == 1.0, torch.ones_like(ratio), ratio * ratio)
                torch._foreach_mul_(max_exp_avg_sqs, factor.unbind())
            torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        second_moments = max_exp_avg_sqs

    # the denominator: √u + ε̂ (optimized_update) or √u/√(1 - β2^t) + ε
    denominators = torch._foreach_sqrt(second_moments)
    if divide:
        torch._foreach_div_(denominators, numbers[1].unbind())
    torch._foreach_add_(denominators, [eps] * n)  # a list: a single tensor here would be read as a constant

    # θ_t = θ_{t-1} + (-step size · m_t) / denominator, the order of addcdiv's rounding
    updates = torch._foreach_mul(exp_avgs, numbers[0].unbind())
    torch._foreach_div_(updates, denominators)
    torch._foreach_add_(params, updates)
    return numbers
