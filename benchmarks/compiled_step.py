"""``torch.compile(optimizer.step)``: ours against torch.optim.Adam(amsgrad=True), compiled and eager.

A new user's loop: a model's parameters with gradients, ``step = torch.compile(optimizer.step)``,
and (by default) a ``OneCycleLR`` scheduler that changes α and β1 every step. Each
implementation owns its parameters, gradients, state and scheduler. After warm-up (which compiles),
rounds interleave the implementations in rotating order; each cell is the median (and minimum)
over rounds of the time per step, scheduler step included. Printed with it: how many graphs
dynamo compiled for each implementation during warm-up and timing (one means no
recompilation), and how many dynamo frames it ran into (``frames``).

Run ``python -m benchmarks compiled_step --help`` for options.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

import amsgrad

#: name -> a function building the model whose parameters are optimized
LAYOUTS: dict[str, Callable[[], torch.nn.Module]] = {
    # CIFAR-sized CNN: two convolutions and a classifier, 6 tensors, 46K parameters
    "cnn 46K": lambda: torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(32 * 12 * 12, 10)),
    # an MLP with 12 tensors and 4.2M parameters
    "mlp 4M": lambda: torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(4)]),
}

#: "ours compiled" is the default settings: on the CPU, the C kernel outside the graph; "ours compiled
#: multi-tensor" (foreach=True) is the traced tensor-step path, what runs compiled off the CPU.
IMPLEMENTATIONS = ["ours eager", "ours compiled", "ours compiled multi-tensor", "torch eager", "torch compiled"]


def _make(name: str, layout: str, backend: str, schedule: bool) -> tuple[Callable[[], Any], torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = LAYOUTS[layout]()
    for param in model.parameters():
        param.grad = 1e-3 * torch.randn_like(param)
    if name.startswith("ours"):
        optimizer = amsgrad.AMSGrad(model.parameters(), lr=1e-3, foreach=True if "multi-tensor" in name else None)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=10**7) if schedule else None
    step = torch.compile(optimizer.step, backend=backend) if "compiled" in name else optimizer.step

    def one_step() -> None:
        step()
        if scheduler is not None:
            scheduler.step()

    return one_step, optimizer


def bench(layout: str, implementations: list[str], rounds: int, repeat: int, backend: str,
          schedule: bool) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[int, int]], dict[str, float]]:
    """Per implementation: (median, min) ms per step, (graphs, frames) compiled, and warm-up seconds."""
    torch._dynamo.reset()  # a fresh cache: compilations and the recompile limit count per layout
    steps, warm_up = {}, {}
    for name in implementations:
        step, _ = _make(name, layout, backend, schedule)
        start = time.perf_counter()
        for _ in range(3):
            step()
        warm_up[name] = time.perf_counter() - start
        steps[name] = step
    samples: dict[str, list[float]] = {name: [] for name in implementations}
    compiled_graphs: dict[str, list[int]] = {name: [0, 0] for name in implementations}
    for round_index in range(rounds):
        shift = round_index % len(implementations)
        for name in implementations[shift:] + implementations[:shift]:
            before = _dynamo_totals()
            start = time.perf_counter()
            for _ in range(repeat):
                steps[name]()
            samples[name].append((time.perf_counter() - start) / repeat * 1e3)
            after = _dynamo_totals()
            compiled_graphs[name][0] += after[0] - before[0]
            compiled_graphs[name][1] += after[1] - before[1]
    cells = {name: (statistics.median(v), min(v)) for name, v in samples.items()}
    return cells, {name: tuple(v) for name, v in compiled_graphs.items()}, warm_up


def _dynamo_totals() -> tuple[int, int]:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], counters["frames"]["total"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks compiled_step", description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="*", default=list(LAYOUTS), choices=list(LAYOUTS), metavar="LAYOUT",
                        help=f"models to run (default: all of {list(LAYOUTS)})")
    parser.add_argument("--rounds", type=int, default=11, help="interleaved rounds (default 11)")
    parser.add_argument("--repeat", type=int, default=50, help="steps per timed sample (default 50)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--no-schedule", action="store_true", help="no OneCycleLR (constant α and β)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    schedule = not args.no_schedule
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, backend {args.backend}, "
          f"{'OneCycleLR(cycle_momentum=True) stepped after every step' if schedule else 'constant lr and betas'}")
    print("ms per step (median of rounds; min); graphs, frames: what dynamo compiled during the timed rounds, "
          "after a 3-step warm-up (0 = no recompilation)")
    for layout in args.layouts:
        cells, compiled, warm_up = bench(layout, IMPLEMENTATIONS, args.rounds, args.repeat, args.backend, schedule)
        print(f"\n{layout}")
        for name in IMPLEMENTATIONS:
            median, minimum = cells[name]
            graphs, frames = compiled[name]
            extra = f"  graphs {graphs}, frames {frames}, warm-up {warm_up[name]:.1f} s" if "compiled" in name else ""
            print(f"  {name:27s} {median:8.4f} ms  (min {minimum:.4f}){extra}")
        for ours in ("ours compiled", "ours compiled multi-tensor"):
            ratio = cells[ours][0] / cells["torch compiled"][0]
            ratio_min = cells[ours][1] / cells["torch compiled"][1]
            print(f"  ratio {ours} / torch compiled: {ratio:.2f} (min/min {ratio_min:.2f})", flush=True)


if __name__ == "__main__":
    main()
