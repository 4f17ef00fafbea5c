"""The grid on a real Dask cluster of two worker processes on 127.0.0.1: results, resume, faults."""

from __future__ import annotations

import json
import os
import signal
import threading
import warnings

import dask
import pytest

from amsgrad.experiments.realdata.data import load_mnist
from amsgrad.experiments.realdata.grid import grid_configs, load_finished, run_grid
from amsgrad.experiments.realdata.training import TrainResult, prepare, train

from . import faults
from .files import write_mnist


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    write_mnist(folder, train=400, test=50, learnable=True)
    return load_mnist(folder)


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and two worker processes (each restarted by its nanny if it dies)."""
    import logging

    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 1, "distributed.scheduler.worker-saturation": 1.0}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Port .* is already in use")  # another cluster on this machine
        local = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(local)
    yield local, client
    client.close()
    local.close()


def _history(result):
    return result.to_dict()["history"]  # NaN (no minibatch yet at step 0) as None, so == works


def _configs(steps=30, seeds=(0, 1), **common):
    return grid_configs("logreg", ["adam", "amsgrad"], [0.05], [0.99], list(seeds), steps, eval_every=10, **common)


def test_a_grid_on_two_local_worker_processes_then_resumed(data, tmp_path):
    configs = _configs()
    seen = []
    outcome = run_grid(configs, data, tmp_path, workers=2, on_result=seen.append)
    assert outcome.completed and outcome.workers == 2 and outcome.resumed == 0
    assert [r.config for r in outcome.results] == configs and len(seen) == 4
    prepared = prepare(data)
    for result in outcome.results:
        saved = TrainResult.from_dict(json.loads((tmp_path / "runs" / f"{result.config.key()}.json").read_text()))
        assert _history(saved) == _history(result) and saved.completed
        alone = train(result.config, prepared)  # the same run in this process
        assert alone.history["train_loss"] == pytest.approx(result.history["train_loss"], rel=1e-5)
    again = run_grid(configs, data, tmp_path, train_fn=faults.must_not_run)
    assert again.resumed == 4 and again.completed and again.workers == 0
    assert [_history(r) for r in again.results] == [_history(r) for r in outcome.results]


def test_a_worker_killed_mid_run_loses_nothing(data, tmp_path, cluster):
    local, client = cluster
    pids = list(client.run(os.getpid).values())
    killed = threading.Event()

    def kill_one(key, step, steps):
        if step > 0 and not killed.is_set():
            killed.set()
            os.kill(pids[0], signal.SIGKILL)

    configs = _configs(steps=40, seeds=(0, 1, 2))
    outcome = run_grid(configs, data, tmp_path, scheduler=local.scheduler_address, on_progress=kill_one, train_fn=faults.slow_train)
    assert killed.is_set()
    assert outcome.failed == [] and outcome.completed  # the lost run went to the other worker
    assert [r.config for r in outcome.results] == configs
    assert all(load_finished(tmp_path, c, data.fingerprint()) is not None for c in configs)
    client.wait_for_workers(2, timeout=180)  # a restarted worker is slow to start on a busy machine


def test_a_run_that_keeps_killing_its_worker_is_reported_and_resumed(data, tmp_path, cluster):
    local, client = cluster
    configs = _configs(seeds=(0, 1, 2))
    outcome = run_grid(configs, data, tmp_path, client=client, train_fn=faults.crash_on_seed_1)
    assert not outcome.completed
    crashed = [c for c in configs if c.seed == 1]
    assert sorted(f["key"] for f in outcome.failed) == sorted(c.key() for c in crashed)
    assert all("KilledWorker" in f["error"] for f in outcome.failed)
    assert [r.config for r in outcome.results] == [c for c in configs if c.seed != 1]  # the others are kept
    client.wait_for_workers(2, timeout=180)  # a restarted worker is slow to start on a busy machine
    resumed = run_grid(configs, data, tmp_path, client=client)
    assert resumed.completed and resumed.resumed == 4 and [r.config for r in resumed.results] == configs


def test_should_stop_keeps_what_was_done_and_a_rerun_finishes(data, tmp_path, cluster):
    local, client = cluster
    started = threading.Event()
    configs = _configs(steps=200, seeds=(0, 1, 2))
    outcome = run_grid(configs, data, tmp_path, client=client, train_fn=faults.slow_train, on_progress=lambda *_: started.set(), should_stop=started.is_set)
    assert outcome.stopped and not outcome.completed and outcome.failed == []
    assert 1 <= len(outcome.results) <= 2  # the runs that were going, at most one per worker
    for result in outcome.results:
        assert not result.completed and 0 < result.steps_done < 200
        assert load_finished(tmp_path, result.config) is None  # saved, but not taken as finished
        assert (tmp_path / "runs" / f"{result.config.key()}.json").exists()
    finished = run_grid(configs, data, tmp_path, client=client)
    assert finished.completed and finished.resumed == 0 and all(r.steps_done == 200 for r in finished.results)
