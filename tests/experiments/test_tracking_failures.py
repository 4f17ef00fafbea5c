"""A store that cannot take the runs costs seconds and one line: the results are saved, exit status 1.

Permissions are real: as root (CI), the command runs without the capabilities that let root
ignore file modes (``setpriv --bounding-set -dac_override,-dac_read_search``), so a read-only
file is read-only for it too.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

from .conftest import COMMAND, clean_env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: The whole command, failure included, must be over in this many seconds (a few, here).
DEADLINE = 60


def _unprivileged() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "running as root, the permission tests need util-linux's setpriv"
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def _run(cwd: Path, *args: str, env: dict[str, str] | None = None, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, *COMMAND, "synthetic", "--steps", "100000", "--json", *args],
        cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=DEADLINE, stdin=subprocess.DEVNULL,
    )


def _assert_failed_in_one_line(done: subprocess.CompletedProcess, out: Path, why: str) -> dict:
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("amsgrad synthetic: warning: the runs were not recorded in MLflow (")
    assert why in lines[0], lines[0]
    document = json.loads(done.stdout)
    assert len(document["results"]) == 2 and document["runs"] == [] and why in document["tracking_error"]
    assert json.loads((out / "results.json").read_text())["results"] == document["results"]
    assert (out / "synthetic.png").exists() and (out / "trace.csv").exists()
    return document


def test_an_unreachable_server(tmp_path):
    # Nothing listens on port 9 of the loopback: the connection is refused at once.
    env = clean_env(MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    done = _run(tmp_path, "--out", "out", env=env)
    _assert_failed_in_one_line(done, tmp_path / "out", "cannot reach the tracking server http://127.0.0.1:9")


def test_a_server_that_never_answers(tmp_path):
    # A socket that accepts connections and never replies: the 3-second probe, then give up.
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        port = listener.getsockname()[1]
        env = clean_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}", MLFLOW_HTTP_REQUEST_TIMEOUT="2",
                        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
        done = _run(tmp_path, "--out", "out", env=env)
    finally:
        listener.close()
        for connection in accepted:
            connection.close()
    _assert_failed_in_one_line(done, tmp_path / "out", f"http://127.0.0.1:{port}")


def test_an_unwritable_folder(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    project.chmod(0o555)
    try:
        done = _run(project, "--out", str(tmp_path / "out"), prefix=_unprivileged())
    finally:
        project.chmod(0o755)
    _assert_failed_in_one_line(done, tmp_path / "out", f"cannot write in {project}, where mlflow.db would be created")
    assert not (project / "mlflow.db").exists()


def test_a_read_only_database(tmp_path):
    first = _run(tmp_path, "--out", "first")
    assert first.returncode == 0, first.stderr
    database = tmp_path / "mlflow.db"
    before = database.read_bytes()
    database.chmod(0o444)
    try:
        done = _run(tmp_path, "--out", "out", prefix=_unprivileged())
    finally:
        database.chmod(0o644)
    _assert_failed_in_one_line(done, tmp_path / "out", "is read-only")
    assert database.read_bytes() == before


def test_a_database_locked_by_another_process(tmp_path):
    first = _run(tmp_path, "--out", "first")
    assert first.returncode == 0, first.stderr
    holder = subprocess.Popen(
        ["python3", "-c", "import sqlite3, sys, time\n"
         "c = sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\n"
         "print('locked', flush=True)\ntime.sleep(60)", str(tmp_path / "mlflow.db")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        done = _run(tmp_path, "--out", "out")
    finally:
        holder.kill()
        holder.wait()
    _assert_failed_in_one_line(done, tmp_path / "out", "is locked by another process")


def test_a_file_that_is_not_a_database(tmp_path):
    (tmp_path / "mlflow.db").write_text("these are my notes, not a database\n")
    done = _run(tmp_path, "--out", "out")
    _assert_failed_in_one_line(done, tmp_path / "out", "is not an SQLite database")
    assert (tmp_path / "mlflow.db").read_text().startswith("these are my notes")


def test_the_store_checks_are_fast_and_create_nothing_on_failure(tmp_path):
    from amsgrad.experiments.mlflow_store import check_sqlite_store

    assert check_sqlite_store(tmp_path / "new.db") is None and not (tmp_path / "new.db").exists()
    database = tmp_path / "real.db"
    sqlite3.connect(database).execute("create table t (x)").connection.commit()
    assert check_sqlite_store(database) is None
    assert "is a folder" in check_sqlite_store(tmp_path)
