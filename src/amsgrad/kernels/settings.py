"""A param group's settings, read once per step, and the per-step numbers shared by the kernels."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from ..optimizers.schedules import adamx_factor, beta1_at, beta1_product, scheduled_beta2

__all__ = ["StepSettings", "schedule_refusal"]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, torch.Tensor) else value


def _same(value: Any) -> Any:
    return value


@dataclasses.dataclass(slots=True)  # built every step: slots, not frozen, for a cheap __init__
class StepSettings:
    """Everything in a param group that changes the math, as plain Python numbers (α and β may stay
    tensors for the capturable step, :mod:`.tensor_steps`)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    decoupled: bool
    absolute: bool
    maximize: bool
    optimized_update: bool
    bias_correction: bool
    max_of: str | None  # None for Adam, else "raw", "corrected" or "adamx" (AdamX with a decaying β1)
    beta1_decay: float = 1.0  # λ of β1,t = β1 λ^(t-1)
    beta2_schedule: Any = None  # AdamNC's: "inverse" (β2,t = 1 - 1/t) or a callable t -> β2,t; None: constant β2

    @classmethod
    def from_group(cls, group: dict[str, Any], max_of: str | None, read_tensors: bool = True) -> "StepSettings":
        """``max_of``: where the optimizer takes AMSGrad's maximum for this group (None: no maximum).
        ``read_tensors=False``: a tensor α or β stays a tensor (reading it would synchronise)."""
        beta1, beta2 = group["betas"]
        number = _number if read_tensors else _same
        return cls(
            lr=number(group["lr"]),
            beta1=number(beta1),
            beta2=number(beta2),
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled=group["decoupled_weight_decay"],
            absolute=group.get("absolute_weight_decay", False),
            maximize=group["maximize"],
            optimized_update=group["optimized_update"],
            bias_correction=group["bias_correction"],
            max_of=max_of,
            beta1_decay=group.get("beta1_decay", 1.0),
            beta2_schedule=("inverse" if group["beta2_schedule"] is None else group["beta2_schedule"])
            if "beta2_schedule" in group else None,
        )

    @property
    def plain(self) -> bool:
        """Constant β1 and β2 and one of AMSGrad's maxima: what every kernel computes."""
        return self.beta1_decay == 1.0 and self.beta2_schedule is None and self.max_of != "adamx"

    def beta1_at(self, t: float) -> float:
        """:math:`β_{1,t} = β_1 λ^{t-1}` (:mod:`amsgrad.optimizers.schedules`)."""
        return beta1_at(self.beta1, self.beta1_decay, t)

    def beta2_at(self, t: float) -> float:
        """:math:`β_{2,t}`: the constant β2, or AdamNC's schedule at t."""
        if self.beta2_schedule is None:
            return self.beta2
        return scheduled_beta2(None if self.beta2_schedule == "inverse" else self.beta2_schedule, t)

    def adamx_factor(self, t: float) -> float:
        """AdamX's :math:`((1 - β_{1,t}) / (1 - β_{1,t-1}))^2` (1 for the other maxima)."""
        return adamx_factor(self.beta1, self.beta1_decay, t) if self.max_of == "adamx" else 1.0

    @property
    def decay_factor(self) -> float:
        """The decoupled decay θ ← θ·factor, as :meth:`amsgrad.WeightDecay.apply` computes it."""
        return 1.0 - self.weight_decay if self.absolute else 1.0 - self.lr * self.weight_decay

    def corrections(self, t: float) -> tuple[float, float]:
        """:math:`(1 - \\prod_{k \\le t} β_{1,k}, 1 - β_2^t)` (:math:`1 - β_1^t` for a constant β1), or
        ``(1, 1)`` without bias correction (as ``Adam``)."""
        if not self.bias_correction:
            return 1.0, 1.0
        return 1.0 - beta1_product(self.beta1, self.beta1_decay, t), 1.0 - self.beta2**t

    def update_scalars(self, t: float) -> tuple[float, float, float]:
        """``(c2, √c2 divisor of the denominator, step size)`` of :meth:`amsgrad.Adam.adam_update` at step t.

        ``c2`` is :math:`1 - β_2^t`, which the maximum of corrected :math:`v_t` divides by; the
        update itself then uses 1 in its place. The divisor is 1 where the update does not divide.
        """
        c1, c2 = self.corrections(t)
        c2_update = 1.0 if self.max_of == "corrected" else c2
        if self.optimized_update:
            return c2, 1.0, self.lr * math.sqrt(c2_update) / c1
        return c2, math.sqrt(c2_update), self.lr / c1


def schedule_refusal(settings: StepSettings, fallback: str = "the multi-tensor path") -> str:
    """Why ``fused=True`` is refused for a group whose β1 or β2 changes with t (not ``settings.plain``)."""
    what = ("AdamNC's beta2_schedule" if settings.beta2_schedule is not None else
            "AdamX's rescaled maximum" if settings.max_of == "adamx" else f"beta1_decay={settings.beta1_decay!r}")
    return (f"Invalid fused: True with {what}: no fused kernel computes a step whose beta1 or beta2 changes with "
            f"t (beta1_decay != 1, AdamNC, AdamX with a decaying beta1). Use fused=None to fall back to {fallback}.")
