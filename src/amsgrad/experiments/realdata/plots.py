"""Figure-2-style plots: training and test loss against iterations, best point per optimizer.

Like Figure 2 of Reddi, Kale & Kumar (ICLR 2018): one panel for the training loss and one for
the test loss, against the iteration, one curve per optimizer at its best grid point
(:func:`~.summary.best_points`). Each curve is the mean over seeds with a band of ± one
standard deviation. Curves differ in line style and marker as well as colour, so the figure
reads in black and white; it is saved as PNG and as a vector file (PDF or SVG, by suffix).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .summary import GridPoint, best_points
from .training import TrainResult

__all__ = ["plot_losses", "STYLES"]

#: colour, line style, marker for each optimizer (colour-blind-safe colours).
STYLES = {
    "adam": ("#d55e00", "-", "o"),
    "amsgrad": ("#0072b2", "--", "s"),
    "amsgrad-corrected": ("#009e73", "-.", "^"),
    "amsgrad-paper": ("#cc79a7", ":", "D"),
    "adam-paper": ("#e69f00", (0, (5, 1, 1, 1)), "v"),
}

_PANELS = {"train_loss": "training loss", "test_loss": "test loss", "batch_loss": "minibatch loss", "train_accuracy": "training accuracy", "test_accuracy": "test accuracy"}


def plot_losses(
    results: Sequence[TrainResult],
    paths: Sequence[str | Path],
    *,
    title: str = "",
    select: str = "train_loss",
    panels: Sequence[str] = ("train_loss", "test_loss"),
    points: Sequence[GridPoint] | None = None,
) -> list[Path]:
    """Draw each optimizer's best point (or ``points``); save to every path in ``paths``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = list(points) if points is not None else best_points(results, select)
    if not points:
        raise ValueError("nothing to plot: no grid point has finished runs")
    figure = Figure(figsize=(4.2 * len(panels), 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, key in zip(axes, panels):
        upper = []
        for point in points:
            colour, style, marker = STYLES.get(point.optimizer, ("0.3", "-", "x"))
            steps, mean, std = point.curve(key)
            if len(steps) == 0:
                continue
            seeds = len(point.runs)
            label = f"{point.label}" + (f" ({seeds} seeds)" if seeds > 1 else "")
            ax.plot(steps, mean, color=colour, ls=style, lw=1.6, marker=marker, markevery=max(1, len(steps) // 8), ms=4.5, label=label)
            if seeds > 1:
                ax.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.2, lw=0)
            upper.append(float(mean[len(mean) // 10 :].max()) if len(mean) > 10 else float(mean.max()))
        ax.set_xlabel("iteration")
        ax.set_ylabel(_PANELS.get(key, key))
        ax.grid(True, alpha=0.3)
        ax.set_xlim(left=0)
        if upper and "loss" in key:  # the first records are far above the rest: keep them out of the scale
            low = min(float(p.curve(key)[1].min()) for p in points)
            high = max(upper)
            ax.set_ylim(max(0.0, low - 0.1 * (high - low)), high + 0.1 * (high - low))
        ax.legend(fontsize=7.5, loc="upper right")
    if title:
        figure.suptitle(title, fontsize=10)
    saved = []
    for path in paths:
        path = Path(path)
        figure.savefig(path, dpi=150)
        saved.append(path)
    return saved
