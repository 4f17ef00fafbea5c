"""Which optimizer, with which settings: the variants the experiments compare.

A :class:`Variant` names one of the library's optimizers in one configuration (``adam``,
``amsgrad``, the AMSGrad variants, ``adamnc``, ``adamx``); :class:`Settings` holds the
hyperparameters they share (α, β1, β2, the β1 decay λ, ε, the form of the update and the
step-size schedule). Both engines read the same two objects, so an experiment means the same
thing whichever engine runs it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the fast engine never needs torch
    import torch

__all__ = ["Variant", "VARIANTS", "Settings", "SCHEDULES", "MAX_RULES", "BETA2_SCHEDULES", "variant"]

#: Step-size schedules: α_t = α (constant) or α/√t (the paper's theory).
SCHEDULES = ("constant", "inv-sqrt")

#: How the running maximum of the second moment is taken (:attr:`Variant.max_rule`).
MAX_RULES = ("none", "raw", "corrected", "adamx")

#: The second-moment decay of a step (:attr:`Variant.beta2_schedule`): the constant β2, or
#: AdamNC's β2,t = 1 - 1/t.
BETA2_SCHEDULES = ("constant", "inverse")


@dataclass(frozen=True)
class Variant:
    """An optimizer of the library in one configuration.

    Attributes:
        name: the command-line name, e.g. ``"amsgrad-corrected"``.
        label: the display name, e.g. ``"AMSGrad (corrected max)"``.
        amsgrad: keep a running maximum of the second moment.
        max_of: ``"raw"`` or ``"corrected"`` (see :class:`amsgrad.AMSGrad`).
        bias_correction: apply the :math:`1 - β^t` corrections (False: the paper's form).
        summary: one line for ``--help``.
        algorithm: ``"adam"`` (Adam and AMSGrad), ``"adamnc"`` (the paper's Algorithm 3,
            β2,t = 1 - 1/t) or ``"adamx"`` (Tran & Phong's AdamX).
    """

    name: str
    label: str
    amsgrad: bool
    max_of: str = "raw"
    bias_correction: bool = True
    summary: str = ""
    algorithm: str = "adam"

    def make_optimizer(self, params: Any, settings: Settings) -> torch.optim.Optimizer:
        """The library's optimizer for ``params``, configured as this variant with ``settings``."""
        import amsgrad

        common = dict(
            lr=settings.lr,
            betas=settings.betas,
            eps=settings.eps,
            optimized_update=settings.optimized_update,
            bias_correction=self.bias_correction,
        )
        if settings.beta1_decay != 1.0:
            common["beta1_decay"] = settings.beta1_decay
        if self.algorithm == "adamnc":
            beta1 = common.pop("betas")[0]
            del common["optimized_update"], common["bias_correction"]
            return amsgrad.AdamNC(params, beta1=beta1, **common)
        if self.algorithm == "adamx":
            return amsgrad.AdamX(params, **common)
        if self.amsgrad:
            return amsgrad.AMSGrad(params, max_of=self.max_of, **common)
        return amsgrad.Adam(params, **common)

    @property
    def max_rule(self) -> str:
        """One of :data:`MAX_RULES`: no maximum (Adam, AdamNC), of raw v_t, of corrected v_t, AdamX's."""
        if self.algorithm == "adamx":
            return "adamx"
        if not self.amsgrad:
            return "none"
        return self.max_of

    @property
    def max_code(self) -> int:
        """:attr:`max_rule` as the compiled engine's number: its index in :data:`MAX_RULES`."""
        return MAX_RULES.index(self.max_rule)

    @property
    def beta2_schedule(self) -> str:
        """One of :data:`BETA2_SCHEDULES`: AdamNC's β2,t = 1 - 1/t ignores the β2 setting."""
        return "inverse" if self.algorithm == "adamnc" else "constant"

    @property
    def uses_beta2(self) -> bool:
        """Whether the β2 setting changes this variant's trajectory (not for AdamNC)."""
        return self.beta2_schedule == "constant"


#: Every variant the experiments offer, by command-line name.
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("adam", "Adam", amsgrad=False, summary="amsgrad.Adam"),
        Variant("amsgrad", "AMSGrad", amsgrad=True, summary="amsgrad.AMSGrad, maximum of raw v_t (torch, labml)"),
        Variant(
            "amsgrad-corrected",
            "AMSGrad (corrected max)",
            amsgrad=True,
            max_of="corrected",
            summary="maximum of bias-corrected v_t (optax)",
        ),
        Variant(
            "amsgrad-paper",
            "AMSGrad (paper)",
            amsgrad=True,
            bias_correction=False,
            summary="the paper's Algorithm 2: no bias correction",
        ),
        Variant(
            "adam-paper",
            "Adam (paper)",
            amsgrad=False,
            bias_correction=False,
            summary="Adam without bias correction, as the paper analyses it",
        ),
        Variant(
            "adamnc",
            "AdamNC",
            amsgrad=False,
            bias_correction=False,
            algorithm="adamnc",
            summary="the paper's Algorithm 3: beta2_t = 1 - 1/t (v_t the mean of g^2), no bias correction",
        ),
        Variant(
            "adamx",
            "AdamX",
            amsgrad=True,
            bias_correction=False,
            algorithm="adamx",
            summary="Tran & Phong (2019): AMSGrad's maximum rescaled by ((1-beta1_t)/(1-beta1_{t-1}))^2",
        ),
    )
}


def variant(name: str) -> Variant:
    """The variant called ``name``; a ValueError lists the valid names."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(VARIANTS)}") from None


@dataclass(frozen=True)
class Settings:
    """The hyperparameters shared by the variants of one experiment.

    Attributes:
        lr: α; the step size of step t is α (``constant``) or α/√t (``inv-sqrt``).
        betas: (β1, β2), each in [0, 1).
        eps: ε̂ or ε, as for :class:`amsgrad.Adam` (the library's default 1e-16).
        optimized_update: the library's default update form (see :class:`amsgrad.Adam`).
        schedule: one of :data:`SCHEDULES`.
        beta1_decay: λ in (0, 1], so that step t uses :math:`β_{1,t} = β_1 λ^{t-1}` (the
            paper's Corollary 1); 1 (the default) keeps β1 constant.

    >>> Settings().describe()
    'lr 0.01 (constant), betas (0.9, 0.99), eps 1e-16'
    >>> Settings(beta1_decay=0.999).describe()
    'lr 0.01 (constant), betas (0.9, 0.99), beta1 decay 0.999, eps 1e-16'
    """

    lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-16
    optimized_update: bool = True
    schedule: str = "constant"
    beta1_decay: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        decay = self.beta1_decay
        if isinstance(decay, bool) or not (isinstance(decay, (int, float)) and 0.0 < decay <= 1.0):
            raise ValueError(f"beta1_decay must be a number in (0, 1], got {decay!r}")
        object.__setattr__(self, "betas", (float(self.betas[0]), float(self.betas[1])))
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "eps", float(self.eps))
        object.__setattr__(self, "beta1_decay", float(decay))

    def describe(self, betas: bool = True) -> str:
        """The settings in one line (without the betas, for a sweep over them)."""
        b1, b2 = self.betas
        parts = [f"lr {self.lr:g} ({self.schedule})"]
        if betas:
            parts.append(f"betas ({b1:g}, {b2:g})")
        if self.beta1_decay != 1.0:
            parts.append(f"beta1 decay {self.beta1_decay:g}")
        parts.append(f"eps {self.eps:g}")
        if not self.optimized_update:
            parts.append("standard update")
        return ", ".join(parts)

    def params(self) -> dict[str, Any]:
        """The settings as flat parameters, for tracking and JSON."""
        out = asdict(self)
        out["beta1"], out["beta2"] = out.pop("betas")
        return out
