"""What a job will cost, estimated before it starts, and the jobs refused because they cannot run.

The command line estimates every job (:func:`synthetic_cost`, :func:`sweep_cost`): the steps,
the time, the points recorded to ``trace.csv``, the metric values and bytes sent to MLflow, and
the memory it keeps. :func:`check` refuses, with one sentence naming the argument to change,
what this machine cannot do: more than 2^53 steps (step counts and regrets are float64, exact
integers only up to there), a trace larger than the free disk, more MLflow values than
:data:`MAX_TRACKED_VALUES`, or more memory than the machine has. Everything else runs, however
long: the estimate says how long.

The rates are this project's measurements (AMD EPYC, 2 cores; see the README), rounded down;
on another machine the time is an order of magnitude, not a promise.

>>> cost = synthetic_cost(steps=10_000_000, runs=2, record_every=1000, engine="fast", tracked=True)
>>> cost.recorded_points, cost.tracked_values
(20000, 60000)
>>> cost.describe()
'2 runs x 10,000,000 steps (about 0.2 s); 20,000 points to trace.csv (1.4 MB); 60,000 values to MLflow (15 MB)'
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["MAX_STEPS", "MAX_TRACKED_VALUES", "JobCost", "JobRefused", "synthetic_cost", "sweep_cost", "train_cost", "check",
           "available_memory"]

#: Steps are counted, and regrets summed, in float64: integers are exact up to 2^53.
MAX_STEPS = 2**53

#: The most metric values one command sends to MLflow (~750 MB in SQLite, ~30 s to record).
MAX_TRACKED_VALUES = 3_000_000

#: Metric values recorded per trace point: the step's regret, x_t and R(t)/t, as the reference.
METRICS_PER_POINT = 3

# Measured sizes: a trace.csv row, and a metric value in MLflow's SQLite store with its indexes.
TRACE_BYTES_PER_POINT = 72
TRACKED_BYTES_PER_VALUE = 250
# A point kept in memory (step, regret, x, R(t)/t), a sweep cell's result (final x and R(T)/T,
# plus its JSON), and a cell of the grid engine while it runs (x, m, v, v̂, R(t), β1, β2).
MEMORY_BYTES_PER_POINT = 32
MEMORY_BYTES_PER_CELL = 16 + 60
MEMORY_BYTES_PER_RUNNING_CELL = 7 * 8

# Throughputs, steps per second (rounded down from the README's measurements).
STEPS_PER_SECOND = {"fast": 1.0e8, "torch": 3.0e4}
CELL_STEPS_PER_SECOND = 1.0e9  # the grid engine, both cores


class JobRefused(ValueError):
    """A job that cannot run here; ``argument`` is the option to change (``--steps``, say)."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


@dataclass(frozen=True)
class JobCost:
    """The estimated cost of one command (sizes in bytes, time in seconds)."""

    runs: int
    steps: int
    seconds: float
    recorded_points: int
    trace_bytes: int
    tracked_values: int
    tracked_bytes: int
    memory_bytes: int
    cells: int = 0

    def describe(self) -> str:
        """The cost in one line."""
        if self.cells:
            head = f"{self.cells:,} cells x {self.steps // max(self.cells, 1):,} steps"
        else:
            head = f"{self.runs} run{'s' if self.runs != 1 else ''} x {self.steps // max(self.runs, 1):,} steps"
        parts = [f"{head} (about {_duration(self.seconds)})"]
        if self.recorded_points:
            parts.append(f"{self.recorded_points:,} points to trace.csv ({_size(self.trace_bytes)})")
        if self.tracked_values:
            parts.append(f"{self.tracked_values:,} values to MLflow ({_size(self.tracked_bytes)})")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 3), "description": self.describe()}


def synthetic_cost(steps: int, runs: int, record_every: int, engine: str, tracked: bool) -> JobCost:
    """The cost of ``runs`` runs of ``steps`` steps, recording every ``record_every`` steps."""
    points = runs * (steps // record_every if record_every else 0)
    values = METRICS_PER_POINT * points if tracked else 0
    return JobCost(
        runs=runs,
        steps=runs * steps,
        seconds=runs * steps / STEPS_PER_SECOND[engine],
        recorded_points=points,
        trace_bytes=points * TRACE_BYTES_PER_POINT,
        tracked_values=values,
        tracked_bytes=values * TRACKED_BYTES_PER_VALUE,
        memory_bytes=0,  # the trace streams to disk; the plot keeps a bounded sample
    )


def sweep_cost(steps: int, cells: int, variants: int, tracked: bool) -> JobCost:
    """The cost of ``variants`` optimizers over ``cells`` grid cells of ``steps`` steps each."""
    total_cells = cells * variants
    values = 5 * variants if tracked else 0  # a few summary metrics per optimizer
    return JobCost(
        runs=variants,
        steps=total_cells * steps,
        seconds=total_cells * steps / CELL_STEPS_PER_SECOND,
        recorded_points=0,
        trace_bytes=0,
        tracked_values=values,
        tracked_bytes=values * TRACKED_BYTES_PER_VALUE,
        memory_bytes=total_cells * MEMORY_BYTES_PER_CELL + cells * MEMORY_BYTES_PER_RUNNING_CELL,  # one variant runs at a time
        cells=total_cells,
    )


#: Metric values a training run records at each record (train_loss, test_loss, the accuracies, batch_loss).
TRAIN_METRICS_PER_RECORD = 5


def train_cost(configs, step_seconds: float, record_seconds: float, workers: int | None, data_bytes: int, tracked: bool) -> JobCost:
    """The cost of training runs (:class:`~.realdata.training.TrainConfig`), from a step and a
    record timed here (:func:`~.realdata.training.measure`).

    The runs share ``workers`` local processes; on a cluster (``workers=None``) the time is
    that of one worker. Each worker keeps the data set as float32 (4x its ``uint8`` bytes).
    """
    records = sum(c.steps // c.record_every + 1 for c in configs)
    seconds = sum(c.steps for c in configs) * step_seconds + records * record_seconds
    values = TRAIN_METRICS_PER_RECORD * records if tracked else 0
    return JobCost(
        runs=len(configs),
        steps=sum(c.steps for c in configs),
        seconds=seconds / (workers or 1),
        recorded_points=0,
        trace_bytes=0,
        tracked_values=values,
        tracked_bytes=values * TRACKED_BYTES_PER_VALUE,
        memory_bytes=(workers or 0) * 5 * data_bytes if configs else 0,
    )


def available_memory() -> int | None:
    """Bytes of memory available to a new job (Linux ``MemAvailable``), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _free_disk(path: Path) -> int | None:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def check(cost: JobCost, out: Path, store: Path | None, record_every: int | None = None,
          size_argument: str = "--steps", record_argument: str = "--record-every") -> None:
    """Raise :class:`JobRefused` if the job cannot run on this machine (see the module's list).

    ``store`` is the folder of a local MLflow database (None for a server or no tracking);
    ``record_every`` the job's ``--record-every`` (``record_argument``), to suggest a value that would fit.
    """

    def less_often(factor: int) -> str:
        if record_every is None:
            return f"record {factor}x less often"
        return f"use {record_argument} {record_every * factor:,} or more"

    per_run = cost.steps // max(cost.cells or cost.runs, 1)
    if per_run > MAX_STEPS:
        raise JobRefused("--steps", f"at most 2^53 = {MAX_STEPS:,} steps (float64 counts exactly up to there)")
    free = _free_disk(out)
    if free is not None and cost.trace_bytes > free:
        raise JobRefused(
            record_argument,
            f"{cost.recorded_points:,} recorded points would write about {_size(cost.trace_bytes)} to trace.csv, "
            f"but {out} has {_size(free)} free: {less_often(-(-cost.trace_bytes // free))}",
        )
    if cost.tracked_values > MAX_TRACKED_VALUES:
        factor = -(-cost.tracked_values // MAX_TRACKED_VALUES)
        raise JobRefused(
            record_argument,
            f"{cost.tracked_values:,} metric values (about {_size(cost.tracked_bytes)}) are too many for MLflow "
            f"(at most {MAX_TRACKED_VALUES:,}): {less_often(factor)}, or --no-track",
        )
    if store is not None and cost.tracked_bytes:
        free_store = _free_disk(store)
        if free_store is not None and cost.tracked_bytes > free_store:
            raise JobRefused(
                record_argument,
                f"recording would add about {_size(cost.tracked_bytes)} to the MLflow store, "
                f"but {store} has {_size(free_store)} free: {less_often(-(-cost.tracked_bytes // free_store))}, "
                f"or --no-track",
            )
    memory = available_memory()
    if memory is not None and cost.memory_bytes > memory:
        raise JobRefused(
            size_argument,
            f"the job needs about {_size(cost.memory_bytes)} of memory and this machine has {_size(memory)} available",
        )


def _size(count: float) -> str:
    """
    >>> _size(999), _size(1_426_965), _size(31e9)
    ('999 B', '1.4 MB', '31 GB')
    """
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            value = count / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(count)} B"


def _duration(seconds: float) -> str:
    """
    >>> _duration(0.04), _duration(95), _duration(3 * 86400 + 1)
    ('0.04 s', '1.6 min', '3.0 days')
    """
    for unit, scale in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 1.5 * scale:
            return f"{seconds / scale:.1f} {unit}"
    return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
