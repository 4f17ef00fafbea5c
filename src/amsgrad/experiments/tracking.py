"""Recording runs with MLflow, so that recording never costs much, never hangs and never loses a result.

Where: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///mlflow.db`` in the working directory
(MLflow's embedded default); a tracking server with ``MLFLOW_TRACKING_URI=http://host:5000``.

How: :func:`open_tracker` returns a tracker whose methods never wait and never raise.

* :class:`BackgroundTracker`, the command line's: a separate process (:mod:`.recorder`) imports
  MLflow, opens the store and records, while the command computes and plots. It is a new
  interpreter, not a fork, and it does not share the command's terminal, so Ctrl-C and
  SIGTERM reach only the command, which then tells it how to close the runs.
* :class:`Tracker`: the same, in the calling process (what the recording process runs).
* :class:`NullTracker`: ``--no-track``.

Failures: before any work starts, :func:`preflight` checks a local store in milliseconds
(:func:`~.mlflow_store.check_sqlite_store`: a folder where the database cannot be created, a
read-only or foreign file, a database kept locked by another process); a server is probed
with a 3-second connection attempt by the recording process. The first failure turns
recording off and is kept, as one sentence, in ``tracker.error``: the command still saves its
results, prints one warning and exits with status 1. MLflow's own log output never reaches
the terminal.

Speed: metric values are sent in batches; in a local SQLite store they are inserted with
:class:`~.mlflow_store.SqliteMetricWriter` (about 2 µs a value instead of MLflow's ~55 µs),
and a new store is a copy of an empty one made once (:func:`~.mlflow_store.create_sqlite_store`).

Artifacts of a local store go to ``mlartifacts/`` beside the database (MLflow's proxied layout,
``mlflow-artifacts:/<experiment id>/<run id>/artifacts``), so that ``mlflow ui`` started in the
project folder shows them wherever the folder has been moved.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator
from urllib.parse import urlsplit

import numpy as np

from . import mlflow_store

__all__ = [
    "DEFAULT_TRACKING_URI",
    "BackgroundTracker",
    "NullTracker",
    "RunHandle",
    "Tracker",
    "open_tracker",
    "preflight",
    "run_url",
    "tracking_uri",
]

#: The store used when MLFLOW_TRACKING_URI is not set: SQLite in the working directory.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

#: MLflow accepts at most this many metric values per log_batch call.
_BATCH = 1000

#: Defaults for MLflow's HTTP client, used unless the environment sets them: a failing server
#: is given up after seconds, not after MLflow's minutes of retries.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}

#: Seconds to wait for a tracking server to accept a connection before giving up on it.
CONNECT_TIMEOUT = 3.0

#: Seconds an aborted command waits for its runs to be closed as KILLED.
ABORT_WAIT = 3.0


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


def cache_dir() -> Path:
    """The per-user cache (``AMSGRAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/amsgrad`` or ``~/.cache/amsgrad``)."""
    root = os.environ.get("AMSGRAD_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "amsgrad"


def preflight(uri: str) -> str | None:
    """What is wrong with a local store, in one sentence, found in milliseconds; None if nothing.

    Servers are not contacted here (that could take seconds): the recording process probes them.
    """
    path = mlflow_store.sqlite_path(uri)
    if path is not None:
        problem = mlflow_store.check_sqlite_store(path)
        return f"{uri}: {problem}" if problem else None
    if uri.startswith(("http://", "https://")) and not urlsplit(uri).hostname:
        return f"{uri} names no host"
    return None


def probe_server(uri: str, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """Why a tracking server cannot be reached (one sentence), or None when it accepts a connection."""
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except socket.timeout:
        return f"cannot reach the tracking server {uri}: no answer within {timeout:g} s"
    except OSError as error:
        return f"cannot reach the tracking server {uri} ({error.strerror or error})"


@dataclass
class RunHandle:
    """One MLflow run: its id, where its artifacts go, and metric values not sent yet."""

    run_id: str
    name: str
    experiment_id: str
    artifact_uri: str = ""
    pending: list = field(default_factory=list)
    status: str = "RUNNING"


@contextmanager
def _quiet() -> Iterator[None]:
    # MLflow and alembic announce migrations and deprecations, and MLflow prints "View run"
    # links on stdout, which belongs to the command's table or JSON. Errors still surface as
    # exceptions.
    with warnings.catch_warnings(), redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        yield


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    # MLflow wraps database errors in long messages: keep the sentence that says what happened.
    for marker in ("(sqlite3.OperationalError) ", "(sqlite3.DatabaseError) "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


class Tracker:
    """Records runs in one MLflow experiment, in this process; off (and silent) when ``enabled`` is False.

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
        self._db_path = mlflow_store.sqlite_path(self.uri)
        self._writer: mlflow_store.SqliteMetricWriter | None = None

    @property
    def active(self) -> bool:
        """Recording, and no error so far."""
        return self.enabled and self.error is None

    def fail(self, message: str) -> None:
        """Turn recording off, keeping the first reason."""
        if self.error is None:
            self.error = message

    def _fail(self, what: str, error: BaseException) -> None:
        self.fail(f"{what}: {_first_line(error)}")

    def connect(self) -> bool:
        """Open the store and the experiment (creating them if needed); False, with ``error`` set, if not."""
        if self._client is not None or not self.active:
            return self.active
        problem = preflight(self.uri)
        if problem is None and self.uri.startswith(("http://", "https://")):
            problem = probe_server(self.uri)
        if problem is not None:
            self.fail(problem)
            return False
        try:
            with _quiet():
                self._open()
        except Exception as error:  # noqa: BLE001 - any failure must turn tracking off, not crash
            self._fail(f"could not open the MLflow store {self.uri}", error)
            return False
        return True

    def _open(self) -> None:
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        for name in ("mlflow", "alembic", "sqlalchemy"):
            logging.getLogger(name).setLevel(logging.ERROR)
        if self._db_path is not None:
            if not self._db_path.exists() or self._db_path.stat().st_size == 0:
                mlflow_store.create_sqlite_store(self._db_path, cache_dir())
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        found = client.get_experiment_by_name(self.experiment)
        if found is None:
            self._experiment_id = client.create_experiment(self.experiment)
        elif found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
            self._experiment_id = found.experiment_id
        else:
            self._experiment_id = found.experiment_id
        if self._db_path is not None:
            try:
                self._writer = mlflow_store.SqliteMetricWriter(self._db_path)
            except LookupError:  # another schema: MLflow's own log_batch writes it
                self._writer = None
        self._client = client

    def start_run(self, name: str, params: dict[str, Any], description: str = "", tags: dict[str, str] | None = None,
                  parent: RunHandle | None = None) -> RunHandle | None:
        """Open a run named ``name`` with its parameters (a child of ``parent`` if given); None when not recording."""
        if not self.connect():
            return None
        try:
            from mlflow.entities import Param

            with _quiet():
                all_tags = {"mlflow.note.content": description, **(tags or {})}
                if parent is not None:
                    all_tags["mlflow.parentRunId"] = parent.run_id
                run = self._client.create_run(self._experiment_id, run_name=name, tags=all_tags)
                handle = RunHandle(run.info.run_id, name, self._experiment_id, run.info.artifact_uri)
                items = [Param(k, str(v)) for k, v in params.items() if v is not None]
                for i in range(0, len(items), 100):  # MLflow's limit per batch
                    self._client.log_batch(handle.run_id, params=items[i : i + 100])
        except Exception as error:  # noqa: BLE001
            self._fail(f"could not start a run in {self.uri}", error)
            return None
        self.runs.append(handle)
        return handle

    def log_metrics(self, handle: RunHandle | None, step: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Record ``values[name][i]`` at ``step[i]`` (queued into full batches for a server)."""
        if handle is None or not self.active or not len(step):
            return
        now = int(time.time() * 1000)
        steps = np.asarray(step).tolist()
        columns = {name: np.asarray(v, dtype=np.float64).tolist() for name, v in values.items()}
        if self._writer is not None:
            try:
                self._writer.write(handle.run_id, now, steps, columns)
            except Exception as error:  # noqa: BLE001
                self._fail(f"could not record metrics in {self.uri}", error)
            return
        from mlflow.entities import Metric

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
            local = None
            if self._db_path is not None:
                local = mlflow_store.local_artifact_path(self._db_path, handle.artifact_uri)
            if local is not None:
                mlflow_store.copy_artifacts([Path(path)], local)
            else:
                with _quiet():
                    self._client.log_artifact(handle.run_id, str(path))
        except Exception as error:  # noqa: BLE001
            self._fail(f"could not store {Path(path).name} in {self.uri}", error)

    def finish(self, handle: RunHandle | None, status: str = "FINISHED") -> None:
        """Send what is queued and close the run as ``FINISHED``, ``KILLED`` or ``FAILED``."""
        if handle is None or handle.status != "RUNNING":
            return
        if self.active:
            self.flush(handle)
        self._terminate(handle, status)

    def _terminate(self, handle: RunHandle, status: str) -> None:
        # Closing is attempted even after an error: a run is never left RUNNING if the store answers.
        if self._client is None:
            return
        try:
            with _quiet():
                self._client.set_terminated(handle.run_id, status=status)
            handle.status = status
        except Exception as error:  # noqa: BLE001
            self._fail(f"could not close run {handle.run_id} in {self.uri}", error)

    def abort(self, status: str = "KILLED") -> None:
        """Close every open run as ``status`` at once, dropping what is still queued."""
        for handle in self.runs:
            handle.pending.clear()
            if handle.status == "RUNNING":
                self._terminate(handle, status)

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

    def close(self, should_stop: Callable[[], bool] | None = None) -> None:
        """Close any run still open as ``FINISHED`` (every call above has finished when it returns)."""
        for handle in self.runs:
            self.finish(handle)
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class NullTracker(Tracker):
    """Records nothing (``--no-track``)."""

    def __init__(self, experiment: str):
        super().__init__(experiment, enabled=False)


# ---------------------------------------------------------------------------------------
# The same, in a separate process: the command never waits for MLflow.

def write_frame(stream: BinaryIO, message: tuple) -> None:
    """One message: its length (8 bytes) and its pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def read_frame(stream: BinaryIO) -> tuple | None:
    """The next message, or None at the end of the stream."""
    header = stream.read(8)
    if len(header) < 8:
        return None
    (size,) = struct.unpack("<Q", header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


_PREPARED: subprocess.Popen | None = None


def _spawn_recorder() -> subprocess.Popen:
    log = os.environ.get("AMSGRAD_RECORDER_LOG")
    return subprocess.Popen(
        [sys.executable, "-m", "amsgrad.experiments.recorder"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(log, "ab") if log else subprocess.DEVNULL,  # noqa: SIM115 - owned by the child
        start_new_session=True,  # not in the terminal's process group: Ctrl-C is ours to handle
        # MLflow's usage telemetry would send data from the user's machine and, offline, keep
        # the process waiting at exit: the recording process does without it.
        env={"MLFLOW_DISABLE_TELEMETRY": "true", **os.environ, "PYTHONUNBUFFERED": "1"},
    )


def prepare_recorder() -> None:
    """Start the recording process now, before it is needed: importing MLflow takes it about a
    second, which then overlaps with the command's own start. :class:`BackgroundTracker` adopts it."""
    global _PREPARED
    if _PREPARED is None:
        try:
            _PREPARED = _spawn_recorder()
        except OSError:
            _PREPARED = None


def take_recorder() -> subprocess.Popen:
    """The prepared recording process, or a new one."""
    global _PREPARED
    process, _PREPARED = _PREPARED, None
    return process if process is not None and process.poll() is None else _spawn_recorder()


def discard_recorder() -> None:
    """End a prepared recording process that will not be used (it exits when its input closes)."""
    global _PREPARED
    process, _PREPARED = _PREPARED, None
    if process is not None:
        try:
            process.stdin.close()
        except OSError:
            pass


class BackgroundTracker:
    """Like :class:`Tracker`, but the runs are recorded by a separate process; no method waits.

    The recording process starts at once (importing MLflow takes about a second) and is told
    what to record through a pipe, by a thread of this process, so a slow store never slows
    the computation. :meth:`close` waits until everything is recorded; :meth:`abort` closes the
    runs as KILLED at once. Runs are identified by local handles until then.
    """

    def __init__(self, experiment: str, uri: str | None = None):
        self.experiment = experiment
        self.uri = uri or tracking_uri()
        self.enabled = True
        self.error: str | None = preflight(self.uri)
        self._runs: list[dict[str, str]] = []
        self._started = 0
        self._closed = False
        self._outbox: queue.Queue = queue.Queue()
        self._done = threading.Event()
        self._ready = False
        self._started_runs: dict[int, dict[str, str]] = {}
        self._process: subprocess.Popen | None = None
        if self.error is not None:
            discard_recorder()
            return
        try:
            self._process = take_recorder()
        except OSError as error:
            self.error = f"could not start the recording process ({error.strerror or error})"
            return
        self._writer_thread = threading.Thread(target=self._write_loop, name="mlflow-outbox", daemon=True)
        self._reader_thread = threading.Thread(target=self._read_loop, name="mlflow-replies", daemon=True)
        self._writer_thread.start()
        self._reader_thread.start()
        self._put(("open", experiment, self.uri))

    @property
    def active(self) -> bool:
        return self.error is None and self._process is not None and not self._closed

    # The pipe, served by two threads.
    def _put(self, message: tuple) -> None:
        if self._process is not None:
            self._outbox.put(message)

    def _write_loop(self) -> None:
        stdin = self._process.stdin
        try:
            while True:
                message = self._outbox.get()
                if message is None:
                    break
                write_frame(stdin, message)
        except (BrokenPipeError, OSError, ValueError):
            pass  # the process ended: the reader reports why
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def _read_loop(self) -> None:
        stdout = self._process.stdout
        try:
            while True:
                message = read_frame(stdout)
                if message is None:
                    break
                kind = message[0]
                if kind == "ready":
                    self._ready = True
                elif kind == "started":
                    self._started_runs[message[1]] = message[2]
                elif kind == "error" and self.error is None:
                    self.error = message[1]
                elif kind == "closed":
                    _, runs, error = message
                    self._runs = runs
                    if error is not None and self.error is None:
                        self.error = error
                    break
        except (OSError, ValueError, pickle.UnpicklingError, EOFError):
            pass
        finally:
            self._done.set()

    # What the command calls.
    def start_run(self, name: str, params: dict[str, Any], description: str = "", tags: dict[str, str] | None = None,
                  parent: int | None = None) -> int | None:
        if not self.active:
            return None
        handle, self._started = self._started, self._started + 1
        self._put(("start", handle, name, params, description, tags, parent))
        return handle

    def log_metrics(self, handle: int | None, step: np.ndarray, values: dict[str, np.ndarray]) -> None:
        if handle is not None and self.active and len(step):
            self._put(("metrics", handle, np.array(step), {k: np.array(v) for k, v in values.items()}))

    def flush(self, handle: int | None) -> None:
        """Nothing to do: the recording process sends what it receives."""

    def log_artifact(self, handle: int | None, path: str | Path) -> None:
        if handle is not None and self.active:
            self._put(("artifact", handle, str(path)))

    def finish(self, handle: int | None, status: str = "FINISHED") -> None:
        if handle is not None and self.active:
            self._put(("finish", handle, status))

    def close(self, should_stop: Callable[[], bool] | None = None, timeout: float | None = None) -> None:
        """Wait until everything is recorded; a stop request (``should_stop()``) turns this into :meth:`abort`.

        A second signal raises out of the wait (:class:`~.stopping.Abort`): call :meth:`abort` then.
        """
        if self._process is None or self._closed:
            return
        self._put(("close",))
        deadline = None if timeout is None else time.monotonic() + timeout
        stopping_already = should_stop() if should_stop is not None else False
        while not self._done.wait(0.05):
            if should_stop is not None and should_stop() and not stopping_already:
                self.abort()
                return
            if deadline is not None and time.monotonic() > deadline:
                self.error = self.error or f"recording did not finish within {timeout:g} s"
                self.abort()
                return
        self._end()

    def abort(self, status: str = "KILLED", wait: float = ABORT_WAIT) -> None:
        """Close every run as ``status`` now, dropping metric values not yet recorded.

        Waits at most ``wait`` seconds; the recording process finishes closing on its own if it
        needs longer (a slow server), and never leaves a run it opened RUNNING.
        """
        if self._process is None or self._closed:
            return
        # Drop what is queued here, tell the process to skip what is already in the pipe, then to abort.
        try:
            while True:
                self._outbox.get_nowait()
        except queue.Empty:
            pass
        self._put(("abort", status))
        if self._ready and hasattr(signal, "SIGUSR1"):
            try:
                self._process.send_signal(signal.SIGUSR1)
            except OSError:
                pass
        self._done.wait(wait)
        self._end()

    def _end(self) -> None:
        self._closed = True
        self._outbox.put(None)
        if self._process is None:
            return
        if not self._done.is_set():
            self.error = self.error or "the recording process did not answer in time"
        elif not self._runs and self._started and self.error is None:
            # No "closed" answer: the process ended early. Its exit code says how.
            code = self._process.poll()
            self.error = f"the recording process stopped (exit code {code})"
        # The process exits by itself once it has answered; nothing to wait for.

    def describe_runs(self) -> list[dict[str, str]]:
        """The runs, with their final status once closed; before that, those opened so far."""
        if self._runs:
            return list(self._runs)
        return [self._started_runs[handle] for handle in sorted(self._started_runs)]


def open_tracker(experiment: str, enabled: bool = True, background: bool = True) -> Tracker | BackgroundTracker:
    """A tracker for ``experiment``: recording in a separate process (default), in this one, or not at all."""
    if not enabled:
        return NullTracker(experiment)
    if background:
        return BackgroundTracker(experiment)
    return Tracker(experiment)
