"""A grid of training runs on Dask distributed: local processes by default, a cluster by address.

The runs of a grid search (optimizer × α × β2 × seed) are independent, so :func:`run_grid`
submits each as a task of `Dask distributed <https://distributed.dask.org>`_. With no
``scheduler`` it starts a :class:`~distributed.LocalCluster` of worker *processes* on this
machine (one torch thread each by default, so runs do not fight over cores); with
``scheduler="tcp://host:8786"`` the same tasks go to a cluster started with
``dask scheduler`` and ``dask worker tcp://host:8786 --nthreads 1`` on each machine (with this
package installed there). Nothing else changes.

Why Dask and not Ray: the tasks here are plain function calls on one data set, and Dask
distributed is a pure-Python package of a few MB (Ray is a few hundred, with its own object
store and dashboard processes), starts a local cluster in about a second, runs on any machine
that has Python, and needs nothing of ours but importable functions.

Nothing recorded is lost:

* the data set is loaded and checked once here, then sent to every worker once, by a worker
  plugin (so a worker that joins later, or is restarted after a crash, gets it too); each
  worker process turns it into tensors once and keeps them for all its runs;
* each finished run is written at once to ``out/runs/<key>.json`` (written to a temporary
  file, then renamed, so a file is never half-written). Running the grid again with the same
  ``out`` loads those and runs only the rest: a grid stopped by Ctrl-C, a lost cluster or a
  crash resumes where it was;
* a worker that dies (killed, out of memory) loses only the run it was doing (a worker is
  given one run at a time: start a cluster's scheduler with
  ``DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION=1.0`` for the same): Dask gives that
  run to another worker, and after ``allowed_failures`` deaths (Dask's
  ``distributed.scheduler.allowed-failures``, 3) reports it as failed; every other run goes on;
* ``should_stop()`` is asked twice a second; when it says stop, every running task is told
  (through a :class:`distributed.Event`) and returns what it has, marked incomplete, and the
  tasks not started return at once. Incomplete runs are saved too, and run again on resume.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from distributed import WorkerPlugin

from .training import TrainConfig, TrainResult

__all__ = ["DataPlugin", "GridOutcome", "default_configs", "grid_configs", "load_finished", "run_grid", "save_result"]

_PROGRESS_TOPIC = "amsgrad-train-progress"


def grid_configs(
    model: str,
    optimizers: Sequence[str],
    lrs: Sequence[float],
    beta2s: Sequence[float],
    seeds: Sequence[int],
    steps: int,
    **common: Any,
) -> list[TrainConfig]:
    """Every (optimizer, α, β2, seed) of the grid, each a :class:`TrainConfig` with ``common``.

    >>> [c.key().rsplit("-", 1)[0] for c in grid_configs("logreg", ["adam"], [0.1], [0.99, 0.999], [0], 10)]
    ['logreg-adam-lr0.1-b20.99-seed0', 'logreg-adam-lr0.1-b20.999-seed0']
    """
    return [
        TrainConfig(model, optimizer, lr=float(lr), beta2=float(beta2), seed=int(seed), steps=int(steps), **common)
        for optimizer in dict.fromkeys(optimizers)
        for lr in dict.fromkeys(lrs)
        for beta2 in dict.fromkeys(beta2s)
        for seed in dict.fromkeys(seeds)
    ]


def default_configs(
    model: str,
    optimizers: Sequence[str] = ("adam", "amsgrad"),
    lrs: Sequence[float] | None = None,
    beta2s: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    steps: int | None = None,
    **common: Any,
) -> list[TrainConfig]:
    """The grid of ``model`` with its defaults (:data:`~.models.MODELS`) where an argument is None."""
    from .protocol import BETA2S, MODELS

    info = MODELS[model] if model in MODELS else None
    if info is None:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    common.setdefault("eval_every", info.eval_every)
    common.setdefault("eval_size", info.eval_size)
    return grid_configs(
        model,
        optimizers,
        lrs if lrs is not None else info.lrs,
        beta2s if beta2s is not None else BETA2S,
        seeds if seeds is not None else info.seeds,
        steps if steps is not None else info.steps,
        **common,
    )


@dataclass
class GridOutcome:
    """What :func:`run_grid` ran and found.

    Attributes:
        results: a result for every run that has one, finished or stopped, in grid order.
        resumed: how many of them were loaded from ``out`` instead of run.
        failed: ``{"key", "config", "error"}`` for each run that got no result.
        stopped: ``should_stop()`` (or Ctrl-C) ended the grid early.
        seconds: wall time, the cluster's start included.
        workers: the number of workers that ran the grid.
    """

    results: list[TrainResult] = field(default_factory=list)
    resumed: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0
    workers: int = 0

    @property
    def completed(self) -> bool:
        return not self.stopped and not self.failed and all(r.completed for r in self.results)


# ---------------------------------------------------------------------- files in out/runs
def _run_path(out: Path, config: TrainConfig) -> Path:
    return out / "runs" / f"{config.key()}.json"


def save_result(out: str | Path, result: TrainResult) -> Path:
    """Write one run's result to ``out/runs/<key>.json`` atomically; return the path."""
    path = _run_path(Path(out), result.config)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(result.to_dict(), allow_nan=False))
    os.replace(temporary, path)
    return path


def load_finished(out: str | Path, config: TrainConfig, fingerprint: str | None = None) -> TrainResult | None:
    """The finished result of ``config`` saved in ``out``, if there is one for the same data."""
    path = _run_path(Path(out), config)
    try:
        result = TrainResult.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable: run it again
    if not result.completed or result.config != config:
        return None
    if fingerprint is not None and result.dataset.get("fingerprint") != fingerprint:
        return None
    return result


# ---------------------------------------------------------------------- on a worker
_PREPARED: dict[str, Any] = {}  # per worker process: the data set's tensors, made at its first run


class DataPlugin(WorkerPlugin):
    """Holds a data set on every worker, including those that start later: a worker restarted
    after a crash gets it too (scattered data would not survive the loss of its workers)."""

    def __init__(self, data):
        self.data = data
        self.name = plugin_name(data.fingerprint())


def plugin_name(fingerprint: str) -> str:
    return f"amsgrad-train-data-{fingerprint}"


def _prepared(fingerprint: str):
    from distributed import get_worker

    from .training import prepare

    if fingerprint not in _PREPARED:
        worker, name = get_worker(), plugin_name(fingerprint)
        deadline = time.monotonic() + 60.0
        while name not in worker.plugins:  # a worker that has just started may be a moment behind
            if time.monotonic() > deadline:
                raise RuntimeError(f"the data set {fingerprint} did not reach worker {worker.address}")
            time.sleep(0.05)
        _PREPARED.clear()  # one data set at a time
        _PREPARED[fingerprint] = prepare(worker.plugins[name].data)
    return _PREPARED[fingerprint]


def _run_task(train_fn: Callable, config: TrainConfig, fingerprint: str, stop_event: str | None, threads: int | None, report_progress: bool):
    """One run, on a worker: None if the grid was stopped before it began."""
    import torch

    event = None
    if stop_event is not None:
        from distributed import Event

        event = Event(stop_event)
        if event.is_set():
            return None
    if threads:
        torch.set_num_threads(threads)
    last_check = [time.monotonic(), False]

    def should_stop() -> bool:
        now = time.monotonic()
        if event is not None and now - last_check[0] >= 0.5:  # one round trip to the scheduler
            last_check[0], last_check[1] = now, event.is_set()
        return last_check[1]

    on_progress = None
    if report_progress:
        from distributed import get_worker

        worker = get_worker()
        key = config.key()

        def on_progress(step: int, values: dict[str, float]) -> None:
            worker.log_event(_PROGRESS_TOPIC, {"key": key, "step": step, "steps": config.steps})

    return train_fn(config, _prepared(fingerprint), should_stop=should_stop, on_progress=on_progress)


# ---------------------------------------------------------------------- the grid
def _client(scheduler: str | None, workers: int | None):
    from distributed import Client, LocalCluster

    if scheduler is not None:
        return Client(scheduler, timeout="20s"), None
    import dask

    # Send a worker one run at a time (Dask's default queues a little more), so that a worker
    # that dies takes only the run it was doing with it.
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}), warnings.catch_warnings():
        # the scheduler's HTTP port (health checks only, no dashboard here) moves when 8787 is taken
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        cluster = LocalCluster(
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
            silence_logs=logging.ERROR,
        )
    return Client(cluster), cluster


class IgnoreCtrlC(WorkerPlugin):
    """Makes a local worker process ignore SIGINT: Ctrl-C at a terminal reaches every process of
    its group, and the workers must go on to the end of their step and return what they have
    when the command asks them to (the command alone handles Ctrl-C)."""

    name = "amsgrad-train-ignore-ctrl-c"

    def setup(self, worker) -> None:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # a worker's event loop runs there
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _register(client, plugin, attempts: int = 5) -> None:
    """Register a worker plugin, again if a worker goes away while it is sent (one that is
    restarting after a crash): the scheduler keeps the plugin for the workers that come back."""
    for attempt in range(attempts):
        try:
            client.register_plugin(plugin)
            return
        except OSError:  # distributed's CommClosedError is one
            if attempt == attempts - 1:
                raise
            time.sleep(1.0)


def run_grid(
    configs: Iterable[TrainConfig],
    data,
    out: str | Path,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_run: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_result: Callable[[TrainResult], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    train_fn: Callable | None = None,
    client=None,
) -> GridOutcome:
    """Run every config on ``data`` (a :class:`~.data.Dataset`); save each result in ``out``.

    Args:
        configs: the runs (e.g. :func:`grid_configs`).
        data: the data set, already loaded and checked.
        out: the output folder; finished runs found there are loaded, not run again.
        scheduler: a Dask scheduler's address; ``None`` starts local worker processes.
        workers: local worker processes (default: the machine's cores).
        threads_per_run: torch threads of each run (default: cores // workers locally, 1 on a cluster).
        should_stop: asked twice a second; True stops the grid (results so far are kept).
        on_result: called, in this process, with each result as it arrives (before saving
            finishes the next one), the resumed ones included.
        on_progress: ``on_progress(key, step, steps)`` at each record of a running run.
        train_fn: what runs one config (default :func:`~.training.train`); the same signature.
        client: an existing :class:`distributed.Client` to use instead of starting one.
    """
    from distributed import Event, wait

    from .training import train

    started = time.monotonic()
    out = Path(out)
    configs = list(dict.fromkeys(configs))
    keys = [c.key() for c in configs]
    fingerprint = data.fingerprint()
    outcome = GridOutcome()
    by_key: dict[str, TrainResult] = {}
    todo: list[TrainConfig] = []
    for config, key in zip(configs, keys):
        found = load_finished(out, config, fingerprint)
        if found is None:
            todo.append(config)
        else:
            by_key[key] = found
            outcome.resumed += 1
            if on_result is not None:
                on_result(found)

    def collect() -> GridOutcome:
        outcome.results = [by_key[k] for k in keys if k in by_key]
        outcome.seconds = time.monotonic() - started
        return outcome

    if not todo:
        return collect()

    owned = client is None
    cluster = None
    stop_name = f"amsgrad-train-stop-{uuid.uuid4().hex}"
    try:
        if owned:
            client, cluster = _client(scheduler, workers)
        n_workers = len(client.scheduler_info().get("workers", {})) or (workers or 1)
        outcome.workers = n_workers
        if threads_per_run is None:
            threads_per_run = max(1, (os.cpu_count() or 1) // n_workers) if scheduler is None and owned else 1
        if on_progress is not None:
            client.subscribe_topic(_PROGRESS_TOPIC, lambda event: on_progress(event[1]["key"], event[1]["step"], event[1]["steps"]))
        stop_event = Event(stop_name, client=client)
        if cluster is not None:
            _register(client, IgnoreCtrlC())
        plugin = DataPlugin(data)
        _register(client, plugin)
        def submit(config: TrainConfig):
            key = f"train-{config.key()}-{uuid.uuid4().hex[:8]}"
            return client.submit(_run_task, train_fn or train, config, fingerprint, stop_name, threads_per_run, on_progress is not None, key=key, pure=False)

        futures = {submit(config): config for config in todo}
        attempts = {config.key(): 1 for config in todo}
        pending = set(futures)
        stopping = False
        while pending:
            try:
                wait(pending, timeout=0.5, return_when="FIRST_COMPLETED")
            except KeyboardInterrupt:
                stopping = True
            except Exception:  # noqa: BLE001 - a time-out, or a future cancelled: looked at below
                pass
            done = {f for f in pending if f.done()}
            pending -= done
            if not stopping and should_stop is not None and should_stop():
                stopping = True
            if stopping and not outcome.stopped:
                outcome.stopped = True
                stop_event.set()
            for future in done:
                config = futures.pop(future)
                key = config.key()
                if future.cancelled() and not outcome.stopped and attempts[key] < 3:
                    # the scheduler dropped it (its worker was lost at a bad moment): again
                    attempts[key] += 1
                    again = submit(config)
                    futures[again] = config
                    pending.add(again)
                    continue
                try:
                    result = future.result()
                except BaseException as error:  # noqa: BLE001 - a failed run is reported, the rest go on
                    if isinstance(error, KeyboardInterrupt):
                        raise
                    text = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
                    outcome.failed.append({"key": key, "config": config.to_dict(), "error": f"{type(error).__name__}: {text}".rstrip(": ")})
                    continue
                if result is None:  # stopped before it began
                    continue
                save_result(out, result)
                by_key[key] = result
                if on_result is not None:
                    on_result(result)
        client.unregister_worker_plugin(plugin.name)
    finally:
        if owned and client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return collect()
