"""``amsgrad train`` end to end, through a real subprocess: results, MLflow, resume, bad data, signals."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import psutil
import pytest

from ..conftest import COMMAND, clean_env
from ..test_cli import _local_artifacts
from .files import write_cifar10, write_mnist

PNG = b"\x89PNG\r\n\x1a\n"

# MLflow's own SQL store, opened here to read the runs back, warns about its ORM options.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_logreg_grid_json_plots_mlflow_and_resume(run_cli, tmp_path):
    write_mnist(tmp_path / "mnist", train=400, test=100, learnable=True)
    args = ["train", "--model", "logreg", "--dataset", "mnist", "--data-dir", "mnist", "--steps", "30", "--lr", "0.1", "1", "--beta2", "0.99", "--seeds", "0", "1", "--eval-every", "10", "--workers", "2", "--out", "out", "--json"]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress bar off a terminal, no warnings
    document = done.json()
    assert document["completed"] and document["runs_in_grid"] == 8 and document["resumed"] == 0 and document["workers"] == 2
    results = {r["optimizer"]: r for r in document["results"]}
    assert list(results) == ["adam", "amsgrad"]
    for r in results.values():
        assert {"optimizer", "final_train_loss", "final_test_loss", "final_train_accuracy", "final_test_accuracy", "final_train_loss_std", "lr", "beta2", "seeds"} <= set(r)
        assert r["seeds"] == [0, 1] and r["final_test_accuracy"] > 0.9 and r["lr"] in (0.1, 1.0)
    assert len(document["grid"]) == 4 and document["cost"]["runs"] == 8 and document["cost"]["seconds"] > 0
    out = tmp_path / "out"
    assert (out / "losses.png").read_bytes().startswith(PNG) and (out / "losses.pdf").read_bytes().startswith(b"%PDF")
    assert json.loads((out / "results.json").read_text()) == document
    assert "AMSGrad" in (out / "results.txt").read_text() and len(list((out / "runs").glob("*.json"))) == 8

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(document["runs"][0]["run_id"])
    assert parent.info.status == "FINISHED" and parent.info.run_name == "logreg on mnist"
    assert parent.data.params["model"] == "logreg" and parent.data.params["seeds"] == "0,1" and parent.data.params["torch_version"]
    assert "adam.final_train_loss" in parent.data.metrics
    assert {"results.json", "results.txt", "losses.png", "losses.pdf"} <= _local_artifacts(tmp_path, parent)
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 8 and all(c.info.status == "FINISHED" for c in children)
    child = children[0]
    assert child.data.params["amsgrad_version"] and child.data.params["steps"] == "30"
    history = client.get_metric_history(child.info.run_id, "test_loss")
    assert [m.step for m in history] == [0, 10, 20, 30]

    again = run_cli(*args)  # the same --out: nothing is run again
    assert again.returncode == 0, again.stderr
    assert again.json()["resumed"] == 8 and again.json()["cost"]["runs"] == 0
    assert again.json()["results"] == document["results"]


def test_cifarnet_on_cifar10_files_table(run_cli, tmp_path):
    write_cifar10(tmp_path / "c", per_batch=40, test=20)
    done = run_cli("train", "--model", "cifarnet", "--dataset", "cifar10", "--data-dir", "c", "--steps", "2", "--lr", "1e-3", "--beta2", "0.999", "--seeds", "0", "--kernel-size", "5", "--workers", "1", "--no-track", "--out", "o")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("cifarnet on cifar10: 200 training and 20 test images of 3x32x32")
    assert lines[3].split()[:3] == ["optimizer", "best", "lr"] and lines[5].startswith("Adam") and lines[6].startswith("AMSGrad")
    assert "runs     not recorded (--no-track)" in done.stdout
    assert done.stderr == ""
    assert json.loads((tmp_path / "o" / "results.json").read_text())["cost"]["runs"] == 2  # estimated before it started
    saved = json.loads((tmp_path / "o" / "runs" / next(p.name for p in (tmp_path / "o" / "runs").iterdir())).read_text())
    assert saved["config"]["kernel_size"] == 5


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (None, ["--dataset", "mnist"], "data: data/mnist: no such folder; put MNIST's files there or pass --data-dir"),
        ("mnist", ["--dataset", "fashion-mnist", "--data-dir", "d"], "data: d/t10k-images-idx3-ubyte[.gz]: no such file"),
        ("bad-labels", ["--dataset", "mnist", "--data-dir", "d"], "data: d/train-labels-idx1-ubyte: labels must be in 0..9, found 0..11"),
        ("cifar", ["--dataset", "cifar10", "--data-dir", "d"], "data: d/cifar-10-batches-py/test_batch: refused to unpickle"),
        ("mnist", ["--dataset", "mnist", "--data-dir", "d", "--lr", "0"], "argument --lr: must be a finite number > 0, got '0'"),
        ("mnist", ["--dataset", "mnist", "--data-dir", "d", "--beta2", "1"], "argument --beta2: must be a number in [0, 1), got '1'"),
    ],
)
def test_bad_or_missing_data_is_one_line_and_exit_2(run_cli, tmp_path, setup, args, message):
    if setup == "mnist":
        write_mnist(tmp_path / "d", train=200, test=20)
        (tmp_path / "d" / "t10k-images-idx3-ubyte.gz").unlink()
    elif setup == "bad-labels":
        from .files import idx_bytes

        import numpy as np

        write_mnist(tmp_path / "d", train=200, test=20)
        (tmp_path / "d" / "train-labels-idx1-ubyte.gz").unlink()
        (tmp_path / "d" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([0] * 199 + [11], np.uint8)))
    elif setup == "cifar":
        import os
        import pickle

        batches = write_cifar10(tmp_path / "d")

        class Evil:
            def __reduce__(self):
                return (os.system, ("true",))

        (batches / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    done = run_cli("train", "--no-track", *args)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("amsgrad train: error: ")
    assert message in done.stderr, done.stderr


def _workers_training(pid: int, cpu_seconds: float = 4.0) -> bool:
    """Both Dask worker processes have used enough CPU to have imported torch and begun their run."""
    workers = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                times = child.cpu_times()
                workers.append(times.user + times.system)
        except psutil.Error:
            continue
    return len(workers) >= 2 and min(workers) > cpu_seconds


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_grid_and_saves_the_runs(tmp_path, signum, status):
    write_mnist(tmp_path / "d", train=400, test=50, learnable=True)
    args = [*COMMAND, "train", "--model", "mlp", "--dataset", "mnist", "--data-dir", "d", "--steps", "1e6", "--eval-every", "500", "--lr", "1e-3", "--beta2", "0.99", "--seeds", "0", "--workers", "2", "--out", "out"]
    tracked = signum == signal.SIGINT
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr_file:
        process = subprocess.Popen([*args, *([] if tracked else ["--no-track"])], cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=stderr_file, text=True, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while process.poll() is None and not _workers_training(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        process.send_signal(signum)
        try:
            stdout, _ = process.communicate(timeout=120)
        finally:
            if process.poll() is None:  # it did not stop: leave nothing running
                process.kill()
                process.wait()
    stderr = log.read_text()
    assert process.returncode == status, stderr
    assert f"stopped by {signal.Signals(signum).name}" in stderr and "the results so far are saved" in stderr
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    assert document["stopped_by"] == signal.Signals(signum).name and not document["completed"]
    saved = [json.loads(p.read_text()) for p in (tmp_path / "out" / "runs").glob("*.json")]
    # both runs had started (a run not started yet returns nothing); each saved what it had
    assert len(saved) == 2 and all(not s["completed"] and s["steps_done"] < 1_000_000 and len(s["history"]["step"]) >= 1 for s in saved)
    if tracked:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        runs_recorded = client.search_runs([client.get_experiment_by_name("train").experiment_id])
        assert sorted(r.info.status for r in runs_recorded) == ["KILLED"] * 3  # the parent and both children


def test_a_grid_on_a_cluster_started_apart_with_dask_s_own_commands(run_cli, tmp_path):
    # As a user with a cluster would: `dask scheduler` and `dask worker` are separate processes,
    # and the command only gets the scheduler's address.
    import socket
    import sys

    from distributed import Client

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    env = clean_env()
    logs = tmp_path / "workers.log"
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                   "--port", str(port), "--no-dashboard"], cwd=tmp_path, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        with logs.open("w") as log:
            processes.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                               "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
                                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout=5) as client:
                    client.wait_for_workers(2, timeout=60)
                break
            except OSError:
                assert time.monotonic() < deadline, "the scheduler never started"
                time.sleep(0.5)
        write_mnist(tmp_path / "mnist", train=400, test=100, learnable=True)
        done = run_cli("train", "--model", "logreg", "--dataset", "mnist", "--data-dir", "mnist", "--steps", "20",
                       "--lr", "0.1", "--beta2", "0.99", "--seeds", "0", "--eval-every", "10", "--scheduler", address,
                       "--out", "out", "--no-track", "--json")
        assert done.returncode == 0, done.stderr
        document = done.json()
        assert document["completed"] and document["scheduler"] == address and document["workers"] == 2
        assert [r["optimizer"] for r in document["results"]] == ["adam", "amsgrad"]
        assert all(r["final_test_accuracy"] > 0.5 for r in document["results"])
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    assert "amsgrad-train-data" in logs.read_text()  # the data reached the workers, which ran the runs
