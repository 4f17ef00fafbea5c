"""Results as tables, JSON and files: what the command line prints and saves to ``--out``."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .simulate import RunResult, Trace
from .sweep import SweepResult

__all__ = [
    "TraceSample",
    "TraceWriter",
    "default_out_dir",
    "check_writable",
    "synthetic_table",
    "synthetic_json",
    "sweep_table",
    "sweep_json",
    "write_json",
    "write_text",
    "write_traces",
]


def default_out_dir(command: str, root: str | Path = "runs") -> Path:
    """A new folder ``runs/<command>-<date>-<time>`` (with a suffix if that one exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{command}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path(root) / f"{command}-{stamp}-{suffix}"
    return path


def check_writable(path: Path) -> None:
    """Create ``path`` if needed and prove a file can be written there; raise OSError if not."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write-test-{os.getpid()}"
    probe.write_text("")
    probe.unlink()


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def synthetic_table(results: Sequence[RunResult]) -> str:
    """The results as an aligned text table.

    Columns: optimizer, final x, average regret R(T)/T, seconds (and the steps done, if a run
    was interrupted).
    """
    interrupted = any(not r.completed for r in results)
    header = ["optimizer", "final x", "R(T)/T", "seconds"] + (["steps done"] if interrupted else [])
    rows = []
    for r in results:
        row = [r.variant.label, f"{r.final_x:+.6f}", f"{r.average_regret:.6f}", f"{r.seconds:.2f}"]
        if interrupted:
            row.append(f"{r.steps_done:,}")
        rows.append(row)
    return _table(header, rows)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = []
    for i, row in enumerate([header, *rows]):
        cells = [str(c).ljust(w) if j == 0 else str(c).rjust(w) for j, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def synthetic_json(
    results: Sequence[RunResult],
    *,
    plot: str | None,
    runs: list[dict[str, str]],
    out: str | None = None,
    tracking_error: str | None = None,
    stopped_by: str | None = None,
    cost: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document of ``amsgrad synthetic --json``."""
    first = results[0] if results else None
    return {
        "setting": first.problem.setting if first else None,
        "steps": first.steps if first else None,
        "results": [{**r.summary(), "average_regret": _finite(r.average_regret)} for r in results],
        "plot": plot,
        "runs": runs,
        "problem": first.problem.params() if first else None,
        "settings": first.settings.params() if first else None,
        "engine": first.engine if first else None,
        "completed": stopped_by is None and all(r.completed for r in results),
        "stopped_by": stopped_by,
        "out": out,
        "tracking_error": tracking_error,
        "estimate": cost,
    }


def sweep_table(result: SweepResult) -> str:
    """Per optimizer: cells near the optimum, at +1 (and among them, below β1 = √β2)."""
    header = ["optimizer", "cells", "x_T < -0.5", "x_T at +1", "at +1 with b1 < sqrt(b2)", "median x_T", "seconds"]
    rows = [
        [
            s["label"],
            str(s["cells"]),
            str(s["near_optimum"]),
            str(s["at_plus_one"]),
            str(s["at_plus_one_below_curve"]),
            f"{s['median_final_x']:+.4f}" if math.isfinite(s["median_final_x"]) else "-",
            f"{s['seconds']:.2f}",
        ]
        for s in result.summary()
    ]
    return _table(header, rows)


def sweep_json(result: SweepResult, *, plot: str | None, runs: list[dict[str, str]], out: str | None = None,
               tracking_error: str | None = None, stopped_by: str | None = None,
               cost: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document of ``amsgrad sweep --json`` (NaN, for cells not run, becomes null)."""

    def grid(values) -> list[list[float | None]]:
        return [[_finite(v) for v in row] for row in values.tolist()]

    return {
        "setting": result.problem.setting,
        "steps": result.steps,
        "beta1": result.beta1s.tolist(),
        "beta2": result.beta2s.tolist(),
        "results": [
            {**s, "final_x": grid(result.final_x[s["optimizer"]]), "average_regret": grid(result.average_regret[s["optimizer"]])}
            for s in result.summary()
        ],
        "plot": plot,
        "runs": runs,
        "problem": result.problem.params(),
        "settings": {k: v for k, v in result.settings.params().items() if k not in ("beta1", "beta2")},
        "completed": stopped_by is None and result.completed,
        "stopped_by": stopped_by,
        "out": out,
        "tracking_error": tracking_error,
        "estimate": cost,
    }


def _atomic_write(path: Path, text: str) -> Path:
    """Write ``text`` beside ``path`` and rename it into place: an interrupted write leaves the old file."""
    path = Path(path)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    scratch.write_text(text)
    os.replace(scratch, path)
    return path


def write_json(path: Path, document: dict[str, Any]) -> Path:
    return _atomic_write(path, json.dumps(document, indent=2) + "\n")


def write_text(path: Path, text: str) -> Path:
    return _atomic_write(path, text if text.endswith("\n") else text + "\n")


TRACE_COLUMNS = ["optimizer", "step", "regret", "x", "average_regret"]


class TraceWriter:
    """``trace.csv``, written chunk by chunk as the runs produce it: memory stays bounded.

    Columns: optimizer, step, regret, x, average_regret; floats as Python's ``repr``, which reads
    back to the same float64.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._handle = self.path.open("w", newline="")
        csv.writer(self._handle).writerow(TRACE_COLUMNS)
        self.rows = 0

    def write(self, name: str, trace: Trace) -> None:
        if self._handle is None or not len(trace):
            return
        rows = zip(trace.step.tolist(), trace.regret.tolist(), trace.x.tolist(), trace.average_regret.tolist())
        self._handle.write("".join(f"{name},{t},{r!r},{x!r},{a!r}\n" for t, r, x, a in rows))
        self.rows += len(trace)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def write_traces(path: Path, results: Sequence[RunResult]) -> Path:
    """Every recorded point of every run, as CSV (see :class:`TraceWriter`)."""
    writer = TraceWriter(path)
    try:
        for r in results:
            writer.write(r.variant.name, r.trace)
    finally:
        writer.close()
    return path


class TraceSample:
    """At most ``capacity`` evenly spaced points of a run's trace, kept for its plot.

    Every point is kept until the capacity is reached; then every second one of those, and so
    on (the stride doubles), so a run of any length keeps between ``capacity/2`` and
    ``capacity`` points.

    >>> import numpy as np
    >>> sample = TraceSample(capacity=4)
    >>> for first in range(1, 11, 2):
    ...     t = np.arange(first, first + 2)
    ...     sample.add(Trace(t, t * 0.0, t * 1.0, t * 1.0))
    >>> sample.trace().step.tolist()
    [4, 8]
    """

    def __init__(self, capacity: int = 50_000):
        self.capacity = capacity
        self.stride = 1
        self._parts: list[Trace] = []
        self._size = 0
        self._seen = 0

    def add(self, trace: Trace) -> None:
        if not len(trace):
            return
        index = np.arange(self._seen, self._seen + len(trace))
        self._seen += len(trace)
        keep = (index + 1) % self.stride == 0
        part = _select(trace, keep)
        self._parts.append(part)
        self._size += len(part)
        while self._size > self.capacity:
            merged = Trace.concatenate(self._parts)
            self.stride *= 2
            half = _select(merged, np.arange(len(merged)) % 2 == 1)
            self._parts, self._size = [half], len(half)

    def trace(self) -> Trace:
        return Trace.concatenate(self._parts)


def _select(trace: Trace, mask: np.ndarray) -> Trace:
    return Trace(trace.step[mask], trace.regret[mask], trace.x[mask], trace.average_regret[mask])
