"""The paper's Section 5 protocol as data: each model's step-size schedule and default grid.

Kept apart from :mod:`.models` (which needs torch) so that the command line can offer the
choices without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BETA2S", "MODELS", "ModelInfo"]


@dataclass(frozen=True)
class ModelInfo:
    """A model: its step-size schedule (the paper's), what it is, and its default grid.

    The default grid is the paper's protocol (β2 ∈ {0.99, 0.999}, α by grid search) at a
    size that runs on a 2-core machine: the α values, seeds and steps below, a record every
    ``eval_every`` steps on at most ``eval_size`` training and test examples.
    """

    name: str
    schedule: str  # "inv-sqrt" (α/√t) or "constant", as in amsgrad.experiments.variants
    summary: str
    lrs: tuple[float, ...]
    steps: int
    seeds: tuple[int, ...]
    eval_every: int
    eval_size: int
    label: str = ""


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("logreg", "inv-sqrt", "logistic regression, 784 -> 10, step size lr/sqrt(t)", (0.01, 0.03, 0.1, 0.3), 5000, (0, 1, 2), 100, 10_000, "logistic regression"),
        ModelInfo("mlp", "constant", "one hidden layer of 100 ReLU units, constant step size", (1e-4, 3e-4, 1e-3, 3e-3, 1e-2), 5000, (0, 1, 2), 100, 10_000, "MLP, 100 ReLU units"),
        ModelInfo("cifarnet", "constant", "2 conv layers of 64 (6x6; --kernel-size 5: TF-slim's), max-pool, LRN, fc 384, dropout 0.5, fc 192", (3e-4, 1e-3), 1500, (0, 1), 100, 1000, "CIFARNET"),
    )
}

#: The paper's β2 grid.
BETA2S = (0.99, 0.999)
