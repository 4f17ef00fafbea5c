"""Jobs are estimated before they start; what this machine cannot do is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

from amsgrad.experiments import cost as job_cost
from amsgrad.experiments.report import TraceSample, TraceWriter
from amsgrad.experiments.simulate import Trace

REFUSED = [
    (["synthetic", "--steps", "1e30"], "argument --steps: must be at most 2^53 = 9,007,199,254,740,992"),
    (["synthetic", "--steps", "9007199254740993"], "argument --steps: must be at most 2^53"),
    (["synthetic", "--record-every", "1"], "argument --record-every: 60,000,000 metric values (about 15 GB) are too many for MLflow (at most 3,000,000): use --record-every 20 or more, or --no-track"),
    (["synthetic", "--steps", "1e15", "--no-track"], "argument --record-every: 2,000,000,000,000 recorded points would write about 144 TB to trace.csv"),
    (["sweep", "--grid", "100000"], "argument --grid: the job needs about 2.1 TB of memory"),
]


@pytest.mark.parametrize("args, message", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_what_cannot_run_is_refused_before_anything_starts(args, message, tmp_path, monkeypatch, capsys):
    from amsgrad.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(args)
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []  # no folder, no store, nothing


def test_2_to_the_53_steps_is_still_accepted_by_the_parser():
    from amsgrad.cli import build_parser

    args = build_parser().parse_args(["synthetic", "--steps", str(2**53), "--no-track"])
    assert args.steps == 2**53


def test_the_estimate_of_the_default_job():
    cost = job_cost.synthetic_cost(steps=10_000_000, runs=2, record_every=1000, engine="fast", tracked=True)
    assert (cost.steps, cost.recorded_points, cost.tracked_values) == (20_000_000, 20_000, 60_000)
    assert cost.trace_bytes == 20_000 * job_cost.TRACE_BYTES_PER_POINT
    untracked = job_cost.synthetic_cost(steps=10_000_000, runs=2, record_every=1000, engine="fast", tracked=False)
    assert untracked.tracked_values == untracked.tracked_bytes == 0
    torch_engine = job_cost.synthetic_cost(steps=10_000_000, runs=2, record_every=1000, engine="torch", tracked=True)
    assert torch_engine.seconds > 1000 * cost.seconds  # the estimate knows the engines differ


def test_the_command_reports_its_estimate(run_cli):
    done = run_cli("synthetic", "--steps", "20000", "--no-track", "--json")
    assert done.returncode == 0, done.stderr
    estimate = done.json()["estimate"]
    assert estimate["recorded_points"] == 40 and estimate["tracked_values"] == 0
    assert estimate["description"].startswith("2 runs x 20,000 steps")


def test_a_long_trace_streams_to_disk_while_memory_stays_bounded(run_cli, tmp_path):
    # Every step recorded: 400,000 points go to trace.csv; the plot keeps a bounded sample.
    done = run_cli("synthetic", "--steps", "200000", "--record-every", "1", "--no-track", "--json", "--out", "out")
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "out" / "trace.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 200_000
    assert lines[1].startswith("adam,1,") and lines[-1].startswith("amsgrad,200000,")
    assert (tmp_path / "out" / "synthetic.png").exists()


def test_the_trace_sample_is_bounded_and_evenly_spaced():
    sample = TraceSample(capacity=1000)
    for first in range(1, 1_000_001, 1000):
        t = np.arange(first, first + 1000)
        sample.add(Trace(t, np.zeros(1000), t / 1e6, t / 1e6))
    kept = sample.trace().step
    assert 500 <= len(kept) <= 1000
    gaps = np.diff(kept)
    assert (gaps == gaps[0]).all() and kept[-1] > 990_000  # one stride, up to the end


def test_the_trace_writer_round_trips_float64(tmp_path):
    values = np.array([0.1, -1 / 3, 1e-300, 2.0**0.5])
    writer = TraceWriter(tmp_path / "trace.csv")
    writer.write("adam", Trace(np.arange(1, 5), values, -values, values * 3))
    writer.close()
    rows = [line.split(",") for line in (tmp_path / "trace.csv").read_text().splitlines()[1:]]
    assert [float(row[2]) for row in rows] == values.tolist()
    assert [float(row[3]) for row in rows] == (-values).tolist()
