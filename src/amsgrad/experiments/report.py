"""Results as tables, JSON and files: what the command line prints and saves to ``--out``."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

from .simulate import RunResult
from .sweep import SweepResult

__all__ = [
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
        "completed": all(r.completed for r in results),
        "out": out,
        "tracking_error": tracking_error,
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
            f"{s['median_final_x']:+.4f}",
            f"{s['seconds']:.2f}",
        ]
        for s in result.summary()
    ]
    return _table(header, rows)


def sweep_json(result: SweepResult, *, plot: str | None, runs: list[dict[str, str]], out: str | None = None, tracking_error: str | None = None) -> dict[str, Any]:
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
        "out": out,
        "tracking_error": tracking_error,
    }


def write_json(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path


def write_traces(path: Path, results: Sequence[RunResult]) -> Path:
    """Every recorded point of every run, as CSV: optimizer, step, regret, x, average_regret."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["optimizer", "step", "regret", "x", "average_regret"])
        for r in results:
            tr = r.trace
            for row in zip(tr.step.tolist(), tr.regret.tolist(), tr.x.tolist(), tr.average_regret.tolist()):
                writer.writerow([r.variant.name, *(repr(v) for v in row)])
    return path
