"""How long one optimizer step takes: ours (readable and fast paths) against torch.optim.

For each layout of parameters and each configuration, every implementation owns its own
parameters, gradients and state; rounds interleave the implementations (in a rotating order)
so that drifting machine speed hits them alike, and each cell is the median (and minimum) over
rounds. A bandwidth probe (``a.add_(b)``, in place, over as many elements as the layout) runs
in the same rounds, so achieved GB/s can be read against what the memory gives right now.

Run ``python -m benchmarks optimizer_step --help`` for options.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
import weakref
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import amsgrad
from amsgrad.kernels import native

M = 1 << 20

#: name -> (tensor sizes, steps per timed sample)
LAYOUTS: dict[str, tuple[list[int], int]] = {
    "1 x 16M": ([16 * M], 1),
    "200 x 84K (16M)": ([16 * M // 200] * 200, 1),
    "1 x 1M": ([M], 10),
    "1000 x 100": ([100] * 1000, 3),
}


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    ours: dict[str, Any]  # keyword arguments of amsgrad.AMSGrad
    torch_class: type
    torch_kwargs: dict[str, Any]  # the torch.optim settings with the same memory traffic
    exact_torch_match: bool  # False where torch has no such variant (compared with its nearest)

    @property
    def amsgrad(self) -> bool:
        return self.ours.get("amsgrad", True)


LR = 1e-3
CONFIGS = [
    Config("adam", dict(amsgrad=False), torch.optim.Adam, dict(), False),
    Config("adam torch-form", dict(amsgrad=False, eps=1e-8, optimized_update=False), torch.optim.Adam, dict(), True),
    Config("adam l2 torch-form", dict(amsgrad=False, eps=1e-8, optimized_update=False, weight_decay=0.01),
           torch.optim.Adam, dict(weight_decay=0.01), True),
    Config("adamw torch-form", dict(amsgrad=False, eps=1e-8, optimized_update=False,
                                    weight_decay=amsgrad.WeightDecay(0.01)), torch.optim.AdamW, dict(weight_decay=0.01), True),
    Config("amsgrad", dict(), torch.optim.Adam, dict(amsgrad=True), False),
    Config("amsgrad torch-form", dict(eps=1e-8, optimized_update=False), torch.optim.Adam, dict(amsgrad=True), True),
    Config("amsgrad l2", dict(weight_decay=0.01), torch.optim.Adam, dict(amsgrad=True, weight_decay=0.01), False),
    Config("amsgrad decoupled", dict(weight_decay=amsgrad.WeightDecay(0.01)), torch.optim.AdamW,
           dict(amsgrad=True, weight_decay=0.01), False),
    Config("amsgrad maximize", dict(maximize=True), torch.optim.Adam, dict(amsgrad=True, maximize=True), False),
    Config("amsgrad absolute decay", dict(weight_decay=amsgrad.WeightDecay(0.01, absolute=True)), torch.optim.AdamW,
           dict(amsgrad=True, weight_decay=0.01), False),
    Config("amsgrad max corrected", dict(max_of="corrected"), torch.optim.Adam, dict(amsgrad=True), False),
    Config("amsgrad algorithm 2", dict(eps=0.0, bias_correction=False), torch.optim.Adam, dict(amsgrad=True), False),
]

IMPLEMENTATIONS = ["ours readable", "ours fast", "torch for-loop", "torch foreach", "torch fused"]


def _make_optimizer(name: str, config: Config, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if name == "ours readable":
        return amsgrad.AMSGrad(params, lr=LR, foreach=False, fused=False, **config.ours)
    if name == "ours fast":
        return amsgrad.AMSGrad(params, lr=LR, **config.ours)
    flags = {"torch for-loop": dict(foreach=False), "torch foreach": dict(foreach=True),
             "torch fused": dict(fused=True)}[name]
    return config.torch_class(params, lr=LR, **config.torch_kwargs, **flags)


def _problem(sizes: list[int], dtype: torch.dtype, seed: int, device: str) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    params = []
    for size in sizes:
        param = torch.nn.Parameter(torch.randn(size, generator=generator, dtype=dtype).to(device))
        param.grad = torch.randn(size, generator=generator, dtype=dtype).to(device)
        params.append(param)
    return params


class PeakTemporaries(TorchDispatchMode):
    """Peak bytes of tensors that torch ops allocate (and keep alive) inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                size = tensor.untyped_storage().nbytes()
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._free, size)
        return out

    def _free(self, size: int) -> None:
        self.live -= size


def peak_step_temporaries(step: Callable[[], Any]) -> int:
    tracker = PeakTemporaries()
    with tracker:
        step()
    return tracker.peak


def _time(function: Callable[[], Any], repeat: int, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        function()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


@dataclasses.dataclass
class Cell:
    median_ms: float
    min_ms: float


def bench_layout(layout: str, configs: list[Config], implementations: list[str], rounds: int,
                 dtype: torch.dtype, device: str = "cpu") -> tuple[dict[str, dict[str, Cell]], Cell, dict[str, dict[str, int]]]:
    sizes, repeat = LAYOUTS[layout]
    numel = sum(sizes)
    probe_a, probe_b = torch.randn(numel, dtype=dtype, device=device), torch.randn(numel, dtype=dtype, device=device)
    probe_samples: list[float] = []
    results: dict[str, dict[str, Cell]] = {}
    memory: dict[str, dict[str, int]] = {}
    for config in configs:
        optimizers = {}
        for index, name in enumerate(implementations):
            params = _problem(sizes, dtype, seed=index, device=device)
            optimizers[name] = _make_optimizer(name, config, params)
            for _ in range(2):  # create the state, compile our kernel, warm the caches
                optimizers[name].step()
        memory[config.name] = {name: peak_step_temporaries(optimizers[name].step) for name in implementations}
        samples: dict[str, list[float]] = {name: [] for name in implementations}
        for round_index in range(rounds):
            order = implementations[round_index % len(implementations):] + implementations[:round_index % len(implementations)]
            for name in order:
                samples[name].append(_time(optimizers[name].step, repeat, device))
            probe_samples.append(_time(lambda: probe_a.add_(probe_b), repeat, device))
        results[config.name] = {name: Cell(statistics.median(v) * 1e3, min(v) * 1e3) for name, v in samples.items()}
        del optimizers
    probe = Cell(statistics.median(probe_samples) * 1e3, min(probe_samples) * 1e3)
    return results, probe, memory


def bytes_per_element(config: Config, dtype: torch.dtype) -> int:
    """Reads θ, g, m, v (and v̂), writes θ, m, v (and v̂)."""
    tensors_moved = 9 if config.amsgrad else 7
    return tensors_moved * torch.empty((), dtype=dtype).element_size()


def header(dtype: torch.dtype) -> str:
    lib = native.library()
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {dtype}, "
            f"CPU: {platform.processor() or platform.machine()} ({_cpu_name()}), "
            f"python {platform.python_version()}, C kernel: {'built' if lib else native.unavailable_reason()}")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def report(layout: str, results, probe: Cell, memory, configs: list[Config], implementations: list[str],
           dtype: torch.dtype, markdown: bool) -> str:
    numel = sum(LAYOUTS[layout][0])
    probe_gbs = 3 * numel * torch.empty((), dtype=dtype).element_size() / (probe.median_ms * 1e-3) / 1e9
    short = {"ours readable": "readable", "ours fast": "ours fast", "torch for-loop": "t loop",
             "torch foreach": "t foreach", "torch fused": "t fused"}
    columns = ["configuration"] + [short[n] for n in implementations]
    has_ratio = "ours fast" in implementations and "torch fused" in implementations
    if has_ratio:
        columns += ["fast/fused med", "min/min", "GB/s", "of probe", "temp MB fast/fused"]
    rows = []
    for config in configs:
        cells = results[config.name]
        row = [config.name + ("" if config.exact_torch_match else " *")]
        row += [f"{cells[n].median_ms:.3g}" for n in implementations]
        if has_ratio:
            fast, fused = cells["ours fast"], cells["torch fused"]
            gbs = bytes_per_element(config, dtype) * numel / (fast.median_ms * 1e-3) / 1e9
            mem = memory[config.name]
            row += [f"{fast.median_ms / fused.median_ms:.2f}", f"{fast.min_ms / fused.min_ms:.2f}", f"{gbs:.0f}",
                    f"{gbs / probe_gbs:.2f}", f"{mem['ours fast'] / M:.1f} / {mem['torch fused'] / M:.1f}"]
        rows.append(row)
    title = (f"{layout}: median ms per step; probe a.add_(b) over {numel:,} elements: {probe.median_ms:.3g} ms "
             f"= {probe_gbs:.0f} GB/s")
    return _table(title, columns, rows, markdown)


def _table(title: str, columns: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = [f"**{title}**", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(row[i])) for row in [columns] + rows) for i in range(len(columns))]
    fmt = lambda row: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([title, fmt(columns), fmt(["-" * w for w in widths])] + [fmt(row) for row in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks optimizer_step", description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="*", default=list(LAYOUTS), choices=list(LAYOUTS), metavar="LAYOUT",
                        help=f"layouts to run (default: all of {list(LAYOUTS)})")
    parser.add_argument("--configs", nargs="*", default=None, metavar="NAME",
                        help="configurations to run (default: all; names as printed)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per cell (default 5)")
    parser.add_argument("--fast-only", action="store_true",
                        help="time ours fast and torch fused only (skips the slow for-loop paths)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    configs = [c for c in CONFIGS if args.configs is None or c.name in args.configs]
    implementations = ["ours fast", "torch fused"] if args.fast_only else IMPLEMENTATIONS
    print(header(dtype) + (f", device: {torch.cuda.get_device_name()}" if args.device == "cuda" else ""))
    print("ratio = ours fast / torch fused (median of rounds; and min over min). GB/s = bytes an exact single "
          "pass moves (36 per float32 element for AMSGrad, 28 for Adam) / median time; 'of probe' divides by the "
          "probe's GB/s (12 bytes per element). temp MB: peak bytes of tensors allocated during one step. "
          "* = torch has no such variant: compared with its nearest setting (same memory traffic).")
    for layout in args.layouts:
        results, probe, memory = bench_layout(layout, configs, implementations, args.rounds, dtype, args.device)
        print()
        print(report(layout, results, probe, memory, configs, implementations, dtype, args.markdown), flush=True)


if __name__ == "__main__":
    main()
