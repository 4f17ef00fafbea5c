"""The local MLflow store: written as MLflow writes it, made once, and movable with its project."""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amsgrad.experiments import mlflow_store
from amsgrad.experiments.tracking import Tracker

from .conftest import COMMAND, clean_env
from .test_tracking_server import mlflow_server_at

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AMSGRAD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(mlflow_store.SERVER_ARTIFACT_ROOT_VARIABLE, mlflow_store.PROXY_ROOT)
    return tmp_path


def test_the_fast_writer_stores_what_log_batch_stores(project):
    """Same rows in ``metrics``, same ``latest_metrics``, for awkward values: NaN, ±inf, steps out of
    order, a value logged twice, and a key whose latest step comes early in the batch."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    tracker = Tracker("writer", uri=f"sqlite:///{project / 'mlflow.db'}")
    assert tracker.connect() and tracker._writer is not None
    ours, theirs = tracker.start_run("ours", {}), tracker.start_run("theirs", {})
    client = MlflowClient(tracking_uri=tracker.uri)

    steps = np.array([3, 1, 2, 2, 5, 4])
    values = {
        "x": np.array([0.5, math.nan, math.inf, math.inf, -math.inf, 1e300]),
        "regret": np.array([7.0, 6.0, 5.0, 5.0, 4.0, 3.0]),
    }
    timestamp = 1_700_000_000_000
    tracker._writer.write(ours.run_id, timestamp, steps.tolist(), {k: v.tolist() for k, v in values.items()})
    metrics = [Metric(key, float(column[i]), timestamp, int(steps[i])) for key, column in values.items() for i in range(len(steps))]
    client.log_batch(theirs.run_id, metrics=metrics)

    for key in values:
        def history(run_id, key=key):
            return sorted((m.step, m.timestamp, repr(m.value)) for m in client.get_metric_history(run_id, key))

        assert history(ours.run_id) == history(theirs.run_id)
    latest = [client.get_run(run.run_id).data.metrics for run in (ours, theirs)]
    assert repr(latest[0]) == repr(latest[1])
    assert latest[0]["regret"] == 4.0  # step 5 is the latest, though not the last row
    tracker.close()


def test_the_fast_writer_refuses_a_deleted_run(project):
    from mlflow import MlflowClient

    tracker = Tracker("writer", uri=f"sqlite:///{project / 'mlflow.db'}")
    run = tracker.start_run("gone", {})
    MlflowClient(tracking_uri=tracker.uri).delete_run(run.run_id)
    with pytest.raises(sqlite3.IntegrityError, match="is deleted"):
        tracker._writer.write(run.run_id, 0, [1], {"x": [1.0]})
    tracker.close()


def test_a_new_store_is_a_copy_made_once_and_makes_no_mlruns_folder(project):
    from mlflow import MlflowClient

    for name in ("a", "b"):
        folder = project / name
        folder.mkdir()
        tracker = Tracker("synthetic", uri=f"sqlite:///{folder / 'mlflow.db'}")
        assert tracker.start_run("run", {"lr": 0.01}) is not None, tracker.error
        tracker.close()
    [template] = list((project / "cache").rglob("empty.db"))  # made once, for this MLflow version
    assert template.parent.name.startswith("mlflow-")
    assert not (project / "mlruns").exists()  # MLflow's client would make one in the working directory
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'b' / 'mlflow.db'}")
    assert client.get_experiment("0").artifact_location == "mlflow-artifacts:/0"  # as `mlflow ui` sets it
    experiment = client.get_experiment_by_name("synthetic")
    assert experiment.artifact_location == f"mlflow-artifacts:/{experiment.experiment_id}"


def test_two_commands_creating_the_store_at_once_share_it(project):
    target = project / "mlflow.db"
    assert mlflow_store.create_sqlite_store(target, project / "cache")
    assert not mlflow_store.create_sqlite_store(target, project / "cache")  # already there: left alone
    assert target.read_bytes()[:16] == b"SQLite format 3\x00"


def test_a_moved_project_keeps_its_artifacts_in_mlflow_ui(tmp_path):
    """Record in one folder, move it, and serve it with `mlflow server` from the new place."""
    from mlflow import MlflowClient

    first = tmp_path / "first"
    first.mkdir()
    done = subprocess.run([*COMMAND, "synthetic", "--steps", "20000", "--out", "out"], cwd=first, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    moved = tmp_path / "elsewhere" / "project"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))

    with mlflow_server_at(moved, backend=f"sqlite:///{moved / 'mlflow.db'}", artifacts=moved / "mlartifacts") as url:
        client = MlflowClient(tracking_uri=url)
        experiment = client.get_experiment_by_name("synthetic")
        runs = client.search_runs([experiment.experiment_id])
        assert len(runs) == 2
        for run in runs:
            assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"synthetic.png", "results.json"}
            local = client.download_artifacts(run.info.run_id, "synthetic.png", str(tmp_path / run.info.run_id))
            assert Path(local).read_bytes() == (moved / "out" / "synthetic.png").read_bytes()


def _environment_without_extras(folder: Path) -> dict[str, str]:
    """A site folder with everything installed here but the ``experiments`` extra, as after ``pip install .``."""
    import torch

    import amsgrad

    extras = ("numpy", "numba", "llvmlite", "matplotlib", "mpl_toolkits", "mlflow", "tqdm", "sqlalchemy", "alembic")
    site = Path(torch.__file__).resolve().parents[1]
    folder.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower().replace("-", "_")
        if not name.startswith(extras) and not name.endswith(".pth"):
            (folder / entry.name).symlink_to(entry)
    source = Path(amsgrad.__file__).resolve().parents[1]
    return clean_env(PYTHONPATH=f"{source}{os.pathsep}{folder}")


def test_without_the_experiments_extra(tmp_path):
    env = _environment_without_extras(tmp_path / "site")
    python = [sys.executable, "-S"]  # no site-packages: only the folder above
    library = (
        "import torch, amsgrad\n"
        "w = torch.nn.Parameter(torch.ones(3)); w.grad = torch.ones(3)\n"
        "amsgrad.AMSGrad([w], lr=0.1).step()\n"
        "import importlib.util; assert importlib.util.find_spec('numba') is None\n"
        "print(w.detach().tolist())\n"
    )
    done = subprocess.run([*python, "-c", library], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == pytest.approx([0.9] * 3, abs=1e-6)  # Adam's first step: θ - α·sign(g)

    for args in (["synthetic"], ["sweep", "--grid", "4"], ["--help"], []):
        done = subprocess.run([*python, "-m", "amsgrad.cli", *args], capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 2 and done.stdout == "", (args, done.stderr)
        [line] = done.stderr.splitlines()
        assert line.startswith("amsgrad: error: the command needs the 'experiments' extra"), line
        assert "pip install 'amsgrad[experiments]'" in line and "numba" in line and "Traceback" not in done.stderr
    version = subprocess.run([*python, "-m", "amsgrad.cli", "--version"], capture_output=True, text=True, timeout=120, env=env)
    assert version.returncode == 0 and version.stdout.startswith("amsgrad ")
