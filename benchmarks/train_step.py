"""``python -m benchmarks train_step``: a training step of ``amsgrad train`` against a plain PyTorch loop.

For each model of the paper's Section 5 (logistic regression, the MLP, CIFARNET), on images of
MNIST's shape (1×28×28) and a training set of 60,000 (random pixels: the speed of a step does not
depend on them), it times a minibatch step of 128 in three ways, in the same process, rounds
interleaved in rotating order, and reports medians (and minima) in ms per step:

* ``harness``: :func:`amsgrad.experiments.realdata.training.train` with no records between the
  first and the last (its ``step_seconds``, which leaves out the records);
* ``plain``: the loop a person would write around the same model and the same optimizer
  (``amsgrad.AMSGrad``): index a batch from the tensors, forward, ``zero_grad``, backward, step,
  and for α/√t an ``LambdaLR`` scheduler;
* ``plain, torch.optim``: that loop with ``torch.optim.Adam(amsgrad=True)`` (its default
  multi-tensor path).

The ratio harness / plain is the harness's own overhead (1.00: none). Both use the same torch
thread count (``--threads``, default 1: a grid runs one run per core). The machine and load
are printed with the numbers; no number here is a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

STEPS = {"logreg": 400, "mlp": 400, "cifarnet": 6}


def _data(train: int = 60_000, test: int = 1_000):
    import numpy as np

    from amsgrad.experiments.realdata.data import Dataset
    from amsgrad.experiments.realdata.training import prepare

    rng = np.random.default_rng(0)
    return prepare(
        Dataset(
            "mnist",
            rng.integers(0, 256, (train, 1, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, train),
            rng.integers(0, 256, (test, 1, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, test),
            "random pixels",
        )
    )


def _harness(model: str, data, steps: int) -> float:
    from amsgrad.experiments.realdata.training import TrainConfig, train

    config = TrainConfig(model, "amsgrad", lr=1e-3, beta2=0.999, steps=steps, eval_every=steps, eval_size=256)
    return train(config, data).step_seconds / steps


def _plain(model: str, data, steps: int, torch_optim: bool) -> float:
    import torch
    import torch.nn.functional as F

    import amsgrad
    from amsgrad.experiments.realdata.models import MODELS, build_model

    torch.manual_seed(0)
    net = build_model(model, data.shape)
    if torch_optim:
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), amsgrad=True)
    else:
        optimizer = amsgrad.AMSGrad(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: (k + 1) ** -0.5) if MODELS[model].schedule == "inv-sqrt" else None
    order = torch.Generator().manual_seed(0)
    x, y = data.train_x, data.train_y
    n, batch = len(y), 128
    permutation, position = torch.randperm(n, generator=order), 0
    net.train()
    started = time.perf_counter()
    for _ in range(steps):
        if position + batch > n:
            permutation, position = torch.randperm(n, generator=order), 0
        index = permutation[position : position + batch]
        position += batch
        loss = F.cross_entropy(net(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return (time.perf_counter() - started) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks train_step", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=list(STEPS), choices=list(STEPS))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from .synthetic import _cpu_model

    load = os.getloadavg()[0]
    print(f"machine: {_cpu_model()}, {os.cpu_count()} logical cores, load average {load:.2f} at start; torch {torch.__version__}, {args.threads} thread(s); float32, batch 128")
    data = _data()
    ways = {
        "harness": lambda m, s: _harness(m, data, s),
        "plain": lambda m, s: _plain(m, data, s, torch_optim=False),
        "plain, torch.optim": lambda m, s: _plain(m, data, s, torch_optim=True),
    }
    print(f"{'model':<9} {'harness ms':>16} {'plain ms':>16} {'torch.optim ms':>16} {'harness/plain':>14}")
    for model in args.models:
        steps = STEPS[model]
        for way in ways.values():  # warm up: first-call allocations, the C kernel's build
            way(model, max(2, steps // 10))
        times: dict[str, list[float]] = {name: [] for name in ways}
        ratios = []
        names = list(ways)
        for r in range(args.rounds):
            measured = {}
            for name in names[r % 3 :] + names[: r % 3]:  # rotating order
                measured[name] = ways[name](model, steps)
                times[name].append(measured[name])
            ratios.append(measured["harness"] / measured["plain"])

        def cell(name: str) -> str:
            return f"{1e3 * statistics.median(times[name]):.3f} ({1e3 * min(times[name]):.3f})"

        print(f"{model:<9} {cell('harness'):>16} {cell('plain'):>16} {cell('plain, torch.optim'):>16} {statistics.median(ratios):>14.3f}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}; cells are median (min) over {args.rounds} rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
