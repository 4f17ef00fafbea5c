"""The figures, as PNG files made with matplotlib (no display needed; pyplot is not used).

* :func:`plot_synthetic`: in the spirit of the paper's Figure 1, the iterate :math:`x_t`
  and the average regret :math:`R(t)/t` against t (log-scaled), one line per optimizer.
* :func:`plot_sweep`: a heatmap per optimizer of the final x (or R(T)/T) over the
  (β1, β2) grid, with the curve :math:`β_1 = \\sqrt{β_2}` of the paper's theorems.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .problems import X_STAR

if TYPE_CHECKING:
    from .simulate import RunResult
    from .sweep import SweepResult

__all__ = ["plot_synthetic", "plot_sweep"]

_COLOURS = {"adam": "#d62728", "amsgrad": "#1f77b4", "amsgrad-corrected": "#2ca02c", "amsgrad-paper": "#9467bd", "adam-paper": "#ff7f0e"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _title(problem, settings, steps: int, engine: str | None = None, betas: bool = True) -> str:
    text = f"{problem.description}\n{settings.describe(betas)}, {steps:,} steps"
    return text + (f", {engine} engine" if engine else "")


def plot_synthetic(results: Sequence[RunResult], path: str | Path) -> Path:
    """Draw x_t and R(t)/t of each result against t; save the PNG at ``path``; return it."""
    if not results:
        raise ValueError("nothing to plot: no results")
    path = Path(path)
    figure = _figure(11, 4.2)
    ax_x, ax_regret = figure.subplots(1, 2)
    for r in results:
        colour = _COLOURS.get(r.variant.name)
        label = r.variant.label if r.completed else f"{r.variant.label} (stopped at {r.steps_done:,})"
        ax_x.plot(r.trace.step, r.trace.x, color=colour, lw=1.4, label=label)
        ax_regret.plot(r.trace.step, r.trace.average_regret, color=colour, lw=1.4, label=label)
    ax_x.axhline(X_STAR, color="0.5", lw=0.8, ls="--", label="optimum $x^* = -1$")
    ax_x.set(xscale="log", xlabel="step $t$", ylabel="$x_t$", ylim=(-1.05, 1.05), title="iterate")
    ax_regret.set(xscale="log", xlabel="step $t$", ylabel="$R(t)/t$", title="average regret")
    for ax in (ax_x, ax_regret):
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="best", fontsize=9)
    first = results[0]
    figure.suptitle(_title(first.problem, first.settings, first.steps, first.engine), fontsize=10)
    figure.savefig(path, dpi=110)
    return path


def plot_sweep(result: SweepResult, path: str | Path, metric: str = "final_x") -> Path:
    """One heatmap per optimizer of ``metric`` (``final_x`` or ``average_regret``); save the PNG."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    if metric not in ("final_x", "average_regret"):
        raise ValueError(f"metric must be 'final_x' or 'average_regret', got {metric!r}")
    path = Path(path)
    values = getattr(result, metric)
    variants = [v for v in result.variants if v.name in values]  # a stopped sweep may not have started all
    if not variants:
        raise ValueError("nothing to plot: no optimizer was run")
    figure = _figure(5.2 * len(variants) + 1, 4.6)
    axes = np.atleast_1d(figure.subplots(1, len(variants), sharey=True))
    one_minus_beta2 = 1.0 - result.beta2s
    if metric == "final_x":
        norm = dict(vmin=-1.0, vmax=1.0, cmap="coolwarm")
        label = "final $x_T$"
    else:
        every = np.concatenate([values[v.name].ravel() for v in variants])
        norm = dict(vmin=float(np.nanmin(every)), vmax=float(np.nanmax(every)), cmap="viridis")
        label = "$R(T)/T$"
    mesh = None
    for ax, v in zip(axes, variants):
        mesh = ax.pcolormesh(one_minus_beta2, result.beta1s, values[v.name], shading="nearest", **norm)
        # β1 = √β2: the edge of the region where Adam's original proof applies
        curve_beta2 = 1.0 - np.logspace(np.log10(one_minus_beta2.max()), np.log10(one_minus_beta2.min()), 200)
        curve_beta1 = np.sqrt(curve_beta2)
        inside = curve_beta1 <= result.beta1s.max()
        ax.plot(1.0 - curve_beta2[inside], curve_beta1[inside], color="k", lw=1.5, ls="--", label=r"$\beta_1 = \sqrt{\beta_2}$")
        ax.set_xscale("log")
        ax.invert_xaxis()  # β2 grows to the right
        ax.xaxis.set_major_locator(LogLocator(base=10))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda s, _: f"{1 - s:g}"))
        ax.set(xlabel=r"$\beta_2$ (log scale of $1-\beta_2$)", title=v.label)
        ax.legend(loc="lower left", fontsize=8)
    axes[0].set_ylabel(r"$\beta_1$")
    figure.colorbar(mesh, ax=list(axes), label=label)
    figure.suptitle(_title(result.problem, result.settings, result.steps, betas=False), fontsize=10)
    figure.savefig(path, dpi=110)
    return path
