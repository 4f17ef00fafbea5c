r"""Adam against AMSGrad over a grid of (β1, β2), run by the grid engine.

The paper's Theorems 2 and 3 show that Adam can fail for *any* β1, β2 with
:math:`β_1 < \sqrt{β_2}`, the condition of Kingma & Ba's convergence proof; the heatmaps
of :func:`sweep` show where it fails on a given problem, and that AMSGrad does not.

Every cell of a variant's grid advances together, in time chunks
(:class:`~amsgrad.experiments.grid_engine.GridRun`): SIMD lanes over cells, blocks of cells
over cores, and bit for bit the numbers the scalar fast engine gives each cell alone.
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
    ``(beta1s[i], beta2s[j])``, after ``steps_done[name]`` steps (fewer than ``steps`` for a
    variant that was interrupted; a variant that never started is absent);
    ``seconds[name]`` is the variant's wall time and ``cell_steps[name]`` the cell-steps it
    computed (a variant that ignores β2, AdamNC, computes one column and repeats it);
    ``cells_done[name]`` is the number of cells the variant ran (all of them, once started:
    the cells advance together).
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
    steps_done: dict[str, int] = field(default_factory=dict)
    cell_steps: dict[str, int] = field(default_factory=dict)

    cells_done: dict[str, int] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        """Whether every variant ran every step."""
        return all(self.steps_done.get(v.name, 0) == self.steps for v in self.variants)

    @property
    def below_curve(self) -> np.ndarray:
        """True where β1 < √β2, the condition of Adam's original convergence proof."""
        return self.beta1s[:, None] < np.sqrt(self.beta2s)[None, :]

    def summary(self) -> list[dict]:
        """Per variant: how much of the grid ends near x* = -1 or at the wrong end, +1.

        With the steps done and the throughput, ``cell_steps_per_second`` (computed cell-steps
        over the variant's wall time).
        """
        rows = []
        for v in self.variants:
            if v.name not in self.final_x:
                continue  # not started
            x = self.final_x[v.name]
            seconds = self.seconds.get(v.name, 0.0)
            cell_steps = self.cell_steps.get(v.name, 0)
            done = self.cells_done.get(v.name, 0)
            rows.append(
                {
                    "optimizer": v.name,
                    "label": v.label,
                    "cells": done,
                    "near_optimum": int((x < -0.5).sum()),
                    "at_plus_one": int((x > 0.99).sum()),
                    "at_plus_one_below_curve": int(((x > 0.99) & self.below_curve).sum()),
                    "median_final_x": _median(x.ravel()),
                    "median_average_regret": _median(self.average_regret[v.name].ravel()),
                    "seconds": round(seconds, 6),
                    "steps_done": self.steps_done.get(v.name, 0),
                    "cell_steps_per_second": cell_steps / seconds if seconds > 0 else None,
                }
            )
        return rows


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else float("nan")


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`sweep`; ``result`` holds every cell at the steps done."""

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
    chunk_steps: int | None = None,
) -> SweepResult:
    """Run every variant at every (β1, β2) for ``steps`` steps (``settings.betas`` is ignored).

    Each variant's grid runs in time chunks of ``chunk_steps`` steps (default
    :func:`~amsgrad.experiments.grid_engine.chunk_steps_for` the grid: ~0.1 s of work), every
    cell advancing together. ``on_progress`` is called after each chunk with the number of
    grid cells' worth of work it did (the calls add up to ``len(variants) * beta1s.size *
    beta2s.size``). ``should_stop`` is checked before every chunk: when it returns True the
    sweep ends there, every cell of the running variant at the steps done (``steps_done``;
    ``completed`` is False) and the variants not started absent. Ctrl-C raises
    :class:`SweepInterrupted`, with the same partial result.

    >>> from amsgrad.experiments import make_problem, variant, Settings
    >>> r = sweep(make_problem("online"), [variant("adam"), variant("amsgrad")], Settings(),
    ...           100_000, default_beta1s(2), default_beta2s(2, 0.9, 0.99))
    >>> r.final_x["adam"].tolist(), bool((r.final_x["amsgrad"] < 0).all())
    ([[1.0, 1.0], [1.0, 1.0]], True)
    """
    from .grid_engine import GridRun, chunk_steps_for

    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if chunk_steps is not None and (isinstance(chunk_steps, bool) or int(chunk_steps) != chunk_steps or chunk_steps < 1):
        raise ValueError(f"chunk_steps must be an integer >= 1, got {chunk_steps!r}")
    beta1s, beta2s = np.asarray(beta1s, dtype=np.float64), np.asarray(beta2s, dtype=np.float64)
    for name, betas in (("beta1", beta1s), ("beta2", beta2s)):
        if betas.ndim != 1 or betas.size == 0 or not ((betas >= 0) & (betas < 1)).all():
            raise ValueError(f"{name} values must be a non-empty list of numbers in [0, 1)")
    steps = int(steps)
    result = SweepResult(problem, settings, steps, beta1s, beta2s, list(variants))
    grid_cells = beta1s.size * beta2s.size
    try:
        for v in variants:
            run = GridRun(problem, v, settings, beta1s, beta2s)
            chunk = int(chunk_steps) if chunk_steps else chunk_steps_for(run.cells)
            start = time.perf_counter()
            reported = 0

            def record(run=run, v=v, start=start) -> None:
                result.final_x[v.name] = run.final_x
                result.average_regret[v.name] = run.average_regret
                result.steps_done[v.name] = run.t
                result.cell_steps[v.name] = run.t * run.cells
                result.cells_done[v.name] = grid_cells
                result.seconds[v.name] = time.perf_counter() - start

            while run.t < steps:
                if should_stop is not None and should_stop():
                    if run.t:
                        record()
                    return result
                advanced = False
                try:
                    with native_section():  # a signal's exception waits for the chunk's end
                        run.advance(min(chunk, steps - run.t))
                        advanced = True
                finally:  # a chunk that was computed is kept, whatever is raised at its end
                    if advanced or run.t:
                        record()
                if on_progress is not None:
                    done = grid_cells * run.t // steps
                    on_progress(done - reported)
                    reported = done
    except KeyboardInterrupt:
        raise SweepInterrupted(result) from None
    return result
