"""``MLFLOW_TRACKING_URI`` sends the runs to a real ``mlflow server`` (SQLite backend)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from .conftest import clean_env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def mlflow_server_at(home: Path, backend: str, artifacts: Path) -> Iterator[str]:
    """``mlflow server`` on a free loopback port, started in ``home``; yields its URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = home / f"server-{port}.log"
    log = log_path.open("w")
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend,
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    # Job execution needs the huey package and is not what these tests are about.
    env = clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server = subprocess.Popen(command, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and its worker, started above
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A tracking server on a free loopback port, its store and artifacts under tmp_path."""
    home = tmp_path / "server"
    home.mkdir()
    with mlflow_server_at(home, f"sqlite:///{home / 'store.db'}", home / "artifacts") as url:
        yield url


def test_runs_go_to_the_server_named_by_mlflow_tracking_uri(mlflow_server, run_cli, tmp_path):
    from mlflow import MlflowClient

    done = run_cli("synthetic", "--steps", "100000", "--json", "--out", "out", env=clean_env(MLFLOW_TRACKING_URI=mlflow_server))
    assert done.returncode == 0, done.stderr
    document = done.json()
    assert [r["tracking_uri"] for r in document["runs"]] == [mlflow_server, mlflow_server]
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local default

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("synthetic")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.run_name for r in runs] == ["Adam", "AMSGrad"]
    results = {r["optimizer"]: r for r in document["results"]}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["optimizer"] in results and run.data.params["engine"] == "fast"
        history = client.get_metric_history(run.info.run_id, "x")
        assert len(history) == 100
        assert max(history, key=lambda m: m.step).step == 100_000
        assert run.data.metrics["average_regret"] == pytest.approx(results[run.data.params["optimizer"]]["average_regret"], rel=1e-12)
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"synthetic.png", "results.json"}
    # The plot went through the server's artifact proxy, into its artifact store.
    assert len(list((tmp_path / "server" / "artifacts").rglob("synthetic.png"))) == 2
