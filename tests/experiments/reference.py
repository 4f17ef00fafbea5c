"""The experiments' update rules written once more, from the formulas, in plain Python floats.

Independent of both engines: β1,t from a running power of λ, ∏ β1,k as a running product
(not the closed form β1^t λ^(t(t-1)/2) the engines use), no fused multiply-add.
"""

from __future__ import annotations

import math

from amsgrad.experiments.problems import Problem, gradients
from amsgrad.experiments.variants import Settings, Variant


def run(problem: Problem, variant: Variant, settings: Settings, steps: int) -> tuple[list[float], list[float]]:
    """x_t and R(t)/t for t = 1 … steps."""
    beta1, beta2 = settings.betas
    decay, eps = settings.beta1_decay, settings.eps
    x = m = v = v_hat = regret = 0.0
    decay_power, product, beta1_previous = 1.0, 1.0, beta1
    xs, averages = [], []
    for t, g in enumerate(gradients(problem, 1, steps).tolist(), start=1):
        xs.append(x)
        regret += g * (x + 1.0)
        averages.append(regret / t)
        beta1_t = beta1 * decay_power  # β1,t = β1 λ^(t-1)
        product *= beta1_t  # ∏_{k<=t} β1,k
        beta2_t = 1.0 - 1.0 / t if variant.beta2_schedule == "inverse" else beta2
        m = beta1_t * m + (1.0 - beta1_t) * g
        v = beta2_t * v + (1.0 - beta2_t) * g * g
        correction1 = 1.0 - product if variant.bias_correction else 1.0
        correction2 = 1.0 - beta2**t if variant.bias_correction else 1.0
        rule = variant.max_rule
        if rule == "none":
            second = v
        elif rule == "raw":
            v_hat = max(v_hat, v)
            second = v_hat
        elif rule == "corrected":
            v_hat = max(v_hat, v / correction2)
            second, correction2 = v_hat, 1.0
        else:  # AdamX (Tran & Phong, Algorithm 2): v̂_1 = v_1
            v_hat = v if t == 1 else max(((1.0 - beta1_t) / (1.0 - beta1_previous)) ** 2 * v_hat, v)
            second = v_hat
        alpha = settings.lr / math.sqrt(t) if settings.schedule == "inv-sqrt" else settings.lr
        if settings.optimized_update:
            x -= alpha * math.sqrt(correction2) / correction1 * m / (math.sqrt(second) + eps)
        else:
            x -= alpha / correction1 * m / (math.sqrt(second / correction2) + eps)
        x = min(max(x, -1.0), 1.0)
        beta1_previous = beta1_t
        decay_power *= decay
    return xs, averages
