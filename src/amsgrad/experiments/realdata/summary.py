"""From a grid's runs to the answer: the best grid point of each optimizer, mean ± std over seeds.

A *grid point* is (optimizer, α, β2); its runs differ only in the seed. The paper plots "the
best configuration" of each optimizer; here the best is the grid point with the lowest mean
final training loss over its seeds (``select="test_loss"`` etc. for another criterion), among
the points whose runs all finished. A point whose loss is not finite (diverged) is never best.
Standard deviations are over seeds (``ddof=1``; 0 for one seed).

>>> point = GridPoint("adam", 0.1, 0.99, [])
>>> point.label
'Adam, α = 0.1, β2 = 0.99'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..variants import VARIANTS
from .training import HISTORY_KEYS, TrainResult

__all__ = ["GridPoint", "grid_points", "best_points", "results_document", "results_table", "METRICS"]

#: What the table reports, by history key.
METRICS = ("train_loss", "test_loss", "train_accuracy", "test_accuracy")


@dataclass
class GridPoint:
    """The runs of one (optimizer, α, β2), one per seed."""

    optimizer: str
    lr: float
    beta2: float
    runs: list[TrainResult] = field(default_factory=list)

    @property
    def label(self) -> str:
        name = VARIANTS[self.optimizer].label if self.optimizer in VARIANTS else self.optimizer
        return f"{name}, α = {self.lr:g}, β2 = {self.beta2:g}"

    @property
    def completed(self) -> bool:
        return bool(self.runs) and all(r.completed for r in self.runs)

    @property
    def seeds(self) -> list[int]:
        return [r.config.seed for r in self.runs]

    def final(self, key: str) -> tuple[float, float]:
        """Mean and standard deviation over seeds of the final value of ``key``."""
        values = np.array([r.final(key) for r in self.runs], dtype=np.float64)
        if values.size == 0:
            return math.nan, math.nan
        return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0

    def curve(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(steps, mean, std) of ``key`` over seeds, at the records every run has."""
        if not self.runs:
            return np.array([]), np.array([]), np.array([])
        length = min(len(r.history["step"]) for r in self.runs)
        steps = np.asarray(self.runs[0].history["step"][:length])
        values = np.array([r.history[key][:length] for r in self.runs], dtype=np.float64)
        std = values.std(axis=0, ddof=1) if len(self.runs) > 1 else np.zeros(length)
        return steps, values.mean(axis=0), std


def grid_points(results: Sequence[TrainResult]) -> list[GridPoint]:
    """The runs grouped by (optimizer, α, β2), in the order they first appear."""
    points: dict[tuple[str, float, float], GridPoint] = {}
    for r in results:
        key = r.config.grid_point
        points.setdefault(key, GridPoint(*key)).runs.append(r)
    return list(points.values())


def best_points(results: Sequence[TrainResult], select: str = "train_loss", finished_only: bool = True) -> list[GridPoint]:
    """Each optimizer's best grid point: the lowest mean final ``select`` (highest, for an accuracy).

    ``finished_only=False`` also considers points with stopped runs (to report a stopped grid).
    """
    if select not in HISTORY_KEYS or select == "step":
        raise ValueError(f"select must be one of {', '.join(METRICS)}, got {select!r}")
    sign = -1.0 if "accuracy" in select else 1.0
    best: dict[str, GridPoint] = {}
    for point in grid_points(results):
        if finished_only and not point.completed:
            continue
        mean = point.final(select)[0]
        score = sign * mean if math.isfinite(mean) else math.inf
        current = best.get(point.optimizer)
        if current is None or score < (sign * current.final(select)[0] if math.isfinite(current.final(select)[0]) else math.inf):
            best[point.optimizer] = point
    order = list(dict.fromkeys(r.config.optimizer for r in results))
    return [best[o] for o in order if o in best]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _point_row(point: GridPoint) -> dict[str, Any]:
    row: dict[str, Any] = {"optimizer": point.optimizer, "label": point.label, "lr": point.lr, "beta2": point.beta2, "seeds": point.seeds, "completed": point.completed}
    for key in METRICS:
        mean, std = point.final(key)
        row[f"final_{key}"], row[f"final_{key}_std"] = _finite(mean), _finite(std)
    row["steps_done"] = min((r.steps_done for r in point.runs), default=0)
    return row


def results_document(results: Sequence[TrainResult], select: str = "train_loss") -> dict[str, Any]:
    """``results`` (the best point of each optimizer) and ``grid`` (every point), for JSON."""
    return {
        "select": select,
        "results": [_point_row(p) for p in best_points(results, select)],
        "grid": [_point_row(p) for p in grid_points(results)],
    }


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Columns aligned, the first to the left, the others to the right, as the other tables."""
    widths = [max(len(c) for c in column) for column in zip(header, *rows)]
    lines = []
    for i, row in enumerate([header, *rows]):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(mean: float, std: float, accuracy: bool) -> str:
    if not math.isfinite(mean):
        return "diverged"
    if accuracy:
        return f"{100 * mean:.2f} ± {100 * std:.2f}"
    return f"{mean:.4f} ± {std:.4f}"


def results_table(results: Sequence[TrainResult], select: str = "train_loss") -> str:
    """The best point of each optimizer: final losses and accuracies (%), mean ± std over seeds."""
    points = best_points(results, select)
    stopped = not points  # a stopped grid: show how far its runs got
    if stopped:
        points = best_points(results, select, finished_only=False)
    header = ["optimizer", "best lr", "beta2", "seeds", "train loss", "test loss", "train acc %", "test acc %"] + (["steps done"] if stopped else [])
    rows = []
    for point in points:
        rows.append(
            [
                VARIANTS[point.optimizer].label if point.optimizer in VARIANTS else point.optimizer,
                f"{point.lr:g}",
                f"{point.beta2:g}",
                str(len(point.runs)),
                *(_cell(*point.final(key), accuracy="accuracy" in key) for key in METRICS),
                *([f"{min(r.steps_done for r in point.runs):,}"] if stopped else []),
            ]
        )
    return _table(header, rows)
