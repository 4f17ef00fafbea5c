"""The ``amsgrad`` command: the paper's synthetic experiments, tracked and plotted.

``amsgrad synthetic`` runs Adam and AMSGrad (or AdamNC, AdamX, the variants) on one of the
paper's problems and prints a table; ``amsgrad sweep`` maps a grid of (β1, β2). Both save
their results, table, plot (PNG, SVG or PDF) and the plot's data to ``--out`` and record runs
with MLflow (``--no-track`` to skip); ``amsgrad plot RUN_DIR`` draws a saved run's figure
again. The work is done by the pure functions of :mod:`amsgrad.experiments`; this module only
parses, reports and records.

Before a job starts its cost is estimated (:mod:`amsgrad.experiments.cost`), and a job this
machine cannot do is refused. While it runs, SIGINT (Ctrl-C), SIGTERM and SIGHUP stop it
between chunks of work (:mod:`amsgrad.experiments.stopping`): what was computed is saved and
reported and the runs are closed as KILLED; a second signal ends the command at once, still
closing the runs.

Exit status: 0 on success; 1 when the results are saved but could not be recorded in MLflow;
2 for a usage error (one line on stderr, nothing run) or a missing ``experiments`` extra;
128 + the signal's number when stopped by a signal (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser", "missing_extras"]

EXIT_OK, EXIT_TRACKING, EXIT_USAGE = 0, 1, 2

#: The modules of the ``experiments`` extra, and the package that provides each.
EXPERIMENT_MODULES = {
    "numpy": "numpy",
    "numba": "numba",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "mlflow": "mlflow-skinny",
    "sqlalchemy": "sqlalchemy",
    "alembic": "alembic",
    "distributed": "distributed",
}


def missing_extras() -> list[str]:
    """The packages of the ``experiments`` extra that cannot be imported here."""
    missing = []
    for module, package in EXPERIMENT_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(package)
    return missing


# ---------------------------------------------------------------------- argument types
#: The most steps a run may take: float64 counts steps (and sums regrets) exactly up to 2^53.
MAX_STEPS = 2**53


def _steps(text: str) -> int:
    """A positive integer up to 2^53; ``10_000_000`` and ``1e7`` are accepted."""
    plain = text.replace("_", "").strip()
    try:
        value: float | int = int(plain)
    except ValueError:
        try:
            value = float(plain)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if not math.isfinite(value) or value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    if int(value) > MAX_STEPS:
        raise argparse.ArgumentTypeError(
            f"must be at most 2^53 = {MAX_STEPS:,} (steps are counted in float64, exactly up to there), got {text!r}"
        )
    return int(value)


def _number(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False):
    """A finite float within the given bounds (None: unbounded on that side)."""
    if high is None:
        expected = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        ok = math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


def _integer(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


_positive = _number(0.0, None, low_open=True)
_non_negative = _number(0.0, None)
_decay = _number(0.0, 1.0, low_open=True)
_beta = _number(0.0, 1.0, high_open=True)
_probability = _number(0.0, 1.0, low_open=True, high_open=True)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit status 2)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Read "-1e-8" as a (negative) value, not an option, so that range checks can name it.
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    """The ``amsgrad`` argument parser, with its ``synthetic`` and ``sweep`` subcommands."""
    from .experiments.plotting import DEFAULT_DPI, FORMATS
    from .experiments.problems import SETTINGS
    from .experiments.simulate import ENGINES
    from .experiments.variants import SCHEDULES, VARIANTS

    parser = _Parser(
        prog="amsgrad",
        description="AMSGrad and Adam: the synthetic experiments of Reddi, Kale & Kumar (ICLR 2018).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    def common(p: argparse.ArgumentParser, steps: int, optimizers: list[str]) -> None:
        problem = p.add_argument_group("problem")
        problem.add_argument("--setting", choices=SETTINGS, default="online", help="online: 1010x if t mod 101 = 1 else -10x (the reference's); stochastic: 1010x with probability 0.01 else -10x; theorem1: Cx if t mod 3 = 1 else -x, with Theorem 1's betas; periodic: Cx every k steps else -x (default: %(default)s)")
        problem.add_argument("--C", dest="spike", type=_positive, metavar="C", help="the gradient of a spike step (online 1010, stochastic 1010, theorem1 3, periodic 250)")
        problem.add_argument("--period", type=_integer(2), metavar="K", help="a spike every K steps, at t mod K = 1 (online 101, periodic 200)")
        problem.add_argument("--probability", type=_probability, metavar="P", help="the chance of a spike, stochastic setting (0.01)")
        problem.add_argument("--seed", type=_integer(0), default=0, help="seed of the stochastic setting (default: %(default)s)")
        opt = p.add_argument_group("optimizers")
        opt.add_argument("--optimizers", nargs="+", choices=list(VARIANTS), default=optimizers, metavar="NAME", help="any of: " + "; ".join(f"{v.name} ({v.summary})" for v in VARIANTS.values()) + " (default: %(default)s)")
        opt.add_argument("--steps", type=_steps, default=steps, help="steps T, e.g. 1e7 (default: %(default)s)")
        opt.add_argument("--lr", type=_positive, default=1e-2, help="step size α (default: %(default)s)")
        opt.add_argument("--eps", type=_non_negative, default=1e-16, help="ε̂ (ε with --standard-update), as amsgrad.Adam's eps (default: %(default)s)")
        opt.add_argument("--schedule", choices=SCHEDULES, default="constant", help="α_t = α, or α/√t as in the paper's theorems (default: %(default)s)")
        opt.add_argument("--standard-update", action="store_true", help="optimized_update=False: torch.optim's form, ε added to the corrected √v")
        opt.add_argument("--beta1-decay", type=_decay, default=1.0, metavar="LAMBDA", help="β1,t = β1·λ^(t-1), the paper's Corollary 1; bias correction 1 - ∏ β1,k (default: %(default)s, a constant β1)")
        out = p.add_argument_group("output")
        out.add_argument("--out", type=Path, metavar="DIR", help="folder for the results, table and plot (default: a new folder in ./runs)")
        out.add_argument("--json", action="store_true", help="print the results as JSON, and nothing else, on stdout")
        out.add_argument("--no-track", action="store_true", help="do not record runs with MLflow")
        out.add_argument("--experiment", metavar="NAME", help="MLflow experiment name (default: the command's name)")
        figure_options(out)

    def figure_options(group) -> None:
        group.add_argument("--format", choices=FORMATS, default="png", help="the plot's file format (default: %(default)s)")
        group.add_argument("--dpi", type=_dpi, default=DEFAULT_DPI, help=f"resolution of a PNG, and of the heatmaps inside SVG/PDF, in [10, 2400] (default: {DEFAULT_DPI})")

    synthetic = commands.add_parser(
        "synthetic",
        help="Adam vs AMSGrad on one of the paper's problems",
        description="Run the paper's synthetic experiment: each optimizer on the problem, x and the average regret R(t)/t recorded every 1,000 steps; print a table, save the plot, record the runs. Defaults are the reference's: the online problem, lr 0.01, betas (0.9, 0.99), 10^7 steps, Adam and AMSGrad. "
        "Example, the paper's picture with α_t = α/√t: amsgrad synthetic --schedule inv-sqrt --lr 0.5",
    )
    common(synthetic, 10_000_000, ["adam", "amsgrad"])
    synthetic.add_argument("--betas", nargs=2, type=_beta, metavar=("B1", "B2"), help="β1 β2, each in [0, 1) (default: 0.9 0.99; theorem1: 0 and 1/(1+C^2))")
    synthetic.add_argument("--engine", choices=ENGINES, default="fast", help="fast: a compiled loop of the same update rules; torch: the library's optimizer classes (exact, ~10^4 steps/s) (default: %(default)s)")
    synthetic.add_argument("--record-every", type=_steps, default=1000, metavar="N", help="record x, the step's regret and R(t)/t every N steps (default: %(default)s)")
    synthetic.set_defaults(handler=_synthetic, command_parser=synthetic)

    sweep = commands.add_parser(
        "sweep",
        help="Adam vs AMSGrad over a grid of (β1, β2): heatmaps",
        description="Run each optimizer at every (β1, β2) of a grid on the problem and draw heatmaps of the final x (or R(T)/T), with the curve β1 = √β2 of the paper's theorems.",
    )
    common(sweep, 1_000_000, ["adam", "amsgrad"])
    sweep.add_argument("--grid", nargs="+", type=_integer(1), default=[32], metavar="N", help="N (an N×N grid) or N1 N2 (β1 values × β2 values) (default: 32)")
    sweep.add_argument("--beta1-range", nargs=2, type=_beta, default=[0.0, 0.99], metavar=("LOW", "HIGH"), help="β1 from LOW to HIGH, evenly spaced (default: 0 0.99)")
    sweep.add_argument("--beta2-range", nargs=2, type=_beta, default=[0.5, 0.9999], metavar=("LOW", "HIGH"), help="β2 from LOW to HIGH, 1-β2 evenly spaced on a log scale (default: 0.5 0.9999)")
    sweep.add_argument("--metric", choices=("final-x", "average-regret"), default="final-x", help="what the heatmaps show (default: %(default)s)")
    sweep.set_defaults(handler=_sweep, command_parser=sweep)

    plot = commands.add_parser(
        "plot",
        help="draw a saved run's figure again (another format, resolution or metric)",
        description="Draw the figure of a folder written by amsgrad synthetic or amsgrad sweep again, from the figure.json saved there, without running anything. Example: amsgrad plot runs/sweep-20261126-104700 --format pdf --metric average-regret",
    )
    plot.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a folder written by amsgrad synthetic or amsgrad sweep (its --out)")
    figure_options(plot)
    plot.add_argument("--metric", choices=("final-x", "average-regret"), help="a sweep's heatmaps: final x or R(T)/T (default: as the sweep drew them)")
    plot.add_argument("--out", type=Path, metavar="FILE", help="where to write the figure (default: synthetic.FORMAT or sweep.FORMAT in RUN_DIR)")
    plot.add_argument("--json", action="store_true", help="print what was drawn as JSON on stdout")
    plot.set_defaults(handler=_plot, command_parser=plot)
    _add_train(commands)
    return parser


def _dpi(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [10, 2400], got {text!r}") from None
    if not (math.isfinite(value) and 10 <= value <= 2400):
        raise argparse.ArgumentTypeError(f"must be a number in [10, 2400], got {text!r}")
    return int(round(value))


def _add_train(commands) -> None:
    """``amsgrad train``: the paper's Section 5 on real data, a grid over (optimizer, α, β2, seed)."""
    from .experiments.realdata.data import DATASETS
    from .experiments.realdata.protocol import BETA2S, MODELS
    from .experiments.variants import VARIANTS

    train = commands.add_parser(
        "train",
        help="the paper's real-data experiments: logistic regression, MLP, CIFARNET, grid search",
        description="Train the paper's models (Section 5) with each optimizer over a grid of step sizes α and β2 and several seeds, "
        "on the data's standard files in --data-dir; print each optimizer's best grid point (mean ± std over seeds), plot "
        "training and test loss against iterations (Figure 2), record the runs. The runs go to local worker processes, or to "
        "a Dask cluster (--scheduler). Each finished run is saved at once in --out: the same command with the same --out "
        "resumes a stopped or failed grid. Defaults per model: "
        + "; ".join(f"{m.name}: lr {' '.join(f'{x:g}' for x in m.lrs)}, {m.steps:,} steps, seeds {' '.join(map(str, m.seeds))}" for m in MODELS.values())
        + f"; beta2 {' '.join(f'{b:g}' for b in BETA2S)}. Example: amsgrad train --model logreg --dataset fashion-mnist",
    )
    what = train.add_argument_group("model and data")
    what.add_argument("--model", choices=list(MODELS), default="logreg", help="; ".join(f"{m.name}: {m.summary}" for m in MODELS.values()) + " (default: %(default)s)")
    what.add_argument("--dataset", choices=list(DATASETS), default="mnist", help="the files' format: MNIST/Fashion-MNIST IDX files or CIFAR-10's python batches (default: %(default)s)")
    what.add_argument("--data-dir", type=Path, metavar="DIR", help="the folder with the data set's files (default: data/DATASET; `make data` fetches Fashion-MNIST and a 5,000-image MNIST subset)")
    what.add_argument("--kernel-size", type=int, choices=(6, 5), default=6, help="CIFARNET's convolution kernels: 6 (the paper's) or 5 (TF-slim's) (default: %(default)s)")
    grid = train.add_argument_group("grid")
    grid.add_argument("--optimizers", nargs="+", choices=list(VARIANTS), default=["adam", "amsgrad"], metavar="NAME", help="any of: " + ", ".join(VARIANTS) + " (default: %(default)s)")
    grid.add_argument("--lr", nargs="+", type=_positive, metavar="LR", help="step sizes α to search (default: the model's)")
    grid.add_argument("--beta2", nargs="+", type=_beta, metavar="B2", help=f"values of β2 to search (default: {' '.join(f'{b:g}' for b in BETA2S)}, the paper's)")
    grid.add_argument("--seeds", nargs="+", type=_integer(0), metavar="SEED", help="seeds of every grid point (default: the model's)")
    grid.add_argument("--steps", type=_steps, help="optimizer steps of 128 examples per run (default: the model's)")
    grid.add_argument("--eval-every", type=_steps, metavar="N", help="record the losses every N steps (default: the model's)")
    grid.add_argument("--eval-size", type=_steps, metavar="N", help="evaluate on at most N test and N training examples (default: the model's)")
    grid.add_argument("--select", choices=("train-loss", "test-loss", "test-accuracy"), default="train-loss", help="how the best grid point of each optimizer is chosen: lowest mean final training or test loss, or highest test accuracy (default: %(default)s)")
    where = train.add_argument_group("where it runs")
    where.add_argument("--workers", type=_integer(1), metavar="N", help="local worker processes (default: the machine's cores)")
    where.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler, e.g. tcp://10.0.0.5:8786, whose workers have this package and run one thread each (default: local processes)")
    where.add_argument("--threads-per-run", type=_integer(1), metavar="N", help="torch threads of each run (default: cores / workers locally, 1 on a cluster)")
    out = train.add_argument_group("output")
    out.add_argument("--out", type=Path, metavar="DIR", help="folder for the runs, results, table and plots; an existing one is resumed (default: a new folder in ./runs)")
    out.add_argument("--json", action="store_true", help="print the results as JSON, and nothing else, on stdout")
    out.add_argument("--no-track", action="store_true", help="do not record runs with MLflow")
    out.add_argument("--experiment", metavar="NAME", help="MLflow experiment name (default: train)")
    train.set_defaults(handler=_train, command_parser=train)


def _version() -> str:
    from . import __version__

    return __version__


# ---------------------------------------------------------------------- shared steps
def _problem(args: argparse.Namespace, parser: argparse.ArgumentParser):
    from .experiments.problems import make_problem

    try:
        return make_problem(args.setting, spike=args.spike, period=args.period, probability=args.probability, seed=args.seed)
    except ValueError as error:
        parser.error(str(error))


def _out_dir(args: argparse.Namespace, command: str) -> Path:
    from .experiments.report import default_out_dir

    return args.out if args.out is not None else default_out_dir(command)


def _prepare_out(out: Path, parser: argparse.ArgumentParser) -> None:
    from .experiments.report import check_writable

    try:
        check_writable(out)
    except OSError as error:
        parser.error(f"argument --out: cannot write to {str(out)!r} ({error.strerror or error})")


def _check_cost(cost, parser: argparse.ArgumentParser, out: Path, tracked: bool, size_argument: str,
                record_every: int | None = None, record_argument: str = "--record-every") -> None:
    """Refuse a job this machine cannot do (one line naming the argument); say what a big one costs."""
    from .experiments import cost as job_cost
    from .experiments.mlflow_store import sqlite_path
    from .experiments.tracking import tracking_uri

    store = sqlite_path(tracking_uri()) if tracked else None
    try:
        job_cost.check(cost, out, None if store is None else store.parent, record_every=record_every,
                       size_argument=size_argument, record_argument=record_argument)
    except job_cost.JobRefused as refused:
        parser.error(f"argument {refused.argument}: {refused}")
    if sys.stderr.isatty():
        print(f"{parser.prog}: {cost.describe()}", file=sys.stderr)


class _Progress:
    """A tqdm bar on stderr when stderr is a terminal; otherwise nothing at all."""

    def __init__(self, total: int, unit: str):
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, unit_scale=True, file=sys.stderr, dynamic_ncols=True, leave=False)

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _warn(prog: str, text: str) -> None:
    print(f"{prog}: warning: {text}", file=sys.stderr)


def _save_plot(draw, path: Path) -> str | None:
    """Draw into a scratch file beside ``path`` and rename it into place; the path, or None if nothing was drawn."""
    scratch = path.with_name(f".{path.stem}-{os.getpid()}{path.suffix}")
    try:
        draw(scratch)
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)
    return str(path)


def _print_document(args, document, problem, heading: str, table: str, out: Path, tracker) -> None:
    """The results as JSON (``--json``) or as the table with where everything was saved."""
    if args.json:
        print(json.dumps(document, indent=2))
        return
    lines = [
        f"{problem.setting} problem: {problem.description}, x in [-1, 1], x* = -1",
        heading,
        "",
        table,
        "",
        f"plot     {document['plot'] or 'not drawn'}",
        f"results  {out / 'results.json'}",
        *_tracking_lines(tracker),
    ]
    print("\n".join(lines))


def _tracking_lines(tracker) -> list[str]:
    if not tracker.enabled:
        return ["runs     not recorded (--no-track)"]
    runs = tracker.describe_runs()
    if tracker.error is not None and not runs:
        return ["runs     not recorded (see the warning below)"]
    if any(r.get("url") for r in runs):
        return [f"runs     in {tracker.uri}, experiment {tracker.experiment!r}:"] + [f"         {r['name']}: {r['url']}" for r in runs]
    names = ", ".join(f"{r['name']} {r['run_id']}" for r in runs)
    return [f"runs     {names}", f"         in {tracker.uri}, experiment {tracker.experiment!r}"]


def _exit_status(prog: str, tracker, stop, aborted: bool, out: Path) -> int:
    if tracker.error is not None:
        _warn(prog, f"the runs were not recorded in MLflow ({tracker.error}); the results are saved in {out}")
    if stop():
        how = "at once by a second signal" if aborted else f"by {stop.signal_name}"
        _warn(prog, f"stopped {how}; the results so far are saved in {out}")
        return stop.exit_status
    return EXIT_TRACKING if tracker.error is not None else EXIT_OK


# ---------------------------------------------------------------------- amsgrad synthetic
def _synthetic(args: argparse.Namespace, parser: argparse.ArgumentParser, stop) -> int:
    from .experiments import cost as job_cost
    from .experiments import report
    from .experiments.problems import theorem1_betas
    from .experiments.stopping import Abort
    from .experiments.tracking import open_tracker
    from .experiments.variants import Settings, variant

    problem = _problem(args, parser)
    betas = tuple(args.betas) if args.betas else (theorem1_betas(problem.spike) if problem.setting == "theorem1" else (0.9, 0.99))
    settings = Settings(lr=args.lr, betas=betas, eps=args.eps, optimized_update=not args.standard_update, schedule=args.schedule,
                        beta1_decay=args.beta1_decay)
    variants = [variant(name) for name in dict.fromkeys(args.optimizers)]
    out = _out_dir(args, "synthetic")
    cost = job_cost.synthetic_cost(args.steps, len(variants), args.record_every, args.engine, tracked=not args.no_track)
    _check_cost(cost, parser, out, tracked=not args.no_track, size_argument="--steps", record_every=args.record_every)
    _prepare_out(out, parser)

    tracker = open_tracker(args.experiment or "synthetic", enabled=not args.no_track)
    progress = _Progress(args.steps * len(variants), unit="step")
    trace_file = report.TraceWriter(out / "trace.csv")
    plot_path = out / f"synthetic.{args.format}"
    results: list = []
    plot: str | None = None
    aborted = False

    def document() -> dict:
        return report.synthetic_json(results, plot=plot, runs=tracker.describe_runs(), out=str(out),
                                     tracking_error=tracker.error, stopped_by=stop.signal_name, cost=cost.as_dict())

    try:
        from .experiments.simulate import simulate

        handles = []
        for v in variants:
            if stop():
                break
            handle = tracker.start_run(
                v.label,
                {**problem.params(), **settings.params(), "optimizer": v.name, "steps": args.steps, "engine": args.engine, "record_every": args.record_every},
                description=f"{v.label} on {problem.description}; {settings.describe()}; {args.steps:,} steps, {args.engine} engine",
                tags={"optimizer": v.name},
            )
            handles.append(handle)
            progress.describe(v.label)
            sample = report.TraceSample()

            def on_chunk(trace, count, handle=handle, name=v.name, sample=sample):
                trace_file.write(name, trace)
                sample.add(trace)
                tracker.log_metrics(handle, trace.step, {"regret": trace.regret, "x": trace.x, "average_regret": trace.average_regret})
                progress.update(count)

            result = simulate(problem, v, settings, args.steps, engine=args.engine, record_every=args.record_every,
                              on_chunk=on_chunk, should_stop=stop, keep_trace=False)
            results.append(dataclasses.replace(result, trace=sample.trace()))
        progress.close()
        trace_file.close()

        # Save the results first, then the plot: each file appears whole, and a second signal
        # keeps what is already written.
        table = report.synthetic_table(results)
        report.write_text(out / "results.txt", table)
        report.write_json(out / "results.json", document())
        if results:
            from .experiments.plotting import plot_synthetic

            plot = _save_plot(lambda path: plot_synthetic(results, path, dpi=args.dpi), plot_path)
        status = "KILLED" if stop() else "FINISHED"
        for handle in handles:
            if plot is not None:
                tracker.log_artifact(handle, plot_path)
            tracker.log_artifact(handle, out / "results.json")
            tracker.finish(handle, status)
        tracker.close(should_stop=stop)
    except Abort:
        aborted = True
        tracker.abort()
    finally:
        progress.close()
        trace_file.close()

    final = document()
    report.write_json(out / "results.json", final)
    heading = f"{settings.describe()}, {args.steps:,} steps, {args.engine} engine"
    _print_document(args, final, problem, heading, report.synthetic_table(results), out, tracker)
    return _exit_status(parser.prog, tracker, stop, aborted, out)


# ---------------------------------------------------------------------- amsgrad sweep
def _sweep(args: argparse.Namespace, parser: argparse.ArgumentParser, stop) -> int:
    import numpy as np

    from .experiments import cost as job_cost
    from .experiments import report
    from .experiments.stopping import Abort
    from .experiments.sweep import SweepResult, default_beta1s, default_beta2s, sweep
    from .experiments.tracking import open_tracker
    from .experiments.variants import Settings, variant

    if len(args.grid) > 2:
        parser.error(f"argument --grid: give N or N1 N2, got {len(args.grid)} numbers")
    rows, columns = (args.grid[0], args.grid[0]) if len(args.grid) == 1 else args.grid
    for name, (low, high) in (("--beta1-range", args.beta1_range), ("--beta2-range", args.beta2_range)):
        if low > high:
            parser.error(f"argument {name}: LOW must not exceed HIGH, got {low:g} {high:g}")
    problem = _problem(args, parser)
    settings = Settings(lr=args.lr, eps=args.eps, optimized_update=not args.standard_update, schedule=args.schedule,
                        beta1_decay=args.beta1_decay)
    variants = [variant(name) for name in dict.fromkeys(args.optimizers)]
    out = _out_dir(args, "sweep")
    cost = job_cost.sweep_cost(args.steps, rows * columns, len(variants), tracked=not args.no_track)
    _check_cost(cost, parser, out, tracked=not args.no_track, size_argument="--grid")
    _prepare_out(out, parser)
    beta1s = default_beta1s(rows, *args.beta1_range)
    beta2s = default_beta2s(columns, *args.beta2_range)
    metric = args.metric.replace("-", "_")

    tracker = open_tracker(args.experiment or "sweep", enabled=not args.no_track)
    label = " vs ".join(v.label for v in variants)
    progress = _Progress(rows * columns * len(variants), unit="run")
    plot_path = out / f"sweep.{args.format}"
    result = SweepResult(problem, settings, args.steps, beta1s, beta2s, variants)
    plot: str | None = None
    aborted = False

    def document() -> dict:
        return report.sweep_json(result, plot=plot, runs=tracker.describe_runs(), out=str(out),
                                 tracking_error=tracker.error, stopped_by=stop.signal_name, cost=cost.as_dict())

    try:
        handle = None
        if not stop():
            handle = tracker.start_run(
                label,
                {**problem.params(), **{k: v for k, v in settings.params().items() if k not in ("beta1", "beta2")}, "optimizers": ",".join(v.name for v in variants), "steps": args.steps, "grid": f"{rows}x{columns}", "beta1_range": f"{args.beta1_range[0]:g}-{args.beta1_range[1]:g}", "beta2_range": f"{args.beta2_range[0]:g}-{args.beta2_range[1]:g}"},
                description=f"{label} over a {rows}x{columns} grid of (beta1, beta2) on {problem.description}; {settings.describe(betas=False)}; {args.steps:,} steps",
            )
            result = sweep(problem, variants, settings, args.steps, beta1s, beta2s, on_progress=progress.update, should_stop=stop)
        progress.close()

        table = report.sweep_table(result)
        report.write_text(out / "results.txt", table)
        report.write_json(out / "results.json", document())
        if result.final_x:
            from .experiments.plotting import plot_sweep

            plot = _save_plot(lambda path: plot_sweep(result, path, metric, dpi=args.dpi), plot_path)
        for s in result.summary():
            cells = max(s["cells"], 1)
            values = {"near_optimum_fraction": s["near_optimum"] / cells, "at_plus_one_fraction": s["at_plus_one"] / cells, "median_final_x": s["median_final_x"], "median_average_regret": s["median_average_regret"], "seconds": s["seconds"]}
            tracker.log_metrics(handle, np.array([0]), {f"{s['optimizer']}.{k}": np.array([v]) for k, v in values.items()})
        if plot is not None:
            tracker.log_artifact(handle, plot_path)
        tracker.log_artifact(handle, out / "results.json")
        tracker.finish(handle, "KILLED" if stop() else "FINISHED")
        tracker.close(should_stop=stop)
    except Abort:
        aborted = True
        tracker.abort()
    finally:
        progress.close()

    final = document()
    report.write_json(out / "results.json", final)
    heading = (
        f"{settings.describe(betas=False)}, {args.steps:,} steps, "
        f"beta1 {beta1s[0]:g}..{beta1s[-1]:g} x beta2 {beta2s[0]:g}..{beta2s[-1]:g} ({rows}x{columns})"
    )
    _print_document(args, final, problem, heading, report.sweep_table(result), out, tracker)
    return _exit_status(parser.prog, tracker, stop, aborted, out)


# ---------------------------------------------------------------------- amsgrad plot
def _plot(args: argparse.Namespace, parser: argparse.ArgumentParser, stop) -> int:
    from .experiments.plotting import load_figure_data, redraw

    try:
        data = load_figure_data(args.run_dir)
    except ValueError as error:
        parser.error(f"argument RUN_DIR: {error}")
    metric = args.metric.replace("-", "_") if args.metric else None
    if metric is not None and data["kind"] != "sweep":
        parser.error(f"argument --metric: applies to a sweep's figure, and {str(args.run_dir)!r} holds a synthetic run's")
    target = args.out if args.out is not None else args.run_dir / f"{data['kind']}.{args.format}"
    if args.out is not None and target.suffix.lstrip(".").lower() not in ("", args.format):
        parser.error(f"argument --out: {str(target)!r} does not end in .{args.format} (the --format)")
    if not target.parent.is_dir():
        parser.error(f"argument --out: no folder {str(target.parent)!r}")
    try:
        path = _save_plot(lambda scratch: redraw(args.run_dir, args.format, dpi=args.dpi, metric=metric, out=scratch), target)
    except OSError as error:
        parser.error(f"argument --out: cannot write to {str(target)!r} ({error.strerror or error})")
    if args.json:
        print(json.dumps({"kind": data["kind"], "plot": path, "format": args.format, "dpi": args.dpi, "metric": metric or data.get("metric")}, indent=2))
    else:
        print(f"plot     {path}")
    return EXIT_OK


# ---------------------------------------------------------------------- amsgrad train
def _train(args: argparse.Namespace, parser: argparse.ArgumentParser, stop) -> int:
    import numpy as np

    from . import __version__
    from .experiments import cost as job_cost
    from .experiments.realdata import summary
    from .experiments.realdata.data import DATASETS, DataError, load_dataset
    from .experiments.realdata.grid import default_configs, load_finished, run_grid
    from .experiments.realdata.training import HISTORY_KEYS, measure, prepare
    from .experiments.report import write_json, write_text
    from .experiments.stopping import Abort
    from .experiments.tracking import open_tracker

    import torch

    try:
        configs = default_configs(
            args.model, args.optimizers, args.lr, args.beta2, args.seeds, args.steps,
            kernel_size=args.kernel_size,
            **{k: v for k, v in (("eval_every", args.eval_every), ("eval_size", args.eval_size)) if v is not None},
        )
    except ValueError as error:
        parser.error(str(error))
    data_dir = args.data_dir if args.data_dir is not None else Path("data") / args.dataset
    try:
        data = load_dataset(args.dataset, data_dir)
    except DataError as error:
        hint = "" if args.data_dir is not None else f"; put {DATASETS[args.dataset]['label']}'s files there or pass --data-dir (make data fetches Fashion-MNIST and 5,000 MNIST images)"
        parser.error(f"data: {error}{hint}")
    if configs[0].batch_size > len(data.train_labels):
        parser.error(f"data: {data_dir} has {len(data.train_labels)} training images, fewer than a minibatch of {configs[0].batch_size}")
    out = _out_dir(args, f"train-{args.model}-{args.dataset}")
    select = args.select.replace("-", "_")
    tracked = not args.no_track

    # The cost, from a few real steps here, before anything starts; a job too big is refused.
    fingerprint = data.fingerprint()
    todo = [c for c in configs if load_finished(out, c, fingerprint) is None]
    workers = None if args.scheduler is not None else (args.workers or os.cpu_count() or 1)  # None: a cluster's
    threads = args.threads_per_run or (max(1, (os.cpu_count() or 1) // workers) if workers else 1)
    per_run = (0.0, 0.0)
    if todo and not stop():
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            per_run = measure(todo[0], prepare(data))
        finally:
            torch.set_num_threads(previous)
    cost = job_cost.train_cost(todo, *per_run, workers=workers, data_bytes=data.nbytes, tracked=tracked)
    _check_cost(cost, parser, out, tracked=tracked, size_argument="--steps", record_every=configs[0].record_every, record_argument="--eval-every")
    _prepare_out(out, parser)
    if not args.json and sys.stderr.isatty():
        print(f"{parser.prog}: {data.describe()}; {len(configs) - len(todo)} of {len(configs)} runs already in {out}", file=sys.stderr)

    tracker = open_tracker(args.experiment or "train", enabled=tracked)
    versions = {"amsgrad_version": __version__, "torch_version": torch.__version__}
    first = configs[0]
    grid_params = {
        "model": args.model, "dataset": args.dataset, "data": data.describe(), "data_fingerprint": fingerprint,
        "optimizers": ",".join(dict.fromkeys(c.optimizer for c in configs)), "lrs": ",".join(f"{x:g}" for x in dict.fromkeys(c.lr for c in configs)),
        "beta2s": ",".join(f"{x:g}" for x in dict.fromkeys(c.beta2 for c in configs)), "seeds": ",".join(str(x) for x in dict.fromkeys(c.seed for c in configs)),
        "steps": first.steps, "batch_size": first.batch_size, "beta1": first.beta1, "eps": first.eps, "schedule": first.resolved_schedule,
        "kernel_size": args.kernel_size if args.model == "cifarnet" else None, "eval_every": first.record_every, "eval_size": first.eval_size,
        "select": select, "scheduler": args.scheduler or "local", **versions,
    }
    progress = _Progress(sum(c.steps for c in todo), unit="step")
    done_steps: dict[str, int] = {}
    outcome = None
    plots: list[str] = []
    aborted = False

    def on_progress(key: str, step: int, steps: int) -> None:
        progress.update(step - done_steps.get(key, 0))
        done_steps[key] = step

    def on_result(result) -> None:  # each run, as it arrives: a child of the grid's run
        c = result.config
        handle = tracker.start_run(
            c.label, {**c.to_dict(), "schedule": c.resolved_schedule, "dataset": args.dataset, "data_fingerprint": fingerprint, **versions},
            description=f"{c.label}: {args.model} on {data.describe()}, {c.steps:,} steps", tags={"optimizer": c.optimizer, "key": c.key()}, parent=parent,
        )
        history = result.history
        tracker.log_metrics(handle, np.asarray(history["step"]), {k: np.asarray(history[k], dtype=np.float64) for k in HISTORY_KEYS if k != "step"})
        tracker.log_metrics(handle, np.array([result.steps_done]), {"seconds": np.array([result.seconds])})
        tracker.finish(handle, "FINISHED" if result.completed else "KILLED")

    def document() -> dict:
        results = outcome.results if outcome is not None else []
        found = summary.results_document(results, select) if results else {"select": select, "results": [], "grid": []}
        return {
            "model": args.model, "dataset": args.dataset, "data": data.describe(), "data_dir": str(data_dir), "steps": first.steps,
            **found, "failed": outcome.failed if outcome else [], "completed": bool(outcome and outcome.completed and not stop()),
            "stopped_by": stop.signal_name, "resumed": outcome.resumed if outcome else 0, "runs_in_grid": len(configs),
            "plot": plots[0] if plots else None, "plots": plots, "out": str(out), "workers": outcome.workers if outcome else 0,
            "scheduler": args.scheduler, "cost": cost.as_dict(), "runs": tracker.describe_runs()[:1],
            "child_runs": max(0, len(tracker.describe_runs()) - 1), "tracking_error": tracker.error, **versions,
        }

    try:
        parent = None
        if not stop():
            parent = tracker.start_run(f"{args.model} on {args.dataset}", grid_params, description=f"grid search of {grid_params['optimizers']} on {args.model}, {data.describe()}", tags={"grid": "parent"})
            outcome = run_grid(configs, data, out, scheduler=args.scheduler, workers=args.workers, threads_per_run=args.threads_per_run, should_stop=stop, on_result=on_result, on_progress=on_progress)
        progress.close()
        for failure in outcome.failed if outcome else []:
            c = failure["config"]
            handle = tracker.start_run(f"{c['optimizer']} lr={c['lr']:g} beta2={c['beta2']:g} seed={c['seed']} (failed)", {**c, **versions}, description=failure["error"], tags={"key": failure["key"]}, parent=parent)
            tracker.finish(handle, "FAILED")

        results = outcome.results if outcome else []
        table = summary.results_table(results, select) if results else "no finished runs"
        write_text(out / "results.txt", table)
        write_json(out / "results.json", document())
        if any(p.completed for p in summary.grid_points(results)):
            from .experiments.realdata.plots import plot_losses

            from .experiments.realdata.protocol import MODELS

            name = MODELS[args.model].label + (f" ({args.kernel_size}x{args.kernel_size} kernels)" if args.model == "cifarnet" else "")
            title = f"{name} on {data.label} ({len(data.train_labels):,} training images)\nbest α and β2 of each optimizer (by final {args.select.replace('-', ' ')}); mean ± std over seeds"
            for suffix in ("png", "pdf"):
                plots.append(_save_plot(lambda path: plot_losses(results, [path], title=title, select=select), out / f"losses.{suffix}"))
        for row in document()["results"]:
            tracker.log_metrics(parent, np.array([0]), {f"{row['optimizer']}.{k}": np.array([np.nan if row[k] is None else row[k]]) for k in row if k.startswith("final_")})
        write_json(out / "results.json", document())
        for path in [*plots, str(out / "results.json"), str(out / "results.txt")]:
            tracker.log_artifact(parent, path)
        tracker.finish(parent, "KILLED" if stop() else ("FAILED" if outcome is not None and outcome.failed else "FINISHED"))
        tracker.close(should_stop=stop)
    except Abort:
        aborted = True
        tracker.abort()
    finally:
        progress.close()

    final = document()
    write_json(out / "results.json", final)
    results = outcome.results if outcome else []
    if args.json:
        print(json.dumps(final, indent=2))
    else:
        schedule = "lr/sqrt(t)" if first.resolved_schedule == "inv-sqrt" else "constant"
        lines = [
            f"{args.model} on {data.describe()}",
            f"{first.steps:,} steps of {first.batch_size}, beta1 {first.beta1:g}, step size {schedule}; best grid point of each optimizer by {args.select}, mean ± std over seeds",
            "",
            summary.results_table(results, select) if results else "no finished runs",
            "",
            *(f"failed   {f['key']}: {f['error']}" for f in final["failed"]),
            f"plots    {', '.join(plots) if plots else 'not drawn'}",
            f"results  {out / 'results.json'}; each run in {out / 'runs'} (the same command with this --out resumes)",
            *_tracking_lines_grid(tracker),
        ]
        print("\n".join(lines))
    if final["failed"] and not stop():
        _warn(parser.prog, f"{len(final['failed'])} run(s) failed; the same command with --out {out} runs them again")
        status = _exit_status(parser.prog, tracker, stop, aborted, out)
        return status if status != EXIT_OK else EXIT_TRACKING
    return _exit_status(parser.prog, tracker, stop, aborted, out)


def _tracking_lines_grid(tracker) -> list[str]:
    if not tracker.enabled:
        return ["runs     not recorded (--no-track)"]
    runs = tracker.describe_runs()
    if not runs:
        return ["runs     not recorded (see the warning below)"]
    parent = runs[0]
    where = parent.get("url") or f"{parent['run_id']} in {tracker.uri}"
    return [f"runs     {parent['name']}: {where}, experiment {tracker.experiment!r}, with {len(runs) - 1} child runs"]


# ---------------------------------------------------------------------- entry point
_TRACKED_COMMANDS = ("synthetic", "sweep", "train")


def _may_track(argv: list[str]) -> bool:
    return bool(argv) and argv[0] in _TRACKED_COMMANDS and not {"--no-track", "-h", "--help"} & set(argv)


def main(argv: Sequence[str] | None = None, *, prepare_tracking: bool | None = None) -> int:
    """Run the ``amsgrad`` command; return its exit status.

    ``prepare_tracking`` starts the recording process before the arguments are even parsed, so
    that importing MLflow overlaps with the command's own start (default: when run as the
    ``amsgrad`` script, ``argv`` None).
    """
    if prepare_tracking is None:
        prepare_tracking = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    missing = missing_extras()
    if missing:
        if argv == ["--version"]:
            print(f"amsgrad {_version()}")
            return EXIT_OK
        print(
            f"amsgrad: error: the command needs the 'experiments' extra, which is not installed here "
            f"(missing: {', '.join(missing)}); install it with: pip install 'amsgrad[experiments]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from .experiments import tracking

    if prepare_tracking and _may_track(argv):
        tracking.prepare_recorder()
    try:
        return _run(argv)
    finally:
        tracking.discard_recorder()  # not adopted: a usage error, say


def _run(argv: list[str]) -> int:
    from .experiments.stopping import Abort, StopOnSignal, stderr_note

    parser = build_parser()
    args = parser.parse_args(argv)
    command_parser = args.command_parser
    with StopOnSignal(on_first=stderr_note(command_parser.prog), ignore_after_stop=True) as stop:
        try:
            return args.handler(args, command_parser, stop)
        except Abort:  # a second signal outside the commands' own handling: nothing left to close
            return stop.exit_status
        except KeyboardInterrupt:  # signals are flags here; this is a Ctrl-C our handler did not see
            print(f"{command_parser.prog}: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
