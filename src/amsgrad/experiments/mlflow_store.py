"""The local MLflow store (SQLite): checked before use, set up once, written to fast.

Three things here make the embedded default, ``sqlite:///mlflow.db``, cheap and safe:

* :func:`check_sqlite_store` finds, in milliseconds and before any work starts, the failures
  that would otherwise surface minutes later through MLflow's retries and tracebacks: a
  folder where the database cannot be created, a read-only or foreign file, a database that
  another process keeps locked. Each becomes one sentence.
* :func:`create_sqlite_store`: a new store is a copy of an empty one that MLflow itself made
  once per machine and MLflow version (creating the tables runs ~50 schema migrations, about
  a second, every time otherwise).
* :class:`SqliteMetricWriter` inserts metric values with one ``executemany`` per batch into
  the ``metrics`` and ``latest_metrics`` tables, with the semantics of MLflow's own
  ``log_batch`` (the same rows: NaN stored as 0 with ``is_nan``, ±inf as ±max float,
  exact duplicates ignored, the latest value per key by (step, timestamp, value)). MLflow's
  ORM spends ~55 µs per value (3.3 s for the default command's 60,000); this takes ~2 µs.
  It is used only when the database has exactly the columns it writes (checked on open);
  otherwise the tracker falls back to ``MlflowClient.log_batch``.

Artifacts use MLflow's proxied layout, as ``mlflow ui``/``mlflow server`` create it: an
experiment's artifact location is ``mlflow-artifacts:/<experiment id>`` and its files live in
``mlartifacts/`` beside ``mlflow.db``, so a project folder can be moved or copied and
``mlflow ui``, started in it, still finds every plot (:func:`local_artifact_path`).
"""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import unquote, urlsplit

__all__ = [
    "ARTIFACTS_FOLDER",
    "PROXY_ROOT",
    "check_sqlite_store",
    "create_sqlite_store",
    "local_artifact_path",
    "sqlite_path",
    "SqliteMetricWriter",
]

#: The artifact root of stores made here, as ``mlflow server --serve-artifacts`` sets it.
PROXY_ROOT = "mlflow-artifacts:/"

#: Where proxied artifacts live, beside the database: ``mlflow ui``'s default ``--artifacts-destination``.
ARTIFACTS_FOLDER = "mlartifacts"

#: The environment variable through which MLflow's own server gives its stores their artifact root.
SERVER_ARTIFACT_ROOT_VARIABLE = "_MLFLOW_SERVER_ARTIFACT_ROOT"

_SQLITE_HEADER = b"SQLite format 3\x00"

# What MLflow stores for infinities (SQL has none), as its SQL store does.
_FLOAT_MAX = 1.7976931348623157e308

_METRIC_COLUMNS = ("key", "value", "timestamp", "step", "is_nan", "run_uuid")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` tracking URI (relative to the working directory), else None.

    >>> str(sqlite_path("sqlite:///mlflow.db")), str(sqlite_path("sqlite:////tmp/x.db"))
    ('mlflow.db', '/tmp/x.db')
    >>> sqlite_path("http://127.0.0.1:5000") is None
    True
    """
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri[len("sqlite:///"):].split("?", 1)[0])
    return Path(path) if path else None


def check_sqlite_store(path: Path, lock_timeout: float = 2.0) -> str | None:
    """Why the SQLite store at ``path`` cannot be used, in one sentence; None when it can.

    Creates nothing but the folder of a database still to be made (as MLflow would).
    """
    path = Path(os.path.abspath(path))
    folder = path.parent
    if path.exists():
        if path.is_dir():
            return f"{path} is a folder, not an SQLite database"
        try:
            with open(path, "r+b") as handle:  # opened for writing, nothing written
                header = handle.read(len(_SQLITE_HEADER))
        except OSError as error:
            return f"{path} cannot be opened for writing ({error.strerror or error}): it is read-only"
        if header and header != _SQLITE_HEADER:
            return f"{path} is not an SQLite database"
    else:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            return f"cannot create the folder {folder} for {path.name} ({error.strerror or error})"
    # SQLite writes a journal file beside the database on every write: the folder must take new files.
    try:
        descriptor, probe = tempfile.mkstemp(prefix=f".{path.name}-", dir=folder)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        return f"cannot write in {folder}, where {path.name} {'is' if path.exists() else 'would be created'} ({error.strerror or error})"
    if path.exists() and path.stat().st_size:
        return _check_lock(path, lock_timeout)
    return None


def _check_lock(path: Path, timeout: float) -> str | None:
    """Take and release SQLite's write lock, waiting at most ``timeout`` seconds."""
    try:
        connection = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
    except sqlite3.Error as error:
        return f"cannot open {path} ({error})"
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
    except sqlite3.OperationalError as error:
        text = str(error)
        if "locked" in text or "busy" in text:
            return f"{path} is locked by another process (still locked after {timeout:g} s)"
        if "readonly" in text or "read-only" in text:
            return f"{path} is read-only ({text})"
        return f"cannot write to {path} ({text})"
    except sqlite3.DatabaseError as error:
        return f"{path} is not a usable SQLite database ({error})"
    finally:
        connection.close()
    return None


def _template_path(cache: Path, mlflow_version: str) -> Path:
    return cache / f"mlflow-{mlflow_version}" / "empty.db"


def create_sqlite_store(path: Path, cache: Path) -> bool:
    """Create an empty MLflow store at ``path`` from a copy made once; False if one appeared meanwhile.

    The copy is made by MLflow itself (``MlflowClient`` on a new file, with the artifact root
    of :data:`PROXY_ROOT`, which is what ``mlflow server`` gives its stores), under ``cache``.
    The new file appears atomically: a concurrent command either sees no store or a whole one.
    """
    import mlflow

    template = _template_path(cache, mlflow.__version__)
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        scratch = template.with_name(f"{template.stem}-{os.getpid()}.db")
        scratch.unlink(missing_ok=True)
        from mlflow import MlflowClient

        previous = os.environ.get(SERVER_ARTIFACT_ROOT_VARIABLE)
        os.environ[SERVER_ARTIFACT_ROOT_VARIABLE] = PROXY_ROOT
        try:
            MlflowClient(tracking_uri=f"sqlite:///{scratch}").search_experiments()
        finally:
            if previous is None:
                os.environ.pop(SERVER_ARTIFACT_ROOT_VARIABLE, None)
            else:
                os.environ[SERVER_ARTIFACT_ROOT_VARIABLE] = previous
        os.replace(scratch, template)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}-{os.getpid()}.tmp")
    shutil.copyfile(template, scratch)
    try:
        if path.exists() and path.stat().st_size == 0:
            os.replace(scratch, path)  # an empty file is no store: replace it
            return True
        os.link(scratch, path)  # fails if another process created the store first
        return True
    except FileExistsError:
        return False
    finally:
        scratch.unlink(missing_ok=True)


def local_artifact_path(db_path: Path, artifact_uri: str) -> Path | None:
    """The folder of a proxied artifact URI (``mlflow-artifacts:/...``) of a local store, else None.

    >>> str(local_artifact_path(Path("project/mlflow.db"), "mlflow-artifacts:/1/abc/artifacts"))
    'project/mlartifacts/1/abc/artifacts'
    """
    if not artifact_uri.startswith("mlflow-artifacts:"):
        return None
    relative = urlsplit(artifact_uri).path.lstrip("/")
    return Path(db_path).parent / ARTIFACTS_FOLDER / relative


class SqliteMetricWriter:
    """Metric values straight into an MLflow SQLite store's tables, as ``log_batch`` would write them.

    Raises ``LookupError`` on construction when the tables are not the ones this writes
    (another MLflow schema), so that the caller can use ``log_batch`` instead.
    """

    def __init__(self, path: Path, timeout: float = 5.0):
        self.path = Path(path)
        self._connection = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        for table in ("metrics", "latest_metrics"):
            columns = {row[1] for row in self._connection.execute(f"PRAGMA table_info({table})")}
            if columns != set(_METRIC_COLUMNS):
                self._connection.close()
                raise LookupError(f"table {table} has columns {sorted(columns)}, expected {sorted(_METRIC_COLUMNS)}")

    def write(self, run_id: str, timestamp: int, steps: Sequence[int], values: dict[str, Sequence[float]]) -> int:
        """Record ``values[key][i]`` at ``steps[i]`` for every key, in one transaction; return the count."""
        rows = []
        newest: dict[str, tuple] = {}
        for key, column in values.items():
            for step, value in zip(steps, column):
                stored, is_nan = _stored_value(float(value))
                row = (key, stored, timestamp, int(step), is_nan, run_id)
                rows.append(row)
                best = newest.get(key)
                if best is None or (row[3], row[2], row[1]) > (best[3], best[2], best[1]):
                    newest[key] = row
        if not rows:
            return 0
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            stage = connection.execute("SELECT lifecycle_stage FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
            if stage is None or stage[0] != "active":
                raise sqlite3.IntegrityError(f"run {run_id} is {'missing' if stage is None else stage[0]}")
            connection.executemany(
                "INSERT OR IGNORE INTO metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            connection.executemany(
                "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value, timestamp = excluded.timestamp, "
                "step = excluded.step, is_nan = excluded.is_nan "
                "WHERE (excluded.step, excluded.timestamp, excluded.value) > "
                "(latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)",
                list(newest.values()),
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return len(rows)

    def close(self) -> None:
        self._connection.close()


def _stored_value(value: float) -> tuple[float, int]:
    """``(value, is_nan)`` as MLflow's SQL store keeps a metric value."""
    if math.isnan(value):
        return 0.0, 1
    if math.isinf(value):
        return (_FLOAT_MAX if value > 0 else -_FLOAT_MAX), 0
    return value, 0


def copy_artifacts(files: Iterable[Path], folder: Path) -> None:
    """Copy ``files`` into ``folder``, each appearing whole (written aside, then renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        file = Path(file)
        target = folder / file.name
        scratch = folder / f".{file.name}.{os.getpid()}.tmp"
        shutil.copyfile(file, scratch)
        os.replace(scratch, target)
