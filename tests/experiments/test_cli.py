"""``amsgrad synthetic`` and ``amsgrad sweep`` end to end, through a real subprocess."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import COMMAND, clean_env

PNG = b"\x89PNG\r\n\x1a\n"

# MLflow's own SQL store, opened here to read the runs back, warns about its ORM options.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _client(path: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{path}")


def _local_artifacts(project: Path, run) -> set[str]:
    """The files of a run of the local store: in ./mlartifacts, MLflow's proxied layout (as `mlflow ui` makes it)."""
    prefix = "mlflow-artifacts:/"
    assert run.info.artifact_uri == f"{prefix}{run.info.experiment_id}/{run.info.run_id}/artifacts"
    folder = project / "mlartifacts" / run.info.artifact_uri[len(prefix):]
    return {path.name for path in folder.iterdir()}


def test_synthetic_json_plot_and_runs_in_the_default_sqlite_store(run_cli, tmp_path):
    done = run_cli("synthetic", "--steps", "1e6", "--json", "--out", "out")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress bar off a terminal, no warnings
    document = done.json()  # stdout is JSON and nothing else
    assert {"setting", "steps", "results", "plot", "runs"} <= set(document)
    assert document["setting"] == "online" and document["steps"] == 1_000_000
    results = {r["optimizer"]: r for r in document["results"]}
    assert list(results) == ["adam", "amsgrad"]
    for r in results.values():
        assert {"optimizer", "final_x", "average_regret", "seconds"} <= set(r)
    assert results["adam"]["final_x"] == 1.0
    assert results["amsgrad"]["final_x"] < -0.9
    assert results["amsgrad"]["average_regret"] < results["adam"]["average_regret"]

    plot = tmp_path / document["plot"]
    assert plot == tmp_path / "out" / "synthetic.png" and plot.read_bytes().startswith(PNG)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved == document
    assert "AMSGrad" in (tmp_path / "out" / "results.txt").read_text()
    assert (tmp_path / "out" / "trace.csv").read_text().count("\n") == 1 + 2 * 1000

    # Two runs in ./mlflow.db, as the reference names them, with every recorded point.
    assert [r["name"] for r in document["runs"]] == ["Adam", "AMSGrad"]
    client = _client(tmp_path / "mlflow.db")
    experiment = client.get_experiment_by_name("synthetic")
    for described in document["runs"]:
        run = client.get_run(described["run_id"])
        assert run.info.status == "FINISHED" and run.info.experiment_id == experiment.experiment_id
        assert run.info.run_name == described["name"]
        assert run.data.params["lr"] == "0.01" and run.data.params["beta2"] == "0.99"
        assert run.data.params["setting"] == "online" and run.data.params["steps"] == "1000000"
        assert described["name"] in run.data.tags["mlflow.note.content"]
        for key in ("x", "regret", "average_regret"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1000, 1_000_001, 1000))
        final = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "average_regret")}[1_000_000]
        expected = results[run.data.params["optimizer"]]["average_regret"]
        assert final == pytest.approx(expected, rel=1e-12)
        assert _local_artifacts(tmp_path, run) >= {"synthetic.png", "results.json"}


def test_synthetic_prints_a_table_and_the_paths(run_cli, tmp_path):
    done = run_cli("synthetic", "--steps", "200000", "--setting", "stochastic", "--seed", "3", "--optimizers", "adam", "amsgrad", "amsgrad-corrected", "--no-track")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("stochastic problem: f_t(x) = 1010·x with probability 0.01")
    header = next(line for line in lines if line.startswith("optimizer"))
    assert header.split() == ["optimizer", "final", "x", "R(T)/T", "seconds"]
    for label in ("Adam", "AMSGrad", "AMSGrad (corrected max)"):
        assert any(line.startswith(label + " ") for line in lines)
    plot_line = next(line for line in lines if line.startswith("plot"))
    assert (tmp_path / plot_line.split()[1]).read_bytes().startswith(PNG)
    assert "not recorded (--no-track)" in done.stdout
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("extra", [[], ["--optimizers", "adamnc", "adamx", "--beta1-decay", "0.999"]], ids=["default", "adamnc-adamx-decay"])
def test_the_torch_engine_gives_the_fast_engines_numbers(run_cli, extra):
    fast = run_cli("synthetic", "--steps", "20000", "--schedule", "inv-sqrt", "--json", "--no-track", *extra)
    exact = run_cli("synthetic", "--steps", "20000", "--schedule", "inv-sqrt", "--json", "--no-track", "--engine", "torch", *extra)
    assert fast.returncode == exact.returncode == 0, fast.stderr + exact.stderr
    assert len(fast.json()["results"]) == len(exact.json()["results"]) == 2
    for a, b in zip(fast.json()["results"], exact.json()["results"]):
        assert a["final_x"] == pytest.approx(b["final_x"], abs=1e-9)
        assert a["average_regret"] == pytest.approx(b["average_regret"], abs=1e-9)


BAD_INPUT = [
    (["--steps", "0"], "argument --steps: must be a positive integer, got '0'"),
    (["--steps", "-5"], "argument --steps: must be a positive integer"),
    (["--steps", "2.5"], "argument --steps: must be a positive integer, got '2.5'"),
    (["--steps", "many"], "argument --steps: must be a positive integer"),
    (["--lr", "nan"], "argument --lr: must be a finite number > 0, got 'nan'"),
    (["--lr", "-0.1"], "argument --lr: must be a finite number > 0"),
    (["--betas", "0.9", "1.0"], "argument --betas: must be a number in [0, 1), got '1.0'"),
    (["--betas", "-0.1", "0.99"], "argument --betas: must be a number in [0, 1)"),
    (["--betas", "0.9"], "argument --betas: expected 2 arguments"),
    (["--eps", "-0.001"], "argument --eps: must be a finite number >= 0"),
    (["--eps", "-1e-8"], "argument --eps: must be a finite number >= 0, got '-1e-8'"),
    (["--lr", "-1E+2"], "argument --lr: must be a finite number > 0, got '-1E+2'"),
    (["--setting", "offline"], "argument --setting: invalid choice: 'offline'"),
    (["--optimizers", "adam", "sgd"], "argument --optimizers: invalid choice: 'sgd'"),
    (["--engine", "jax"], "argument --engine: invalid choice: 'jax'"),
    (["--schedule", "cosine"], "argument --schedule: invalid choice: 'cosine'"),
    (["--setting", "periodic", "--C", "100"], "the average gradient must be > 0"),
    (["--out", "a-file/results"], "argument --out: cannot write to 'a-file/results'"),
    (["--beta1-decay", "0"], "argument --beta1-decay: must be a number in (0, 1], got '0'"),
    (["--beta1-decay", "1.5"], "argument --beta1-decay: must be a number in (0, 1], got '1.5'"),
    (["--format", "jpg"], "argument --format: invalid choice: 'jpg'"),
    (["--dpi", "5"], "argument --dpi: must be a number in [10, 2400], got '5'"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_clear_line_and_status_2(args, message, tmp_path, monkeypatch, capsys):
    # In process, for speed: argparse's exit is the same SystemExit the script would raise.
    from amsgrad.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(SystemExit) as exited:
        main(["synthetic", *args])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("amsgrad synthetic: error: ") and message in err
    assert list(tmp_path.iterdir()) == [tmp_path / "a-file"]  # nothing was run, nothing written


def test_bad_input_from_the_shell(run_cli):
    # The same, through the installed entry point: one line, status 2, no traceback.
    done = run_cli("synthetic", "--steps", "1.5")
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr == "amsgrad synthetic: error: argument --steps: must be a positive integer, got '1.5' (see amsgrad synthetic --help)\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["sweep", "--grid", "4", "4", "4"], "argument --grid: give N or N1 N2"),
        (["sweep", "--beta2-range", "0.99", "0.9"], "argument --beta2-range: LOW must not exceed HIGH"),
        (["sweep", "--beta1-range", "0", "1"], "argument --beta1-range: must be a number in [0, 1)"),
        (["sweep", "--metric", "loss"], "argument --metric: invalid choice: 'loss'"),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
        (["plot", "no-such-folder"], "argument RUN_DIR: no-such-folder has no figure.json"),
        (["plot"], "the following arguments are required: RUN_DIR"),
        (["sweep", "--beta1-decay", "nan"], "argument --beta1-decay: must be a number in (0, 1], got 'nan'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_commands_and_sweep_input(args, message, tmp_path, monkeypatch, capsys):
    from amsgrad.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(args)
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == ""
    assert err.count("\n") == 1 and message in err


def test_help_lists_the_options(capsys):
    from amsgrad.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["synthetic", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in ("--setting", "--steps", "--lr", "--betas", "--eps", "--schedule", "--optimizers", "--engine", "--out", "--json", "--no-track",
                   "--beta1-decay", "--format", "--dpi", "adamnc", "adamx"):
        assert option in out


def test_sweep_end_to_end(run_cli, tmp_path):
    done = run_cli("sweep", "--grid", "4", "3", "--steps", "50000", "--json", "--out", "out")
    assert done.returncode == 0, done.stderr
    document = done.json()
    assert len(document["beta1"]) == 4 and len(document["beta2"]) == 3
    by_name = {r["optimizer"]: r for r in document["results"]}
    assert set(by_name) == {"adam", "amsgrad"}
    for r in by_name.values():
        assert len(r["final_x"]) == 4 and all(len(row) == 3 for row in r["final_x"])
    assert all(x < 0 for row in by_name["amsgrad"]["final_x"] for x in row)
    assert (tmp_path / "out" / "sweep.png").read_bytes().startswith(PNG)
    [described] = document["runs"]
    client = _client(tmp_path / "mlflow.db")
    run = client.get_run(described["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["grid"] == "4x3"
    assert "sweep.png" in _local_artifacts(tmp_path, run)
    assert client.get_experiment_by_name("sweep").experiment_id == run.info.experiment_id


def test_progress_bar_shows_on_a_terminal_and_only_there(tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import termios

    primary, secondary = pty.openpty()
    # A terminal of 24 rows and 80 columns (a new pty has 0 x 0, where tqdm shows nothing).
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen(
        [*COMMAND, "synthetic", "--no-track", "--steps", "2e6", "--out", str(tmp_path / "out")],
        cwd=tmp_path, env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 4096)
        except OSError:  # EIO: the command closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    stdout, _ = process.communicate(timeout=120)
    os.close(primary)
    terminal = b"".join(chunks).decode(errors="replace")
    assert process.returncode == 0, terminal
    assert "%|" in terminal  # tqdm's bar, on stderr
    assert "%|" not in stdout.decode() and "AMSGrad" in stdout.decode()  # the table stays clean


def test_the_new_algorithms_beta1_decay_and_another_format(run_cli, tmp_path):
    done = run_cli("synthetic", "--steps", "1e6", "--optimizers", "adam", "amsgrad", "adamnc", "adamx", "--beta1-decay", "0.9999",
                   "--format", "pdf", "--dpi", "120", "--json", "--no-track", "--out", "out")
    assert done.returncode == 0, done.stderr
    document = done.json()
    assert document["settings"]["beta1_decay"] == 0.9999
    results = {r["optimizer"]: r for r in document["results"]}
    assert list(results) == ["adam", "amsgrad", "adamnc", "adamx"] and results["adamx"]["label"] == "AdamX"
    assert all(r["steps_per_second"] > 0 for r in results.values())
    assert results["adam"]["final_x"] == 1.0 and results["adamx"]["final_x"] < -0.95  # measured: -0.9775
    assert document["plot"] == "out/synthetic.pdf" and (tmp_path / "out" / "synthetic.pdf").read_bytes().startswith(b"%PDF")
    assert json.loads((tmp_path / "out" / "figure.json").read_text())["kind"] == "synthetic"


def test_plot_redraws_a_run_folder(run_cli, tmp_path):
    assert run_cli("sweep", "--grid", "3", "--steps", "20000", "--optimizers", "adamnc", "adamx", "--no-track", "--out", "out").returncode == 0
    before = (tmp_path / "out" / "sweep.png").read_bytes()
    done = run_cli("plot", "out", "--format", "svg", "--metric", "average-regret", "--json")
    assert done.returncode == 0, done.stderr
    assert done.json() == {"kind": "sweep", "plot": "out/sweep.svg", "format": "svg", "dpi": 200, "metric": "average_regret"}
    assert (tmp_path / "out" / "sweep.svg").read_text().startswith("<?xml")
    again = run_cli("plot", "out", "--out", "out/again.png")
    assert again.returncode == 0 and again.stdout.strip() == "plot     out/again.png"
    assert (tmp_path / "out" / "again.png").read_bytes() == before  # the saved data is the whole figure
    wrong = run_cli("plot", "out", "--format", "pdf", "--out", "out/again.png")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1
    assert "argument --out: 'out/again.png' does not end in .pdf" in wrong.stderr
