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

    m = beta1 * state["m"] + (1 - beta1) * g
    v = beta2 * state["v"] + (1 - beta2) * g * g
    if settings["bias_correction"]:
        c1, c2 = 1 - beta1**t, 1 - beta2**t
    else:
        c1, c2 = 1.0, 1.0

    new_state = {"t": t, "m": m, "v": v}
    denominator_v = v
    if settings.get("amsgrad", False):
        if settings["max_of"] == "corrected":
            v_max = torch.maximum(state["v_max"], v / c2)
            c2 = 1.0  # already corrected
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
    return {"t": 0, "m": zeros, "v": zeros, "v_max": zeros}
