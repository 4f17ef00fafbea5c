"""Training quality with low-memory state: a small CNN on the 8x8 digits, every format, 3 seeds.

The data are scikit-learn's handwritten digits (1,797 8x8 images, shipped inside the package:
nothing is downloaded), 1,500 for training and 297 held out. The model is a small CNN
(conv 1→16, conv 16→32, max-pool, 512→64→10; 38K parameters, 98 % of them in tensors of at
least 4,096 elements, which are the ones compressed). Each run trains ``--steps`` minibatch
steps of 32 from the same initial weights and batch order per seed. Every batch is augmented
afresh (a shift of up to one pixel, Gaussian pixel noise of 0.15), so that the network cannot
simply memorize the 1,500 images and the loss stays a measure of optimization; the training
loss is that of a fixed augmented copy of the training set (3 x 1,500 images), recorded every
``--every`` steps. Reported: the final training loss (mean and spread over seeds, and its ratio
to float32 AMSGrad), the held-out loss and accuracy, and a PNG of the curves. The learning rate
decays to 0 on a cosine (``--lr`` at the start), and the final training loss is the mean of the
evaluations in the last 10 % of the steps, so that it measures where each run ends and not the
noise of its last minibatch.

``python -m benchmarks low_memory_training --help``; needs scikit-learn and matplotlib
(``pip install '.[bench,experiments]'``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

import amsgrad

RUNS = {
    "AMSGrad float32": dict(cls="AMSGrad"),
    "AMSGrad bfloat16 state": dict(cls="AMSGrad", state_precision=torch.bfloat16),
    "AMSGrad int8 state": dict(cls="AMSGrad", state_precision="int8"),
    "AMSGrad int4 state": dict(cls="AMSGrad", state_precision="int4"),
    "Adam float32": dict(cls="Adam"),
    # Adam with compressed m and v: what the codes of m and v cost without AMSGrad's maximum
    "Adam int8 state": dict(cls="Adam", state_precision="int8"),
    "Adam int4 state": dict(cls="Adam", state_precision="int4"),
    # pure bfloat16: parameters and state (m and v rounded stochastically), no float32 copy
    "AMSGrad bf16 params": dict(cls="AMSGrad", params=torch.bfloat16, state_precision=torch.bfloat16),
    "AMSGrad bf16 params, stochastic rounding": dict(cls="AMSGrad", params=torch.bfloat16,
                                                     state_precision=torch.bfloat16, stochastic_rounding=True),
    # the state in the parameters' dtype rounded to nearest, as torch.optim keeps it
    "AMSGrad bf16 params, stochastic rounding, state to nearest": dict(cls="AMSGrad", params=torch.bfloat16,
                                                                       stochastic_rounding=True),
}
BASELINE = "AMSGrad float32"


def baseline_of(name: str) -> str:
    """The float32 run each run is compared with: that of the same optimizer."""
    return "Adam float32" if name.startswith("Adam") else BASELINE


def load_digits():
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    x, y = x[order], y[order]
    return (x[:1500], y[:1500]), (x[1500:], y[1500:])


NOISE = 0.15


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random shift by up to one pixel (the whole batch alike) and pixel noise."""
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=generator))
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    return x + NOISE * torch.randn(x.shape, generator=generator)


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(32 * 4 * 4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def train(name: str, seed: int, steps: int, every: int, lr: float, data) -> dict:
    spec = dict(RUNS[name])
    cls = getattr(amsgrad, spec.pop("cls"))
    dtype = spec.pop("params", torch.float32)
    (x, y), (x_test, y_test) = data
    fixed = torch.Generator().manual_seed(99)
    x_eval = torch.cat([augment(x, fixed) for _ in range(3)])
    y_eval = y.repeat(3)
    model = make_model(seed).to(dtype)
    optimizer = cls(model.parameters(), lr=lr, eps=1e-8, **spec)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    generator = torch.Generator().manual_seed(seed)
    curve = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        index = torch.randint(0, len(y), (32,), generator=generator)
        batch = augment(x[index], generator)
        loss = torch.nn.functional.cross_entropy(model(batch.to(dtype)).float(), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % every == 0 or step == steps:
            with torch.no_grad():
                curve.append((step, float(torch.nn.functional.cross_entropy(model(x_eval.to(dtype)).float(), y_eval))))
    seconds = time.perf_counter() - start
    with torch.no_grad():
        logits = model(x_test.to(dtype)).float()
        accuracy = float((logits.argmax(1) == y_test).float().mean())
        test_loss = float(torch.nn.functional.cross_entropy(logits, y_test))
    tail = [loss for at, loss in curve if at > 0.9 * steps]
    return dict(name=name, seed=seed, curve=curve, final=statistics.mean(tail), accuracy=accuracy,
                test_loss=test_loss, seconds=seconds)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"AMSGrad float32": ("black", "-"), "AMSGrad bfloat16 state": ("tab:blue", "--"),
              "AMSGrad int8 state": ("tab:green", "-."), "AMSGrad int4 state": ("tab:orange", ":"),
              "Adam float32": ("tab:gray", (0, (1, 1))), "Adam int8 state": ("tab:olive", (0, (3, 1, 1, 1))),
              "Adam int4 state": ("tab:brown", (0, (5, 2))), "AMSGrad bf16 params": ("tab:red", "--"),
              "AMSGrad bf16 params, stochastic rounding": ("tab:purple", "-"),
              "AMSGrad bf16 params, stochastic rounding, state to nearest": ("tab:pink", ":")}
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    split = list(RUNS).index("AMSGrad bf16 params")
    for ax, names in ((axes[0], list(RUNS)[:split]), (axes[1], [BASELINE] + list(RUNS)[split:])):
        for name in names:
            runs = [r for r in results if r["name"] == name]
            steps = [s for s, _ in runs[0]["curve"]]
            losses = torch.tensor([[loss for _, loss in r["curve"]] for r in runs])
            color, style = styles[name]
            ax.plot(steps, losses.mean(0), color=color, linestyle=style, label=name)
            ax.fill_between(steps, losses.min(0).values, losses.max(0).values, color=color, alpha=0.12)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    seeds = len({r["seed"] for r in results})
    axes[0].set_ylabel(f"training loss (mean, range of {seeds} seeds)")
    axes[0].set_title("optimizer state precision (float32 parameters)")
    axes[1].set_title("bfloat16 parameters and state")
    figure.suptitle("Small CNN on the 8x8 digits: AMSGrad with low-memory state", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks low_memory_training", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/low_memory_training"))
    args = parser.parse_args(argv)
    try:
        data = load_digits()
    except ImportError:
        print("scikit-learn is not installed (pip install '.[bench]'): its digits are the data of this benchmark")
        return 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = [train(name, seed, args.steps, args.every, args.lr, data) for seed in range(args.seeds)
                   for name in RUNS]
    finally:
        torch.set_num_threads(threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{args.steps} steps, batch 32, lr {args.lr}, {args.seeds} seeds; torch {torch.__version__}, 1 thread")
    print("ratio: final loss / that of the same optimizer's float32 run of the same seed, median (range) over seeds\n")
    print(f"{'run':58s} {'final train loss':>18s} {'ratio':>20s} {'held-out loss':>13s} {'acc':>6s} {'s/run':>6s}")
    final = {(r["name"], r["seed"]): r["final"] for r in results}
    summary = []
    for name in RUNS:
        runs = [r for r in results if r["name"] == name]
        finals = [r["final"] for r in runs]
        ratios = [r["final"] / final[(baseline_of(name), r["seed"])] for r in runs]
        mean, std = statistics.mean(finals), statistics.pstdev(finals)
        accuracy = statistics.mean(r["accuracy"] for r in runs)
        seconds = statistics.mean(r["seconds"] for r in runs)
        test_loss = statistics.mean(r["test_loss"] for r in runs)
        ratio = statistics.median(ratios)
        summary.append(dict(name=name, baseline=baseline_of(name), final_mean=mean, final_std=std, finals=finals,
                            ratios=ratios, ratio=ratio, accuracy=accuracy, test_loss=test_loss))
        spread = f"{ratio:.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        print(f"{name:58s} {mean:8.4f} ± {std:<7.4f} {spread:>20s} {test_loss:13.4f} {accuracy:6.3f} "
              f"{seconds:6.1f}")
    (args.out / "results.json").write_text(json.dumps({"summary": summary, "runs": results}, indent=1))
    try:
        plot(results, args.out / "low_memory_training.png")
        print(f"\nplot    {args.out / 'low_memory_training.png'}")
    except ImportError:
        print("\nmatplotlib is not installed: no plot")
    print(f"results {args.out / 'results.json'}")
    return 0
