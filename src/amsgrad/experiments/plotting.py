r"""The figures: PNG, SVG or PDF files made with matplotlib (no display needed; pyplot is not used).

* :func:`plot_synthetic`: in the spirit of the paper's Figure 1, the iterate :math:`x_t` and
  the average regret :math:`R(t)/t` against t (log-scaled), one line style per optimizer.
  Each curve is the per-bin mean of *every* step and a band its per-bin range
  (:mod:`~amsgrad.experiments.envelope`), so that the period-101 oscillation shows as what it
  is, a band, instead of the beat pattern a trace sampled every 1,000th step draws.
* :func:`plot_sweep`: a heatmap per optimizer of the final x (or R(T)/T) over the
  (β1, β2) grid, with the curve :math:`β_1 = \sqrt{β_2}` of the paper's theorems. Each cell
  spans half the way to its neighbours and the outer cells end at the grid's first and last
  values, so nothing is drawn outside the β range that was run; those edges are labelled.

Legends sit below the panels, never over a curve. Every figure is drawn from a small
JSON-ready description (:func:`synthetic_figure`, :func:`sweep_figure`), which the plot
functions save as ``figure.json`` beside the image: :func:`redraw` draws a run folder again,
in another format or resolution, without running anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .envelope import STATISTICS, Envelope
from .problems import X_STAR

if TYPE_CHECKING:
    from .simulate import RunResult
    from .sweep import SweepResult

__all__ = ["FORMATS", "DEFAULT_DPI", "FIGURE_DATA", "plot_synthetic", "plot_sweep", "synthetic_figure", "sweep_figure",
           "draw_synthetic", "draw_sweep", "save_figure_data", "load_figure_data", "redraw"]

#: The image formats the figures are written in (matplotlib's names, also the file suffixes).
FORMATS = ("png", "svg", "pdf")

#: Resolution of PNG figures (and of the heatmaps' pixels inside SVG and PDF).
DEFAULT_DPI = 200

#: The file, in a run folder, that holds what its figure is drawn from.
FIGURE_DATA = "figure.json"

_FIGURE_VERSION = 1

# Okabe & Ito's colour-blind-safe palette, and a line style each: told apart in grey too.
_STYLES = {
    "adam": ("#D55E00", "-"),
    "amsgrad": ("#0072B2", (0, (5, 2))),
    "amsgrad-corrected": ("#009E73", (0, (6, 2, 1, 2))),
    "amsgrad-paper": ("#CC79A7", (0, (1, 1.5))),
    "adam-paper": ("#E69F00", (0, (9, 3))),
    "adamnc": ("#000000", (0, (4, 1.5, 1, 1.5, 1, 1.5))),
    "adamx": ("#56B4E9", (0, (2.5, 1))),
}
_FALLBACK_STYLES = [("#999999", (0, (3, 3))), ("#F0E442", (0, (1, 3)))]


def _style(name: str, index: int) -> tuple[str, Any]:
    return _STYLES.get(name, _FALLBACK_STYLES[index % len(_FALLBACK_STYLES)])


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _rc():
    import matplotlib

    return matplotlib.rc_context({"font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "legend.fontsize": 8.5,
                                  "xtick.labelsize": 8, "ytick.labelsize": 8, "svg.fonttype": "none", "svg.hashsalt": "amsgrad", "pdf.fonttype": 42})


def _finite(values) -> list:
    return [v if v is not None and math.isfinite(v) else None for v in np.asarray(values, dtype=float).tolist()]


def _array(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _save(figure, path: Path, dpi: int | None, image_format: str | None) -> Path:
    fmt = image_format or path.suffix.lstrip(".").lower() or "png"
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if dpi is not None and not (isinstance(dpi, (int, float)) and not isinstance(dpi, bool) and 10 <= dpi <= 2400):
        raise ValueError(f"dpi must be a number in [10, 2400], got {dpi!r}")
    # no creation date: the same data gives the same file
    metadata = {"png": {"Software": "amsgrad"}, "svg": {"Creator": "amsgrad", "Date": None}, "pdf": {"Creator": "amsgrad", "CreationDate": None}}[fmt]
    figure.savefig(path, format=fmt, dpi=dpi or DEFAULT_DPI, metadata=metadata)
    return path


def _title(problem: dict, settings: str, steps: int, engine: str | None = None) -> str:
    text = f"{problem['description']}\n{settings}, {steps:,} steps"
    return text + (f", {engine} engine" if engine else "")


# ---------------------------------------------------------------------- synthetic
def synthetic_figure(results: Sequence[RunResult]) -> dict[str, Any]:
    """What :func:`draw_synthetic` needs of ``results``, as plain JSON-ready data."""
    if not results:
        raise ValueError("nothing to plot: no results")
    first = results[0]
    runs = []
    for r in results:
        envelope = r.envelope if len(r.envelope) else _envelope_of_trace(r)
        runs.append({
            "optimizer": r.variant.name,
            "label": r.variant.label,
            "steps": r.steps,
            "steps_done": r.steps_done,
            "envelope": {k: _finite(v) if k not in ("first", "last") else list(map(int, v)) for k, v in envelope.to_dict().items()},
        })  # fmt: skip
    return {
        "kind": "synthetic",
        "version": _FIGURE_VERSION,
        "problem": {**first.problem.params(), "description": first.problem.description},
        "settings": first.settings.describe(),
        "steps": first.steps,
        "engine": first.engine,
        "runs": runs,
    }


def _envelope_of_trace(result: RunResult) -> Envelope:
    """A result without an envelope (made by hand): its recorded points, one per bin."""
    tr = result.trace
    rows = np.stack([tr.x, tr.x, tr.x, np.zeros_like(tr.x), tr.average_regret, tr.average_regret, tr.average_regret], axis=1)
    return Envelope.from_rows(tr.step, tr.step, rows.reshape(-1, 7))


def draw_synthetic(data: dict[str, Any], path: str | Path, *, dpi: int | None = None, image_format: str | None = None) -> Path:
    """Draw :func:`synthetic_figure`'s ``data``: x_t and R(t)/t against t; save the image at ``path``."""
    with _rc():
        return _save(_synthetic_figure(data), Path(path), dpi, image_format)


def _synthetic_figure(data: dict[str, Any]):
    from matplotlib.patches import Patch

    figure = _figure(7.2, 3.4)
    ax_x, ax_regret = figure.subplots(1, 2)
    lowest, highest = math.inf, -math.inf
    # R(t)/t starts far from where it ends (±C or ±s over the first steps, falling as 1/t):
    # the y range is set by what follows the first spikes (two periods, or ten expected spikes).
    period, probability = data["problem"].get("period"), data["problem"].get("probability")
    random_walk = period is None
    settle = 2 * period if period else 10 / (probability or 0.01)
    band_alpha = 0.2 if len(data["runs"]) <= 2 else 0.14
    for i, run in enumerate(data["runs"]):
        envelope = Envelope.from_dict({k: _array(v) if k not in ("first", "last") else v for k, v in run["envelope"].items()})
        if not len(envelope):
            continue
        colour, style = _style(run["optimizer"], i)
        label = run["label"] if run["steps_done"] == run["steps"] else f"{run['label']} (stopped at t = {run['steps_done']:,})"
        t = envelope.middle
        for ax, low, high, mean, std in (
            (ax_x, envelope.x_min, envelope.x_max, envelope.x_mean, envelope.x_std),
            (ax_regret, envelope.average_min, envelope.average_max, envelope.average_mean, None),
        ):
            if random_walk and std is not None:  # x_t wanders over much of [-1, 1]: its spread, not its extremes
                low, high = np.maximum(low, mean - std), np.minimum(high, mean + std)
            ax.fill_between(t, low, high, color=colour, alpha=band_alpha, lw=0)
            ax.plot(t, mean, color=colour, ls=style, lw=1.3 if len(data["runs"]) <= 3 else 1.1, label=label if ax is ax_x else None)
        later = envelope.first > settle
        if later.any():
            lowest = min(lowest, float(np.nanmin(envelope.average_min[later])))
            highest = max(highest, float(np.nanmax(envelope.average_max[later])))
    ax_x.axhline(X_STAR, color="0.35", lw=0.7, ls=(0, (1, 2)), label="optimum $x^* = -1$")
    last = max(run["steps_done"] for run in data["runs"]) or 1
    for ax in (ax_x, ax_regret):
        ax.set_xscale("log")
        ax.set_xlim(1, max(last, 10))
        ax.set_xlabel("step $t$")
        ax.grid(True, which="major", alpha=0.25, lw=0.5)
    ax_x.set(ylabel="$x_t$", ylim=(-1.06, 1.06), yticks=[-1, -0.5, 0, 0.5, 1], title="iterate $x_t$")
    if lowest > 0:
        ax_regret.set_yscale("log")
        ax_regret.set_ylim(lowest / 1.5, highest * 1.5)
    elif math.isfinite(lowest):  # R(t)/t < 0 at times (a stretch without a spike): log beyond ±0.01
        ax_regret.set_yscale("symlog", linthresh=1e-2, linscale=0.5)
        ax_regret.set_ylim(lowest * 1.5, highest * 1.5)
    ax_regret.set(ylabel="$R(t)/t$", title="average regret $R(t)/t$")
    handles, labels = ax_x.get_legend_handles_labels()
    handles.append(Patch(facecolor="0.55", alpha=0.35, lw=0))
    labels.append("over a bin of steps: $x_t$'s mean ± standard deviation, $R(t)/t$'s range" if random_walk
                  else "range over a bin of steps (line: its mean)")
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 3), frameon=False)
    figure.suptitle(_title(data["problem"], data["settings"], data["steps"], data.get("engine")), fontsize=8.5)
    return figure


def plot_synthetic(results: Sequence[RunResult], path: str | Path, *, dpi: int | None = None, image_format: str | None = None,
                   save_data: bool = True) -> Path:
    """Draw x_t and R(t)/t of each result against t; save the image at ``path``; return it.

    The format is ``image_format`` or the suffix of ``path`` (one of :data:`FORMATS`). With
    ``save_data``, what the figure is drawn from goes to ``figure.json`` beside it.
    """
    data = synthetic_figure(results)
    if save_data:
        save_figure_data(data, Path(path).parent)
    return draw_synthetic(data, path, dpi=dpi, image_format=image_format)


# ---------------------------------------------------------------------- sweep
def sweep_figure(result: SweepResult, metric: str = "final_x") -> dict[str, Any]:
    """What :func:`draw_sweep` needs of ``result``, as plain JSON-ready data."""
    _check_metric(metric)
    variants = [v for v in result.variants if v.name in result.final_x]  # a stopped sweep may not have started all
    if not variants:
        raise ValueError("nothing to plot: no optimizer was run")
    return {
        "kind": "sweep",
        "version": _FIGURE_VERSION,
        "metric": metric,
        "problem": {**result.problem.params(), "description": result.problem.description},
        "settings": result.settings.describe(betas=False),
        "steps": result.steps,
        "beta1": result.beta1s.tolist(),
        "beta2": result.beta2s.tolist(),
        "results": [
            {
                "optimizer": v.name,
                "label": v.label,
                "uses_beta2": v.uses_beta2,
                "steps_done": result.steps_done.get(v.name, result.steps),
                "final_x": [_finite(row) for row in result.final_x[v.name]],
                "average_regret": [_finite(row) for row in result.average_regret[v.name]],
            }
            for v in variants
        ],
    }


def _check_metric(metric: str) -> None:
    if metric not in ("final_x", "average_regret"):
        raise ValueError(f"metric must be 'final_x' or 'average_regret', got {metric!r}")


def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges halfway between neighbours, the outer ones at the first and last value."""
    if values.size == 1:
        return np.array([values[0] - 0.5, values[0] + 0.5]) if values[0] != 0 else np.array([0.0, 1.0])
    return np.concatenate([[values[0]], (values[1:] + values[:-1]) / 2, [values[-1]]])


def _beta_label(value: float) -> str:
    return f"{value:.6g}"


def draw_sweep(data: dict[str, Any], path: str | Path, *, metric: str | None = None, dpi: int | None = None,
               image_format: str | None = None) -> Path:
    """Draw :func:`sweep_figure`'s ``data``: a heatmap per optimizer; save the image at ``path``."""
    with _rc():
        return _save(_sweep_figure(data, metric or data["metric"]), Path(path), dpi, image_format)


def _sweep_figure(data: dict[str, Any], metric: str):
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    _check_metric(metric)
    beta1s, beta2s = np.asarray(data["beta1"], dtype=float), np.asarray(data["beta2"], dtype=float)
    grids = [np.array([_array(row) for row in r[metric]]) for r in data["results"]]
    # β2 on a log scale of 1 - β2, β2 growing to the right; cells of equal width there
    gap = -np.log10(1.0 - beta2s)
    gap_edges = _edges(gap)
    beta1_edges = np.clip(_edges(beta1s), 0.0, 1.0)
    if metric == "final_x":
        norm = dict(vmin=-1.0, vmax=1.0, cmap="RdBu_r")
        label = "final $x_T$  ($x^* = -1$)"
    else:
        every = np.concatenate([g.ravel() for g in grids])
        low, high = float(np.nanmin(every)), float(np.nanmax(every))
        norm = dict(vmin=low, vmax=high if high > low else low + 1e-12, cmap="viridis")
        label = "$R(T)/T$"
    panels = len(grids)
    figure = _figure(2.9 * panels + 0.9, 3.1)
    figure.get_layout_engine().set(wspace=0.06)  # room between one panel's last β2 label and the next one's first
    axes = np.atleast_1d(figure.subplots(1, panels, sharey=True))
    decade_ticks = [d for d in range(1, 12) if gap_edges[0] < d < gap_edges[-1] and all(abs(d - e) > 0.25 * (gap_edges[-1] - gap_edges[0]) / 8 for e in (gap_edges[0], gap_edges[-1]))]
    x_ticks = [gap_edges[0], *decade_ticks, gap_edges[-1]]
    mesh = None
    for ax, r, grid in zip(axes, data["results"], grids):
        mesh = ax.pcolormesh(gap_edges, beta1_edges, grid, shading="flat", rasterized=True, **norm)
        # β1 = √β2, the edge of the region where Adam's original proof applies
        curve_gap = np.linspace(gap_edges[0], gap_edges[-1], 400)
        curve_beta1 = np.sqrt(1.0 - 10.0 ** -curve_gap)
        inside = (curve_beta1 >= beta1_edges[0]) & (curve_beta1 <= beta1_edges[-1])
        ax.plot(curve_gap[inside], curve_beta1[inside], color="k", lw=1.2, ls=(0, (4, 2)), label=r"$\beta_1 = \sqrt{\beta_2}$")
        ax.set_xlim(gap_edges[0], gap_edges[-1])
        ax.set_ylim(beta1_edges[0], beta1_edges[-1])
        ax.xaxis.set_major_locator(FixedLocator(x_ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda g, _: _beta_label(1.0 - 10.0**-g)))
        ax.set_xlabel(r"$\beta_2$  (log scale of $1-\beta_2$)")
        title = r["label"]
        if not r["uses_beta2"]:
            title += r"  ($\beta_{2,t} = 1 - 1/t$: $\beta_2$ unused)"
        if r["steps_done"] != data["steps"]:
            title += f"\nstopped at t = {r['steps_done']:,}"
        ax.set_title(title)
    y_ticks = sorted({float(beta1_edges[0]), float(beta1_edges[-1]), *[v for v in (0.25, 0.5, 0.75) if beta1_edges[0] + 0.08 < v < beta1_edges[-1] - 0.08]})
    axes[0].yaxis.set_major_locator(FixedLocator(y_ticks))
    axes[0].yaxis.set_major_formatter(FuncFormatter(lambda b, _: _beta_label(b)))
    axes[0].set_ylabel(r"$\beta_1$")
    bar = figure.colorbar(mesh, ax=list(axes), label=label, shrink=0.9, pad=0.02)
    if metric == "final_x":
        bar.set_ticks([-1, -0.5, 0, 0.5, 1])
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", frameon=False)
    figure.suptitle(_title(data["problem"], data["settings"], data["steps"]), fontsize=8.5)
    return figure


def plot_sweep(result: SweepResult, path: str | Path, metric: str = "final_x", *, dpi: int | None = None,
               image_format: str | None = None, save_data: bool = True) -> Path:
    """One heatmap per optimizer of ``metric`` (``final_x`` or ``average_regret``); save the image.

    As :func:`plot_synthetic`: the format from ``image_format`` or the suffix, and
    ``figure.json`` beside the image with ``save_data``.
    """
    data = sweep_figure(result, metric)
    if save_data:
        save_figure_data(data, Path(path).parent)
    return draw_sweep(data, path, dpi=dpi, image_format=image_format)


# ---------------------------------------------------------------------- saved figures
def save_figure_data(data: dict[str, Any], folder: str | Path) -> Path:
    """Write ``data`` to ``folder/figure.json`` (whole or not at all); return the path."""
    folder = Path(folder)
    path = folder / FIGURE_DATA
    scratch = folder / f".{FIGURE_DATA}.partial"
    scratch.write_text(json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n")
    scratch.replace(path)
    return path


def load_figure_data(run_dir: str | Path) -> dict[str, Any]:
    """The figure description saved in a run folder; a ValueError says what is wrong with it."""
    path = Path(run_dir) / FIGURE_DATA
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{run_dir} has no {FIGURE_DATA}: not a folder written by amsgrad synthetic or amsgrad sweep") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict) or data.get("kind") not in ("synthetic", "sweep"):
        raise ValueError(f"{path} is not a figure description (no 'kind' synthetic or sweep)")
    if data.get("version") != _FIGURE_VERSION:
        raise ValueError(f"{path} has version {data.get('version')!r}; this amsgrad reads version {_FIGURE_VERSION}")
    needed = {"synthetic": ("problem", "settings", "steps", "runs"), "sweep": ("problem", "settings", "steps", "beta1", "beta2", "results", "metric")}
    missing = [key for key in needed[data["kind"]] if key not in data]
    if data["kind"] == "synthetic":
        fields = ("first", "last", *STATISTICS)
        missing += [f"runs[{i}].envelope.{key}" for i, run in enumerate(data.get("runs", [])) for key in fields if key not in run.get("envelope", {})]
    if missing:
        raise ValueError(f"{path} is incomplete: no {', '.join(missing[:3])}")
    return data


def redraw(run_dir: str | Path, image_format: str = "png", *, dpi: int | None = None, metric: str | None = None,
           out: str | Path | None = None) -> Path:
    """Draw the figure of a run folder again from its ``figure.json``, without running anything.

    The image goes to ``out`` (default: ``synthetic.FORMAT`` or ``sweep.FORMAT`` in the run
    folder); ``metric`` switches a sweep's heatmaps between ``final_x`` and ``average_regret``.

    >>> import tempfile
    >>> from amsgrad.experiments import make_problem, simulate, variant, Settings
    >>> folder = Path(tempfile.mkdtemp())
    >>> runs = [simulate(make_problem("online"), variant(n), Settings(), 20_000) for n in ("adam", "amsgrad")]
    >>> _ = plot_synthetic(runs, folder / "synthetic.png")
    >>> redraw(folder, "svg").name
    'synthetic.svg'
    """
    if image_format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {image_format!r}")
    data = load_figure_data(run_dir)
    target = Path(out) if out is not None else Path(run_dir) / f"{data['kind']}.{image_format}"
    if data["kind"] == "synthetic":
        if metric is not None:
            raise ValueError("metric applies to a sweep's figure, not to a synthetic run's")
        return draw_synthetic(data, target, dpi=dpi, image_format=image_format)
    return draw_sweep(data, target, metric=metric, dpi=dpi, image_format=image_format)
