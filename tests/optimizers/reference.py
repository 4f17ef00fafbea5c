"""A float64 reference written directly from the formulas, one element-wise update at a time.

It shares no code with the package: new tensors everywhere, the bias corrections spelled
out, the paper's notation for names.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def reference_step(
    theta: torch.Tensor,
    g: torch.Tensor,
    state: dict[str, Any],
    settings: dict[str, Any],
) -> tuple[torch.Tensor, dict[str, Any]]:
    """One step from θ_{t-1}, g_t and the state after t-1 steps; returns θ_t and the new state."""
    alpha = float(settings["lr"])
    beta1, beta2 = settings["betas"]
    eps = settings["eps"]
    lam = settings["weight_decay"]
    t = state["t"] + 1

    if settings["maximize"]:
        g = -g
    if lam:
        if not settings["decoupled_weight_decay"]:
            g = g + lam * theta
        elif settings["absolute_weight_decay"]:
            theta = theta * (1 - lam)
        else:
            theta = theta * (1 - alpha * lam)

    # β1,t = β1 λ^(t-1) from a running power of λ; ∏_{k<=t} β1,k as a running product (not the
    # closed form β1^t λ^(t(t-1)/2) that the package uses)
    decay = settings.get("beta1_decay", 1.0)
    beta1_t = beta1 * state["decay_power"]
    product = state["beta1_product"] * beta1_t
    if "beta2_schedule" in settings:  # AdamNC: β2,t = 1 - 1/t, or the group's function
        schedule = settings["beta2_schedule"]
        beta2_t = 1.0 - 1.0 / t if schedule is None else schedule(float(t))
    else:
        beta2_t = beta2
    m = beta1_t * state["m"] + (1 - beta1_t) * g
    v = beta2_t * state["v"] + (1 - beta2_t) * g * g
    if settings["bias_correction"]:
        c1, c2 = 1 - product, 1 - beta2**t
    else:
        c1, c2 = 1.0, 1.0

    new_state = {"t": t, "m": m, "v": v, "decay_power": state["decay_power"] * decay, "beta1_product": product,
                 "beta1_t": beta1_t}
    denominator_v = v
    if settings.get("amsgrad", False):
        if settings["max_of"] == "corrected":
            v_max = torch.maximum(state["v_max"], v / c2)
            c2 = 1.0  # already corrected
        elif settings["max_of"] == "adamx":  # Tran & Phong: v̂_1 = v_1, then the rescaled maximum
            factor = 1.0 if t == 1 else ((1 - beta1_t) / (1 - state["beta1_t"])) ** 2
            v_max = torch.maximum(factor * state["v_max"], v)
        else:
            v_max = torch.maximum(state["v_max"], v)
        new_state["v_max"] = v_max
        denominator_v = v_max

    if settings["optimized_update"]:
        theta = theta - alpha * math.sqrt(c2) / c1 * m / (torch.sqrt(denominator_v) + eps)
    else:
        theta = theta - alpha / c1 * m / (torch.sqrt(denominator_v) / math.sqrt(c2) + eps)
    return theta, new_state


def initial_state(theta: torch.Tensor) -> dict[str, Any]:
    zeros = torch.zeros_like(theta)
    return {"t": 0, "m": zeros, "v": zeros, "v_max": zeros, "decay_power": 1.0, "beta1_product": 1.0, "beta1_t": 0.0}
