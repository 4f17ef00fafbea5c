"""The table of optimizer configurations that drives the generic tests.

A new variant gets the whole suite by adding a row: a name, the class, and its keyword
arguments. Each row also says how to compute the same update from the formulas
(:mod:`tests.optimizers.reference`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

import amsgrad


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str
    cls: type
    kwargs: dict[str, Any]

    def make(self, params, **overrides):
        """The optimizer; an override ``betas=(β1, β2)`` is ``beta1=β1`` for AdamNC, whose β2,t is scheduled."""
        if self.cls is amsgrad.AdamNC and "betas" in overrides:
            overrides = dict(overrides)
            overrides["beta1"] = overrides.pop("betas")[0]
        return self.cls(params, **{**self.kwargs, **overrides})

    def accepts(self, **overrides) -> bool:
        """Whether the row takes these settings too (``capturable=True`` refuses a ``state_precision``, say)."""
        try:
            self.make([amsgrad_probe_param()], **overrides)
        except ValueError:
            return False
        return True

    @property
    def settings(self) -> dict[str, Any]:
        """Every setting that changes the math, with the class defaults filled in."""
        probe = self.make([amsgrad_probe_param()])
        group = probe.param_groups[0]
        return {key: value for key, value in group.items() if key != "params"}

    @property
    def decoupled_decay(self) -> bool:
        settings = self.settings
        return settings["weight_decay"] > 0 and settings["decoupled_weight_decay"]

    def __repr__(self) -> str:  # shown in test ids
        return self.name


def amsgrad_probe_param():
    import torch

    return torch.nn.Parameter(torch.zeros(1))


def slower_beta2(t: float) -> float:
    """A β2 schedule for AdamNC other than 1 - 1/t (module-level: a group holding it pickles)."""
    return 1.0 - 0.9 / t


L2 = 0.05
DECOUPLED = amsgrad.WeightDecay(0.05)
ABSOLUTE = amsgrad.WeightDecay(0.01, absolute=True)

CONFIGS = [
    OptimizerConfig("adam", amsgrad.Adam, dict(lr=0.05)),
    OptimizerConfig("adam-torch-form", amsgrad.Adam, dict(lr=0.05, eps=1e-8, optimized_update=False)),
    OptimizerConfig("adam-l2", amsgrad.Adam, dict(lr=0.05, weight_decay=L2)),
    OptimizerConfig("adam-decoupled", amsgrad.Adam, dict(lr=0.05, weight_decay=DECOUPLED)),
    OptimizerConfig("adam-absolute", amsgrad.Adam, dict(lr=0.05, weight_decay=ABSOLUTE)),
    OptimizerConfig("adam-maximize", amsgrad.Adam, dict(lr=0.05, maximize=True)),
    OptimizerConfig("adam-no-bias-correction", amsgrad.Adam, dict(lr=0.05, eps=1e-8, bias_correction=False)),
    OptimizerConfig("amsgrad", amsgrad.AMSGrad, dict(lr=0.05)),
    OptimizerConfig("amsgrad-torch-form", amsgrad.AMSGrad, dict(lr=0.05, eps=1e-8, optimized_update=False)),
    OptimizerConfig("amsgrad-l2", amsgrad.AMSGrad, dict(lr=0.05, weight_decay=L2, betas=(0.8, 0.99))),
    OptimizerConfig("amsgrad-decoupled", amsgrad.AMSGrad, dict(lr=0.05, weight_decay=DECOUPLED)),
    OptimizerConfig("amsgrad-absolute", amsgrad.AMSGrad, dict(lr=0.05, weight_decay=ABSOLUTE)),
    OptimizerConfig("amsgrad-maximize", amsgrad.AMSGrad, dict(lr=0.05, maximize=True)),
    OptimizerConfig("amsgrad-max-corrected", amsgrad.AMSGrad, dict(lr=0.05, max_of="corrected")),
    OptimizerConfig(
        "amsgrad-max-corrected-torch-form",
        amsgrad.AMSGrad,
        dict(lr=0.05, max_of="corrected", eps=1e-8, optimized_update=False),
    ),
    OptimizerConfig("amsgrad-algorithm-2", amsgrad.AMSGrad, dict(lr=0.05, eps=0.0, bias_correction=False)),
    OptimizerConfig("amsgrad-off", amsgrad.AMSGrad, dict(lr=0.05, amsgrad=False)),
    OptimizerConfig("amsgrad-beta1-zero", amsgrad.AMSGrad, dict(lr=0.05, betas=(0.0, 0.9))),
    # a state at least float64: float64 parameters as they are, narrower ones (float32, complex64) widened and
    # stepped by the compressed step (kernels.compressed) on every path
    OptimizerConfig("amsgrad-float64-state", amsgrad.AMSGrad, dict(lr=0.05, state_precision=torch.float64)),
    OptimizerConfig("adam-l2-float64-state", amsgrad.Adam, dict(lr=0.05, weight_decay=L2, state_precision="float64")),
    # step counters on the parameters' device, bias corrections as tensor operations (kernels.tensor_steps)
    OptimizerConfig("amsgrad-capturable", amsgrad.AMSGrad, dict(lr=0.05, capturable=True)),
    OptimizerConfig("adam-capturable-torch-form-l2", amsgrad.Adam,
                    dict(lr=0.05, eps=1e-8, optimized_update=False, weight_decay=L2, capturable=True)),
    # β1,t = β1 λ^(t-1), first-moment correction 1 - ∏ β1,k (a strong λ, to matter within a test's steps)
    OptimizerConfig("adam-beta1-decay", amsgrad.Adam, dict(lr=0.05, beta1_decay=0.9)),
    OptimizerConfig("adam-beta1-decay-torch-form", amsgrad.Adam, dict(lr=0.05, eps=1e-8, optimized_update=False, beta1_decay=0.95)),
    OptimizerConfig("amsgrad-beta1-decay", amsgrad.AMSGrad, dict(lr=0.05, beta1_decay=0.9, weight_decay=L2)),
    OptimizerConfig("amsgrad-max-corrected-beta1-decay", amsgrad.AMSGrad, dict(lr=0.05, max_of="corrected", beta1_decay=0.9)),
    OptimizerConfig("amsgrad-beta1-decay-capturable", amsgrad.AMSGrad, dict(lr=0.05, beta1_decay=0.9, capturable=True)),
    # AdamNC (the paper's Algorithm 3): β2,t = 1 - 1/t, or a schedule function
    OptimizerConfig("adamnc", amsgrad.AdamNC, dict(lr=0.05)),
    OptimizerConfig("adamnc-beta1-decay-decoupled", amsgrad.AdamNC, dict(lr=0.05, beta1=0.8, beta1_decay=0.9, weight_decay=DECOUPLED)),
    OptimizerConfig("adamnc-schedule-maximize", amsgrad.AdamNC, dict(lr=0.05, beta2_schedule=slower_beta2, maximize=True)),
    OptimizerConfig("adamnc-capturable", amsgrad.AdamNC, dict(lr=0.05, beta1_decay=0.9, capturable=True)),
    # AdamX (Tran & Phong): with λ = 1 AMSGrad's Algorithm 2; with λ < 1 its rescaled maximum
    OptimizerConfig("adamx", amsgrad.AdamX, dict(lr=0.05)),
    OptimizerConfig("adamx-beta1-decay", amsgrad.AdamX, dict(lr=0.05, beta1_decay=0.9)),
    OptimizerConfig("adamx-beta1-decay-bias-correction-l2", amsgrad.AdamX,
                    dict(lr=0.05, beta1_decay=0.95, bias_correction=True, weight_decay=L2, eps=0.0)),
    OptimizerConfig("adamx-beta1-decay-capturable", amsgrad.AdamX, dict(lr=0.05, beta1_decay=0.9, capturable=True)),
]

AMSGRAD_CONFIGS = [config for config in CONFIGS if config.settings.get("amsgrad") and config.settings["max_of"] != "adamx"]
ADAMX_CONFIGS = [config for config in CONFIGS if config.settings.get("max_of") == "adamx"]


def accepting(**overrides) -> list[OptimizerConfig]:
    """The rows that take ``overrides``: a suite about ``nonfinite`` or ``state_precision`` runs on these."""
    return [config for config in CONFIGS if config.accepts(**overrides)]
