"""``python -m benchmarks.synthetic``: how fast the paper's experiments run.

Measures, as medians (and minima) of repeats:

* the fast engine: 10^7 steps of one optimizer, after compilation (cached on disk), for
  Adam and AMSGrad on the online and stochastic problems, constant and α/√t step sizes;
* the torch engine (the library's optimizer classes) and a loop written like the reference
  (autograd, ``.item()`` per step), in steps per second and minutes per 10^7 steps;
* the compilation, once, into an empty cache (``NUMBA_CACHE_DIR``), in a subprocess;
* the whole default ``amsgrad synthetic`` (10^7 steps, Adam and AMSGrad, tracking into
  SQLite and the plot) and the same with ``--no-track``, each in a fresh folder, side by side
  in alternating order, with their ratio; and again with its mlflow.db there;
* the default ``amsgrad sweep`` (32×32 grid, 10^6 steps), unless ``--quick``.

The machine, thread counts and versions are printed with the numbers. No number here is a
test: timings depend on the machine and on what else it is doing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMAND = [sys.executable, "-m", "amsgrad.cli"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _environment() -> list[str]:
    import numba
    import numpy
    import torch

    try:
        from importlib.metadata import version

        mlflow = version("mlflow-skinny")
    except Exception:  # noqa: BLE001
        mlflow = "?"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return [
        f"machine: {_cpu_model()}, {os.cpu_count()} logical cores, load average {load:.2f} at start",
        f"threads: numba {numba.config.NUMBA_NUM_THREADS}, torch {torch.get_num_threads()}",
        f"versions: Python {platform.python_version()}, torch {torch.__version__}, numba {numba.__version__}, "
        f"numpy {numpy.__version__}, mlflow-skinny {mlflow}; float64",
    ]


def _stats(samples: list[float]) -> str:
    return f"{statistics.median(samples):8.3f} s  (min {min(samples):.3f}, n={len(samples)})"


def _time(fn, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def bench_fast_engine(repeats: int) -> list[str]:
    from amsgrad.experiments import Settings, make_problem, variant
    from amsgrad.experiments.fast_engine import FastRun

    lines = ["fast engine, 10^7 steps of one optimizer (compiled, cache warm), recording every 1,000:"]
    for setting in ("online", "stochastic"):
        for schedule in ("constant", "inv-sqrt"):
            for name in ("adam", "amsgrad"):
                problem, v, settings = make_problem(setting), variant(name), Settings(schedule=schedule)
                FastRun(problem, v, settings).advance(1000, 1000)  # load the kernel

                def run():
                    FastRun(problem, v, settings).advance(10_000_000, 1000)

                lines.append(f"  {setting:10s} {schedule:8s} {v.label:8s} {_stats(_time(run, repeats))}")
    return lines


def bench_torch(steps: int, repeats: int) -> list[str]:
    import torch

    import amsgrad
    from amsgrad.experiments import Settings, make_problem, variant
    from amsgrad.experiments.torch_engine import TorchRun

    def engine():
        TorchRun(make_problem("online"), variant("amsgrad"), Settings()).advance(steps, 1000)

    def reference_loop():
        # The reference's loop: float32 parameter, autograd, regret.item() every step.
        x = torch.nn.Parameter(torch.tensor([0.0]))
        optimizer = amsgrad.AMSGrad([x], lr=1e-2, betas=(0.9, 0.99))
        total = 0.0
        for t in range(steps):
            loss = (1010 * x).sum() if t % 101 == 1 else (-10 * x).sum()
            regret = loss - ((1010 if t % 101 == 1 else -10) * -1.0)
            total += regret.item()
            regret.backward()
            optimizer.step()
            optimizer.zero_grad()
            x.data.clamp_(-1.0, 1.0)

    lines = [f"library optimizer classes, {steps:,} steps of AMSGrad (median of {repeats}):"]
    for label, fn in (("torch engine (grad set directly)", engine), ("reference-style loop (autograd)", reference_loop)):
        fn_samples = _time(fn, repeats)
        rate = steps / statistics.median(fn_samples)
        lines.append(f"  {label:34s} {rate:10,.0f} steps/s  = {1e7 / rate / 60:5.1f} min per 10^7 steps")
    return lines


def _run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run([*COMMAND, *args], cwd=cwd, env=env or _env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"amsgrad {' '.join(args)} failed:\n{done.stderr}")
    return seconds


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(extra)
    return env


def bench_compilation(root: Path) -> list[str]:
    cache = root / "numba-cache"
    cold = _run_cli(["synthetic", "--steps", "1000", "--no-track"], root, _env(NUMBA_CACHE_DIR=str(cache)))
    warm = _run_cli(["synthetic", "--steps", "1000", "--no-track"], root, _env(NUMBA_CACHE_DIR=str(cache)))
    return [
        "compilation (amsgrad synthetic --steps 1000 --no-track, whole command):",
        f"  empty numba cache {cold:8.3f} s, then cached {warm:8.3f} s",
    ]


def bench_command(root: Path, repeats: int) -> list[str]:
    """The default command tracked and untracked, each in a new folder, side by side in alternating order."""
    lines = ["amsgrad synthetic (defaults: 10^7 steps, Adam and AMSGrad, plot), whole command wall time:"]
    _run_cli(["synthetic", "--steps", "1000"], root)  # the empty MLflow store is made once per machine
    tracked, untracked = [], []
    for i in range(repeats):
        order = (("tracked", tracked, []), ("untracked", untracked, ["--no-track"]))
        for name, samples, extra in order if i % 2 == 0 else order[::-1]:
            folder = root / f"{name}-{i}"
            folder.mkdir()
            samples.append(_run_cli(["synthetic", *extra], folder))
    again = [_run_cli(["synthetic"], root / "tracked-0") for _ in range(repeats)]
    ratios = [a / b for a, b in zip(tracked, untracked)]
    lines.append(f"  tracked, fresh folder (creates mlflow.db)  {_stats(tracked)}")
    lines.append(f"  --no-track, fresh folder                   {_stats(untracked)}")
    lines.append(f"  tracked / untracked, pair by pair: median {statistics.median(ratios):.2f} "
                 f"(min {min(ratios):.2f}, max {max(ratios):.2f})")
    lines.append(f"  tracked, mlflow.db already there           {_stats(again)}")
    return lines


def bench_sweep(root: Path, repeats: int) -> list[str]:
    samples = [_run_cli(["sweep"], root) for _ in range(repeats)]
    return ["amsgrad sweep (defaults: 32x32 grid of (beta1, beta2), 10^6 steps, Adam and AMSGrad), whole command:", f"  {_stats(samples)}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="repeats of each fast measurement (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="skip the sweep and the compilation; fewer repeats of the commands")
    args = parser.parse_args(argv)

    print("\n".join(_environment()), flush=True)
    print("\n".join(bench_fast_engine(args.repeats)), flush=True)
    print("\n".join(bench_torch(20_000, 3)), flush=True)
    with tempfile.TemporaryDirectory(prefix="amsgrad-bench-") as folder:
        root = Path(folder)
        if not args.quick:
            print("\n".join(bench_compilation(root)), flush=True)
        print("\n".join(bench_command(root, 3 if args.quick else 7)), flush=True)
        if not args.quick:
            print("\n".join(bench_sweep(root, 2)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
