"""SIGINT (Ctrl-C) and SIGTERM on real ``amsgrad`` processes: results saved, runs closed, no traceback.

Each test starts the command as the shell would (``python -m amsgrad.cli``, its own process
group, signals at their defaults), waits until it is computing and recording, and signals it.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import COMMAND, clean_env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: A stopped command must be gone within this many seconds (it takes one or two here).
DEADLINE = 30


def _start(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*COMMAND, *args, "--out", "out", "--json"],
        cwd=tmp_path, env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
        # pytest may run with SIGINT ignored or handled; the command starts with the defaults, as from a shell.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _query(database: Path, sql: str) -> list[tuple]:
    if not database.exists():
        return []
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as connection:
            return connection.execute(sql).fetchall()
    except sqlite3.Error:
        return []


def _wait_for(process: subprocess.Popen, ready, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the command never got going"
        time.sleep(0.1)


def _stop(process: subprocess.Popen, *signums: int, gap: float = 0.05) -> tuple[str, str]:
    """Send the signals ``gap`` seconds apart while reading the output, as a terminal would."""
    output: dict[str, str] = {}
    reader = threading.Thread(target=lambda: output.update(zip(("stdout", "stderr"), process.communicate())))
    reader.start()
    for signum in signums:
        if process.poll() is None:
            process.send_signal(signum)
        time.sleep(gap)
    reader.join(timeout=DEADLINE)
    if reader.is_alive():
        process.kill()
        reader.join()
        pytest.fail(f"the command did not end within {DEADLINE} s of the signal")
    return output["stdout"], output["stderr"]


def _runs(tmp_path: Path) -> list[tuple[str, str, str]]:
    return _query(tmp_path / "mlflow.db", "select run_uuid, name, status from runs order by start_time")


EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_synthetic_stops_saves_and_closes_its_runs(tmp_path, signum):
    process = _start(tmp_path, "synthetic", "--engine", "torch", "--steps", "1e7")
    _wait_for(process, lambda: _query(tmp_path / "mlflow.db", "select count(*) from metrics") not in ([], [(0,)]))
    stdout, stderr = _stop(process, signum)

    assert process.returncode == EXIT[signum], stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [
        f"amsgrad synthetic: warning: stopped by {signal.Signals(signum).name}; the results so far are saved in out"
    ]
    document = json.loads(stdout)
    assert document["completed"] is False and document["stopped_by"] == signal.Signals(signum).name
    [result] = document["results"]  # Adam was running; AMSGrad never started
    assert 0 < result["steps_done"] < 10_000_000
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == document
    assert (tmp_path / "out" / "synthetic.png").exists()
    rows = (tmp_path / "out" / "trace.csv").read_text().splitlines()
    assert len(rows) == 1 + result["steps_done"] // 1000  # every point computed, streamed to disk

    # The run is closed as KILLED, with every metric value it computed.
    [(run_id, name, status)] = _runs(tmp_path)
    assert (name, status) == ("Adam", "KILLED") and document["runs"][0]["run_id"] == run_id
    counts = dict(_query(tmp_path / "mlflow.db", "select key, count(*) from metrics group by key"))
    assert counts == {key: result["steps_done"] // 1000 for key in ("x", "regret", "average_regret")}


def test_a_second_ctrl_c_ends_at_once_and_leaves_no_run_running(tmp_path):
    process = _start(tmp_path, "synthetic", "--engine", "torch", "--steps", "1e7")
    _wait_for(process, lambda: _query(tmp_path / "mlflow.db", "select count(*) from metrics") not in ([], [(0,)]))
    stdout, stderr = _stop(process, signal.SIGINT, signal.SIGINT, signal.SIGINT)

    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert [status for _, _, status in _runs(tmp_path)] == ["KILLED"]  # right at exit, nothing RUNNING
    document = json.loads(stdout)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["runs"] and saved["runs"][0]["run_id"] == _runs(tmp_path)[0][0]  # the id is kept
    assert document["completed"] is False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sweep_stops_between_chunks_and_keeps_every_cell_at_the_steps_done(tmp_path, signum):
    # All cells of a grid advance together, chunk by chunk: a stopped sweep has every cell of
    # the running optimizer at the same step, and the optimizers not started are left out.
    process = _start(tmp_path, "sweep", "--grid", "128", "--steps", "1e7")
    _wait_for(process, lambda: bool(_runs(tmp_path)))
    time.sleep(2.0)  # well into Adam's grid, far from its end
    stdout, stderr = _stop(process, signum)

    assert process.returncode == EXIT[signum], stderr
    assert "Traceback" not in stderr and "Error" not in stderr
    document = json.loads(stdout)
    assert document["completed"] is False and document["stopped_by"] == signal.Signals(signum).name
    [adam] = document["results"]  # AMSGrad never started
    assert adam["optimizer"] == "adam" and 0 < adam["steps_done"] < 10_000_000
    assert adam["cells"] == 128 * 128
    assert all(x is not None for row in adam["final_x"] for x in row)  # x_t of every cell at t = steps_done
    assert (tmp_path / "out" / "sweep.png").exists()
    assert [(name, status) for _, name, status in _runs(tmp_path)] == [("Adam vs AMSGrad", "KILLED")]


def test_a_second_signal_stops_a_sweep_at_once(tmp_path):
    process = _start(tmp_path, "sweep", "--grid", "128", "--steps", "1e7")
    _wait_for(process, lambda: bool(_runs(tmp_path)))
    time.sleep(2.0)
    output: dict[str, str] = {}
    reader = threading.Thread(target=lambda: output.update(zip(("stdout", "stderr"), process.communicate())))
    reader.start()
    process.send_signal(signal.SIGTERM)
    # A signal that arrives during a compiled chunk is handled when the chunk ends: the second one
    # goes once the command is saving (results.json appears first), so that it is the second.
    deadline = time.monotonic() + DEADLINE
    while not (tmp_path / "out" / "results.json").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the command did not start saving"
        time.sleep(0.01)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    reader.join(timeout=DEADLINE)
    assert not reader.is_alive(), "the command did not end"

    assert process.returncode == 143, output["stderr"]  # the first signal decides the status
    assert "Traceback" not in output["stderr"]
    assert [status for _, _, status in _runs(tmp_path)] == ["KILLED"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["completed"] is False


def test_ctrl_c_in_a_library_sweep_raises_with_the_steps_done(tmp_path):
    """Without the command line: Python's own Ctrl-C during the compiled parallel loop gives
    ``SweepInterrupted`` with every cell at the steps done, not a crash inside numba."""
    code = (
        "import sys\n"
        "from amsgrad.experiments import make_problem, variant, Settings\n"
        "from amsgrad.experiments.sweep import SweepInterrupted, sweep, default_beta1s, default_beta2s\n"
        "print('started', flush=True)\n"
        "try:\n"
        "    sweep(make_problem('online'), [variant('adam')], Settings(), 10_000_000, default_beta1s(128), default_beta2s(128))\n"
        "except SweepInterrupted as stop:\n"
        "    print('interrupted', stop.result.steps_done['adam'], int(stop.result.final_x['adam'].size), flush=True)\n"
    )
    process = subprocess.Popen(
        [COMMAND[0], "-c", code], cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout.readline().strip() == "started"
    time.sleep(2.0)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=DEADLINE)
    assert process.returncode == 0 and "Error" not in stderr, stderr
    word, steps_done, cells = stdout.split()
    assert word == "interrupted" and 0 < int(steps_done) < 10_000_000 and int(cells) == 128 * 128


def test_signals_after_a_stop_are_ignored_until_the_command_exits():
    code = (
        "import os, signal, sys\n"
        "from amsgrad.experiments.stopping import StopOnSignal\n"
        "with StopOnSignal(ignore_after_stop=True) as stop:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "# ignored at the OS level too: Python puts SIG_DFL back over its own handlers at shutdown\n"
        "assert all(signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM)), 'not ignored'\n"
        "for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):\n"
        "    os.kill(os.getpid(), signum)  # late: the command is on its way out\n"
        "sys.exit(stop.exit_status)\n"
    )
    done = subprocess.run([COMMAND[0], "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == 130 and done.stderr == ""
