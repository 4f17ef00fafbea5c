"""``python -m benchmarks sweep``: the (β1, β2) sweep against the hardware's limit.

What is measured, in rounds that interleave the three, each a median over the rounds:

* **the bound**: a numba loop shaped like the grid engine (time outer, 256 cells inner, blocks
  of cells over the cores with ``prange``) whose only work per cell-step is one square root
  and one division, ``y = a / (√y + 1)``. Every cell-step of every variant needs at least
  that much (the update divides m_t by √v̂_t + ε), and on x86 the square root and the division
  share one unit that is not fully pipelined, while the rest of a step (fused multiply-adds,
  min/max, additions) runs on the other, pipelined units. So no kernel can take a cell-step
  in less time than this loop, vectorised the same way (the compiled code of both is
  checked for packed ``vsqrtpd``/``vdivpd``).
* **the grid engine**: the default sweep (32×32 grid, the online problem, Adam and AMSGrad),
  after compilation, in cell-steps per second.
* **a single run**: the fast engine's scalar loop, one optimizer for 10^7 steps (what
  ``amsgrad synthetic`` runs), in steps per second.

Rates are per second of wall time with every core the process may use, and (in brackets)
per second of CPU time, which a busy machine disturbs less. Then, from the commands' own
JSON, run alternately: ``amsgrad synthetic`` (steps/s of each optimizer) and ``amsgrad sweep``
(cell-steps/s of each), their ratio, and the cost of larger grids and longer runs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .synthetic import _env, _environment

COMMAND = [sys.executable, "-m", "amsgrad.cli"]


def _bound_kernels():
    from numba import njit, prange

    @njit(nogil=True, error_model="numpy")
    def bound_block(y, a, steps):
        for _ in range(steps):
            for k in range(y.size):
                y[k] = a[k] / (math.sqrt(y[k]) + 1.0)

    @njit(parallel=True, nogil=True, error_model="numpy")
    def bound(y, a, steps, lanes, threads):
        blocks = y.size // lanes
        for r in prange(threads):
            for b in range(r, blocks, threads):
                bound_block(y[b * lanes : (b + 1) * lanes], a[b * lanes : (b + 1) * lanes], steps)

    return bound_block, bound


def _packed(dispatcher) -> str:
    """The packed (vector) square roots and divisions in the machine code, by register width."""
    import re

    counts: dict[str, int] = {}
    for signature in dispatcher.signatures:
        for match in re.finditer(r"\b(vsqrtpd|vdivpd)\s[^\n]*%([xyz]mm)\d+\s*$", dispatcher.inspect_asm(signature), re.M):
            key = f"{match.group(1)} {match.group(2)}"
            counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items())) or "none (not vectorised)"


def _rate(fn, work: float) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return work / wall, work / cpu


def bench_kernels(rounds: int, steps: int) -> list[str]:
    import numba

    from amsgrad.experiments import Settings, make_problem, variant
    from amsgrad.experiments.fast_engine import FastRun
    from amsgrad.experiments.grid_engine import GridRun, inspect_vectorisation
    from amsgrad.experiments.sweep import default_beta1s, default_beta2s

    from amsgrad.experiments.grid_engine import LANES  # the bound runs blocks as long as the engine's

    threads = numba.get_num_threads()
    bound_block, bound = _bound_kernels()
    cells = 32 * 32
    y, a = np.ones(cells), np.full(cells, 2.0)
    bound(y, a, 10, LANES, threads)
    bound_block(y[:LANES], a[:LANES], 10)
    problem, settings = make_problem("online"), Settings()
    beta1s, beta2s = default_beta1s(32), default_beta2s(32)
    variants = [variant("adam"), variant("amsgrad")]
    for v in variants:
        GridRun(problem, v, settings, beta1s, beta2s).advance(10)
        FastRun(problem, v, settings).advance(10, 1000)

    samples: dict[str, list[tuple[float, float]]] = {"bound": [], "bound, 1 thread": [], "grid": [], "single": []}
    single_steps = 10_000_000
    for r in range(rounds):
        order = [0, 1, 2, 3][r % 4 :] + [0, 1, 2, 3][: r % 4]  # rotate who goes first
        for which in order:
            if which == 0:
                samples["bound"].append(_rate(lambda: bound(y, a, steps, LANES, threads), cells * steps))
            elif which == 1:
                samples["bound, 1 thread"].append(_rate(lambda: bound_block(y[:LANES], a[:LANES], steps * 4), LANES * steps * 4))
            elif which == 2:
                rates = []
                for v in variants:
                    run = GridRun(problem, v, settings, beta1s, beta2s)
                    rates.append(_rate(lambda: run.advance(steps), cells * steps))
                samples["grid"].append(tuple(statistics.mean(x) for x in zip(*rates)))
            else:
                rates = []
                for v in variants:
                    run = FastRun(problem, v, settings)
                    rates.append(_rate(lambda: run.advance(single_steps, 1000), single_steps))
                samples["single"].append(tuple(statistics.mean(x) for x in zip(*rates)))

    def median(key: str, i: int) -> float:
        return statistics.median(s[i] for s in samples[key])

    lines = [
        f"kernels, median of {rounds} interleaved rounds; {threads} threads; rate per wall second [per CPU second]:",
        f"  bound: sqrt + divide per lane, {cells} cells         {median('bound', 0):10.3g} cell-steps/s  [{median('bound', 1):.3g}]",
        f"  bound: one block of {LANES} cells on one thread      {median('bound, 1 thread', 0):10.3g} cell-steps/s  [{median('bound, 1 thread', 1):.3g}]",
        f"  grid engine: 32x32 grid, Adam and AMSGrad, {steps:,} steps {median('grid', 0):10.3g} cell-steps/s  [{median('grid', 1):.3g}]",
        f"  single run: one optimizer, 10^7 steps       {median('single', 0):10.3g} steps/s       [{median('single', 1):.3g}]",
        f"  grid / bound: {median('grid', 0) / median('bound', 0):.2f} (wall)  {median('grid', 1) / median('bound', 1):.2f} (CPU)",
        f"  grid / single run: {median('grid', 0) / median('single', 0):.1f}x (wall)",
        f"  machine code of the bound: {_packed(bound_block)}",
        "  vector widths (float64 lanes) of the grid engine's cell loops: "
        + "; ".join(f"{loop} sqrt {w['sqrt']} div {w['fdiv']} fma {w['fma']}" for loop, w in inspect_vectorisation().items()),
    ]
    return lines


def _command(args: list[str], cwd: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    done = subprocess.run([*COMMAND, *args, "--json", "--no-track"], cwd=cwd, env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"amsgrad {' '.join(args)} failed:\n{done.stderr}")
    return json.loads(done.stdout), seconds


def bench_commands(rounds: int, root: Path) -> list[str]:
    synthetic_rates, sweep_rates = [], []
    for _ in range(rounds):
        document, _ = _command(["synthetic", "--out", str(root / "synthetic")], root)
        synthetic_rates.append(statistics.mean(document["steps"] / r["seconds"] for r in document["results"]))
        document, _ = _command(["sweep", "--out", str(root / "sweep")], root)
        sweep_rates.append(statistics.mean(r["cell_steps_per_second"] for r in document["results"]))
    single, grid = statistics.median(synthetic_rates), statistics.median(sweep_rates)
    return [
        f"the commands' own JSON, median of {rounds} alternating rounds:",
        f"  amsgrad synthetic (10^7 steps):           {single:10.3g} steps/s per optimizer",
        f"  amsgrad sweep (32x32 grid, 10^6 steps):   {grid:10.3g} cell-steps/s per optimizer",
        f"  sweep / single run: {grid / single:.1f}x",
    ]


def bench_costs(root: Path) -> list[str]:
    lines = ["cost of larger sweeps (Adam and AMSGrad, whole command, --no-track):"]
    for args in (["--grid", "32"], ["--grid", "128"], ["--grid", "32", "--steps", "1e7"], ["--grid", "128", "--steps", "1e7"]):
        document, seconds = _command(["sweep", *args, "--out", str(root / "cost")], root)
        rate = statistics.mean(r["cell_steps_per_second"] for r in document["results"])
        cells = len(document["beta1"]) * len(document["beta2"])
        lines.append(f"  {' '.join(args):28s} {cells:6d} cells x {document['steps']:.0e} steps: {seconds:7.2f} s  ({rate:.3g} cell-steps/s)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the kernels (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=1_000_000, help="steps of the grid and the bound per round (default: %(default)s)")
    parser.add_argument("--command-rounds", type=int, default=3, help="alternating rounds of the two commands (default: %(default)s)")
    parser.add_argument("--no-costs", action="store_true", help="skip the larger sweeps (--grid 128, 10^7 steps)")
    args = parser.parse_args(argv)

    print("\n".join(_environment()), flush=True)
    print("\n".join(bench_kernels(args.rounds, args.steps)), flush=True)
    with tempfile.TemporaryDirectory(prefix="amsgrad-bench-") as folder:
        print("\n".join(bench_commands(args.command_rounds, Path(folder))), flush=True)
        if not args.no_costs:
            print("\n".join(bench_costs(Path(folder))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
