r"""Adam against AMSGrad over a grid of (β1, β2), run in parallel by the fast engine.

The paper's Theorems 2 and 3 show that Adam can fail for *any* β1, β2 with
:math:`β_1 < \sqrt{β_2}`, the condition of Kingma & Ba's convergence proof; the heatmaps
of :func:`sweep` show where it fails on a given problem, and that AMSGrad does not.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .problems import Problem
from .stopping import native_section
from .variants import Settings, Variant

__all__ = ["SweepResult", "SweepInterrupted", "default_beta1s", "default_beta2s", "sweep"]


def default_beta1s(size: int = 32, low: float = 0.0, high: float = 0.99) -> np.ndarray:
    """β1 evenly spaced over [low, high].

    >>> default_beta1s(3).tolist()
    [0.0, 0.495, 0.99]
    """
    return np.linspace(low, high, size)


def default_beta2s(size: int = 32, low: float = 0.5, high: float = 0.9999) -> np.ndarray:
    """β2 from low to high, with 1 - β2 evenly spaced on a log scale (where the action is).

    >>> [round(b, 4) for b in default_beta2s(3, 0.9, 0.999).tolist()]
    [0.9, 0.99, 0.999]
    """
    return 1.0 - np.logspace(math.log10(1.0 - low), math.log10(1.0 - high), size)


@dataclass
class SweepResult:
    """Final x and R(T)/T of each variant at every (β1, β2) of the grid.

    ``final_x[name][i, j]`` and ``average_regret[name][i, j]`` belong to
    ``(beta1s[i], beta2s[j])``; ``seconds[name]`` is the variant's wall time.
    """

    problem: Problem
    settings: Settings
    steps: int
    beta1s: np.ndarray
    beta2s: np.ndarray
    variants: list[Variant]
    final_x: dict[str, np.ndarray] = field(default_factory=dict)
    average_regret: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    cells_done: dict[str, int] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        """Every cell of every variant was run."""
        size = self.beta1s.size * self.beta2s.size
        return all(self.cells_done.get(v.name, 0) == size for v in self.variants)

    @property
    def below_curve(self) -> np.ndarray:
        """True where β1 < √β2, the condition of Adam's original convergence proof."""
        return self.beta1s[:, None] < np.sqrt(self.beta2s)[None, :]

    def summary(self) -> list[dict]:
        """Per variant: how much of the grid ends near x* = -1 or at the wrong end, +1."""
        rows = []
        for v in self.variants:
            if v.name not in self.final_x:
                continue  # not started
            x = self.final_x[v.name]
            done = self.cells_done.get(v.name, 0)
            rows.append(
                {
                    "optimizer": v.name,
                    "label": v.label,
                    "cells": done,
                    "near_optimum": int((x < -0.5).sum()),
                    "at_plus_one": int((x > 0.99).sum()),
                    "at_plus_one_below_curve": int(((x > 0.99) & self.below_curve).sum()),
                    "median_final_x": _median(x.ravel()[:done]),
                    "median_average_regret": _median(self.average_regret[v.name].ravel()[:done]),
                    "seconds": round(self.seconds.get(v.name, 0.0), 6),
                }
            )
        return rows


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else float("nan")


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`sweep`; ``result`` holds the cells done (the others are NaN)."""

    def __init__(self, result: SweepResult):
        super().__init__("sweep interrupted")
        self.result = result


def sweep(
    problem: Problem,
    variants: list[Variant],
    settings: Settings,
    steps: int,
    beta1s: np.ndarray,
    beta2s: np.ndarray,
    *,
    on_progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SweepResult:
    """Run every variant at every (β1, β2) for ``steps`` steps (``settings.betas`` is ignored).

    The grid runs one β1 row at a time, its cells in parallel; ``on_progress`` is called
    with the number of cells after each row. ``should_stop`` is checked before every row:
    when it returns True the sweep ends there, and the cells not run stay NaN (``completed``
    is False). Ctrl-C raises :class:`SweepInterrupted`.

    >>> from amsgrad.experiments import make_problem, variant, Settings
    >>> r = sweep(make_problem("online"), [variant("adam"), variant("amsgrad")], Settings(),
    ...           100_000, default_beta1s(2), default_beta2s(2, 0.9, 0.99))
    >>> r.final_x["adam"].tolist(), bool((r.final_x["amsgrad"] < 0).all())
    ([[1.0, 1.0], [1.0, 1.0]], True)
    """
    from .fast_engine import final_points

    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    beta1s, beta2s = np.asarray(beta1s, dtype=np.float64), np.asarray(beta2s, dtype=np.float64)
    for name, betas in (("beta1", beta1s), ("beta2", beta2s)):
        if betas.ndim != 1 or betas.size == 0 or not ((betas >= 0) & (betas < 1)).all():
            raise ValueError(f"{name} values must be a non-empty list of numbers in [0, 1)")
    result = SweepResult(problem, settings, int(steps), beta1s, beta2s, list(variants))
    shape = (beta1s.size, beta2s.size)
    try:
        for v in variants:
            start = time.perf_counter()
            final_x = result.final_x[v.name] = np.full(shape, np.nan)
            average_regret = result.average_regret[v.name] = np.full(shape, np.nan)
            for i in range(beta1s.size):
                if should_stop is not None and should_stop():
                    return result
                row = None
                try:
                    with native_section():  # a signal's exception waits for the row's end
                        row = final_points(problem, v, settings, steps, beta1s[i : i + 1], beta2s)
                finally:  # a row that was computed is kept, whatever is raised at its end
                    if row is not None:
                        final_x[i], average_regret[i] = row[0][0], row[1][0]
                        result.seconds[v.name] = time.perf_counter() - start
                        result.cells_done[v.name] = (i + 1) * beta2s.size
                if on_progress is not None:
                    on_progress(beta2s.size)
    except KeyboardInterrupt:
        raise SweepInterrupted(result) from None
    return result
