"""Recording runs with MLflow, so that a failure to record never loses a result.

:class:`Tracker` wraps ``mlflow.MlflowClient``. The store is ``MLFLOW_TRACKING_URI`` when it
is set, else a SQLite database in the working directory (``sqlite:///mlflow.db``, MLflow's
embedded default). Metrics are buffered and sent with ``log_batch`` (at most 1,000 values a
call, MLflow's limit), never one call per point.

MLflow's SQL store spends about 70 µs of CPU per metric value (SQLAlchemy ORM), 2 s for each
of the default runs' 30,000 values, so :class:`BackgroundTracker` records each run in a child
process while the command computes and plots: :func:`open_tracker` picks it on Linux, where
``fork`` is safe.

A tracker never raises. The first error (an unreachable server, a read-only database…) turns
it off and is kept in :attr:`Tracker.error`; the caller reports it once and exits non-zero,
after the results are printed and saved. MLflow is imported only when a tracker starts, so
commands that do not record pay nothing for it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["DEFAULT_TRACKING_URI", "RunHandle", "Tracker", "BackgroundTracker", "open_tracker", "tracking_uri"]

#: The store used when MLFLOW_TRACKING_URI is not set: SQLite in the working directory.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

#: MLflow accepts at most this many metric values per log_batch call.
_BATCH = 1000

#: Defaults for MLflow's HTTP client, used unless the environment sets them: give up on an
#: unreachable server after seconds, not after MLflow's several minutes of retries.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI, when the store is a server.

    >>> run_url("http://127.0.0.1:5000", "1", "abc")
    'http://127.0.0.1:5000/#/experiments/1/runs/abc'
    """
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def tracking_uri() -> str:
    """Where runs are recorded: ``MLFLOW_TRACKING_URI``, or the SQLite default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


@dataclass
class RunHandle:
    """One MLflow run: its id, and metric values not sent yet."""

    run_id: str
    name: str
    experiment_id: str
    pending: list | None = None
    status: str = "RUNNING"

    def __post_init__(self) -> None:
        self.pending = []


@contextmanager
def _quiet() -> Iterator[None]:
    # MLflow and alembic announce migrations and deprecations on stderr, and MLflow prints
    # "View run" links on stdout, which belongs to the command's table or JSON. Errors still
    # surface as exceptions.
    with warnings.catch_warnings(), redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        yield


class Tracker:
    """Records runs in one MLflow experiment; off (and silent) when ``enabled`` is False.

    Args:
        experiment: the experiment's name (``"synthetic"``, as the reference names it).
        uri: the tracking URI (default: :func:`tracking_uri`).
        enabled: False makes every method a no-op (``--no-track``).
    """

    def __init__(self, experiment: str, uri: str | None = None, enabled: bool = True):
        self.experiment = experiment
        self.uri = uri or tracking_uri()
        self.enabled = enabled
        self.error: str | None = None
        self.runs: list[RunHandle] = []
        self._client: Any = None
        self._experiment_id: str | None = None

    @property
    def active(self) -> bool:
        """Recording, and no error so far."""
        return self.enabled and self.error is None

    def _fail(self, what: str, error: BaseException) -> None:
        if self.error is None:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            self.error = f"{what}: {message[:300]}"

    def _connect(self) -> bool:
        if self._client is not None:
            return True
        with _quiet():
            for name, value in HTTP_DEFAULTS.items():
                os.environ.setdefault(name, value)
            from mlflow import MlflowClient

            for name in ("mlflow", "alembic"):
                logging.getLogger(name).setLevel(logging.WARNING)
            client = MlflowClient(tracking_uri=self.uri)
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                self._experiment_id = client.create_experiment(self.experiment)
            elif found.lifecycle_stage == "deleted":
                client.restore_experiment(found.experiment_id)
                self._experiment_id = found.experiment_id
            else:
                self._experiment_id = found.experiment_id
        self._client = client
        return True

    def start_run(self, name: str, params: dict[str, Any], description: str = "", tags: dict[str, str] | None = None, parent: RunHandle | None = None) -> RunHandle | None:
        """Open a run named ``name`` with its parameters; None when not recording.

        With ``parent``, the run is a child of that one (MLflow's ``mlflow.parentRunId`` tag),
        shown nested under it in the UI: one parent per grid, a child per configuration.
        """
        if not self.active:
            return None
        try:
            self._connect()
            from mlflow.entities import Param

            with _quiet():
                all_tags = {"mlflow.note.content": description, **(tags or {})}
                if parent is not None:
                    all_tags["mlflow.parentRunId"] = parent.run_id
                run = self._client.create_run(self._experiment_id, run_name=name, tags=all_tags)
                handle = RunHandle(run.info.run_id, name, self._experiment_id)
                items = [Param(k, str(v)) for k, v in params.items() if v is not None]
                for i in range(0, len(items), 100):  # MLflow's limit per batch
                    self._client.log_batch(handle.run_id, params=items[i : i + 100])
        except Exception as error:  # noqa: BLE001 - any failure must turn tracking off, not crash
            self._fail(f"could not start a run in {self.uri}", error)
            return None
        self.runs.append(handle)
        return handle

    def log_metrics(self, handle: RunHandle | None, step: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Queue ``values[name][i]`` at ``step[i]``; full batches are sent at once."""
        if handle is None or not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        steps = step.tolist()
        columns = {name: np.asarray(v, dtype=np.float64).tolist() for name, v in values.items()}
        for i, s in enumerate(steps):
            for name, column in columns.items():
                handle.pending.append(Metric(name, column[i], now, s))
        if len(handle.pending) >= _BATCH:
            self._send(handle, everything=False)

    def flush(self, handle: RunHandle | None) -> None:
        """Send every queued metric value."""
        if handle is not None and self.active:
            self._send(handle, everything=True)

    def _send(self, handle: RunHandle, everything: bool) -> None:
        try:
            with _quiet():
                while len(handle.pending) >= (1 if everything else _BATCH):
                    batch, handle.pending = handle.pending[:_BATCH], handle.pending[_BATCH:]
                    self._client.log_batch(handle.run_id, metrics=batch)
        except Exception as error:  # noqa: BLE001
            self._fail(f"could not record metrics in {self.uri}", error)

    def log_artifact(self, handle: RunHandle | None, path: str | Path) -> None:
        """Attach the file at ``path`` to the run."""
        if handle is None or not self.active:
            return
        try:
            with _quiet():
                self._client.log_artifact(handle.run_id, str(path))
        except Exception as error:  # noqa: BLE001
            self._fail(f"could not store {Path(path).name} in {self.uri}", error)

    def finish(self, handle: RunHandle | None, status: str = "FINISHED") -> None:
        """Send what is queued and close the run as ``FINISHED``, ``KILLED`` or ``FAILED``."""
        if handle is None or not self.active:
            return
        self.flush(handle)
        try:
            with _quiet():
                self._client.set_terminated(handle.run_id, status=status)
            handle.status = status
        except Exception as error:  # noqa: BLE001
            self._fail(f"could not close run {handle.run_id} in {self.uri}", error)

    def describe_runs(self) -> list[dict[str, str]]:
        """The runs recorded, as the command line's JSON reports them."""
        return [
            {
                "name": h.name,
                "run_id": h.run_id,
                "experiment_id": h.experiment_id,
                "status": h.status,
                "tracking_uri": self.uri,
                "url": run_url(self.uri, h.experiment_id, h.run_id),
            }
            for h in self.runs
        ]

    def close(self) -> None:
        """Nothing to wait for: every call above has finished when it returns."""


# ---------------------------------------------------------------------------------------
# The same, in child processes: one per run, so that two runs are recorded on two cores.

def _serve(experiment: str, uri: str, commands: Any, replies: Any, store_ready: Any, first: bool) -> None:
    """A child process: record one run with a :class:`Tracker`, as the parent commands.

    The first child opens the store (creating the database and the experiment if needed)
    before the others touch it: ``store_ready`` is set when it has tried.
    """
    import queue
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # whatever handler the parent had installed
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # the parent prints the runs
    parent = os.getppid()
    tracker = Tracker(experiment, uri)
    handle: RunHandle | None = None
    waited = first
    while True:
        try:
            op, *args = commands.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the parent died without saying goodbye
                return
            continue
        if op == "close":
            replies.put((tracker.describe_runs(), tracker.error))
            return
        if not waited:
            store_ready.wait(timeout=300)
            waited = True
        if op == "start":
            handle = tracker.start_run(*args)
            if first:
                store_ready.set()
        elif op == "metrics":
            tracker.log_metrics(handle, *args)
        elif op == "flush":
            tracker.flush(handle)
        elif op == "artifact":
            tracker.log_artifact(handle, *args)
        elif op == "finish":
            tracker.finish(handle, *args)


class BackgroundTracker:
    """Like :class:`Tracker`, but each run is recorded by a child process; no method waits.

    The children are forked up front, one for each of ``runs`` runs, before this process
    starts any thread. Runs are identified by local handles until :meth:`close`, which waits
    for the children to record everything and then fills :meth:`describe_runs` and
    :attr:`error`.
    """

    def __init__(self, experiment: str, runs: int = 1, uri: str | None = None):
        import multiprocessing

        self.experiment = experiment
        self.uri = uri or tracking_uri()
        self.enabled = True
        self.error: str | None = None
        self._runs: list[dict[str, str]] = []
        self._started = 0
        context = multiprocessing.get_context("fork")
        store_ready = context.Event()
        self._workers = []
        for i in range(runs):
            commands, replies = context.Queue(), context.Queue()
            process = context.Process(
                target=_serve,
                args=(experiment, self.uri, commands, replies, store_ready, i == 0),
                name=f"mlflow-run-{i}",
                daemon=True,
            )
            process.start()
            self._workers.append((process, commands, replies))

    @property
    def active(self) -> bool:
        return self.error is None and bool(self._workers)

    def _send(self, handle: int | None, *command: Any) -> None:
        if handle is not None and self.active:
            self._workers[handle][1].put(command)

    def start_run(self, name: str, params: dict[str, Any], description: str = "", tags: dict[str, str] | None = None) -> int | None:
        if not self.active or self._started == len(self._workers):
            return None
        handle, self._started = self._started, self._started + 1
        self._send(handle, "start", name, params, description, tags)
        return handle

    def log_metrics(self, handle: int | None, step: np.ndarray, values: dict[str, np.ndarray]) -> None:
        if len(step):
            self._send(handle, "metrics", np.asarray(step), {k: np.asarray(v) for k, v in values.items()})

    def flush(self, handle: int | None) -> None:
        self._send(handle, "flush")

    def log_artifact(self, handle: int | None, path: str | Path) -> None:
        self._send(handle, "artifact", str(path))

    def finish(self, handle: int | None, status: str = "FINISHED") -> None:
        self._send(handle, "finish", status)

    def close(self, timeout: float = 600.0) -> None:
        """Wait until the children have recorded everything (a second Ctrl-C stops them)."""
        import queue

        workers, self._workers = self._workers, []
        deadline = time.monotonic() + timeout
        try:
            for _, commands, _ in workers:
                commands.put(("close",))
            for process, _, replies in workers:
                while True:
                    try:
                        runs, error = replies.get(timeout=0.5)
                        break
                    except queue.Empty:
                        if not process.is_alive():
                            runs, error = [], f"the recording process stopped (exit code {process.exitcode})"
                            break
                        if time.monotonic() > deadline:
                            runs, error = [], "the recording process did not finish in time"
                            break
                self._runs.extend(runs)
                self.error = self.error or error
                process.join(timeout=5)
        except KeyboardInterrupt:
            self.error = self.error or "stopped by Ctrl-C while recording the runs"
        finally:
            for process, _, _ in workers:
                if process.is_alive():
                    process.terminate()

    def describe_runs(self) -> list[dict[str, str]]:
        return list(self._runs)


def open_tracker(experiment: str, runs: int = 1, enabled: bool = True, background: bool | None = None) -> Tracker | BackgroundTracker:
    """A tracker for ``runs`` runs of ``experiment``: in child processes on Linux, else in process."""
    import multiprocessing

    if background is None:  # fork is safe and cheap on Linux; macOS's system libraries dislike it
        background = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
    if background and enabled:
        return BackgroundTracker(experiment, runs=runs)
    return Tracker(experiment, enabled=enabled)
