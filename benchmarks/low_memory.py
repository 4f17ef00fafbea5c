"""Low-memory optimizer state: step time and state bytes per parameter, side by side in one run.

One tensor of ``--size`` float32 parameters (16M by default) with a gradient; every entry owns
its own copy. Rounds interleave the entries in rotating order and each cell is the median over
rounds; ratios are to ``torch.optim.Adam(amsgrad=True, fused=True)`` in float32 (for bfloat16
parameters, to the same in bfloat16), measured in the same rounds. State bytes are counted from
the optimizer's state tensors (the inner tensors of tensor subclasses, for torchao) after one
step. bitsandbytes' and torchao's 8-bit and 4-bit optimizers are compared where they are
installed (``pip install '.[bench]'``) and run on this machine; they have no working AMSGrad
(bitsandbytes refuses ``Adam8bit(amsgrad=True)``; torchao's fails on CPU), so they run Adam.

``python -m benchmarks low_memory --help`` for options; ``--cycles`` also reports nanoseconds
(and, at the given clock, cycles) per element of our kernels on one thread with the tensor in
cache, a number that depends much less on other jobs on the machine than the times do. The
memory bandwidth of an in-place add over the same size, measured before and after the rounds,
says which bandwidth phase a shared machine was in: the ratios depend on it, since torch's step
moves 36 bytes per parameter and the compressed ones 18 to 24.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any, Callable

import torch

import amsgrad
from amsgrad.kernels import native

M = 1 << 20
LR = 1e-3


def _tensor_bytes(value: Any) -> int:
    if not isinstance(value, torch.Tensor):
        return 0
    if type(value) not in (torch.Tensor, torch.nn.Parameter) and hasattr(value, "__tensor_flatten__"):
        names, _ = value.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(value, name)) for name in names)
    return value.numel() * value.element_size()


def state_bytes_per_parameter(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> float:
    return sum(_tensor_bytes(value) for value in optimizer.state[param].values()) / param.numel()


def _entries(size: int) -> dict[str, tuple[Callable[[list], torch.optim.Optimizer], torch.dtype, str]]:
    """name -> (factory, parameter dtype, baseline name)."""
    f32, bf16 = "torch fused AMSGrad", "torch fused AMSGrad bf16"
    entries: dict[str, Any] = {
        f32: (lambda p: torch.optim.Adam(p, lr=LR, amsgrad=True, fused=True), torch.float32, f32),
        "torch fused Adam": (lambda p: torch.optim.Adam(p, lr=LR, fused=True), torch.float32, f32),
        "ours AMSGrad float32": (lambda p: amsgrad.AMSGrad(p, lr=LR), torch.float32, f32),
        "ours AMSGrad bfloat16": (lambda p: amsgrad.AMSGrad(p, lr=LR, state_precision=torch.bfloat16),
                                  torch.float32, f32),
        "ours AMSGrad int8": (lambda p: amsgrad.AMSGrad(p, lr=LR, state_precision="int8"), torch.float32, f32),
        "ours AMSGrad int4": (lambda p: amsgrad.AMSGrad(p, lr=LR, state_precision="int4"), torch.float32, f32),
        "ours Adam int8": (lambda p: amsgrad.Adam(p, lr=LR, state_precision="int8"), torch.float32, f32),
    }
    try:
        import bitsandbytes as bnb

        entries["bitsandbytes Adam8bit"] = (lambda p: bnb.optim.Adam8bit(p, lr=LR), torch.float32, f32)
    except ImportError:
        entries["bitsandbytes Adam8bit"] = None
    try:
        from torchao.optim import AdamW4bit, AdamW8bit

        entries["torchao AdamW8bit"] = (lambda p: AdamW8bit(p, lr=LR, weight_decay=0.0), torch.float32, f32)
        entries["torchao AdamW4bit"] = (lambda p: AdamW4bit(p, lr=LR, weight_decay=0.0), torch.float32, f32)
    except ImportError:
        entries["torchao AdamW8bit"] = entries["torchao AdamW4bit"] = None
    entries[bf16] = (lambda p: torch.optim.Adam(p, lr=LR, amsgrad=True, fused=True), torch.bfloat16, bf16)
    entries["ours AMSGrad bf16 params"] = (lambda p: amsgrad.AMSGrad(p, lr=LR), torch.bfloat16, bf16)
    entries["ours AMSGrad bf16 params, stochastic"] = (
        lambda p: amsgrad.AMSGrad(p, lr=LR, stochastic_rounding=True), torch.bfloat16, bf16)
    entries["ours AMSGrad bf16 params, int8 state"] = (
        lambda p: amsgrad.AMSGrad(p, lr=LR, state_precision="int8"), torch.bfloat16, bf16)
    return entries


def _make(factory, dtype: torch.dtype, size: int):
    generator = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(size, generator=generator).to(dtype))
    param.grad = torch.randn(size, generator=generator).to(dtype)
    optimizer = factory([param])
    optimizer.step()  # creates the state (and compiles what compiles)
    optimizer.step()
    return param, optimizer


def measure(size: int, rounds: int, only: list[str] | None = None) -> list[dict[str, Any]]:
    entries = _entries(size)
    missing = [name for name, entry in entries.items() if entry is None]
    live = {}
    for name, entry in entries.items():
        if entry is None or (only and not any(word in name for word in only)):
            continue
        factory, dtype, baseline = entry
        try:
            live[name] = (*_make(factory, dtype, size), baseline)
        except Exception as error:  # another library's optimizer that does not run here
            print(f"{name}: does not run here ({type(error).__name__}: {str(error).splitlines()[0][:100]})")
    times: dict[str, list[float]] = {name: [] for name in live}
    names = list(live)
    for round_index in range(rounds if names else 0):  # --only may name none of them (--cycles alone)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            _, optimizer, _ = live[name]
            start = time.perf_counter()
            optimizer.step()
            times[name].append(time.perf_counter() - start)
    rows = []
    for name, (param, optimizer, baseline) in live.items():
        median = statistics.median(times[name])
        base = statistics.median(times[baseline]) if baseline in times else float("nan")
        rows.append(dict(name=name, median_ms=median * 1e3, min_ms=min(times[name]) * 1e3, ratio=median / base,
                         baseline=baseline, bytes_per_parameter=state_bytes_per_parameter(optimizer, param)))
    for name in missing:
        rows.append(dict(name=name, missing=True))
    return rows


def cycles_per_element(size: int, ghz: float) -> list[tuple[str, float]]:
    """ns per element (and cycles at ``ghz``) of our step on one thread, tensor in cache, best of many."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = []
    try:
        for name, kwargs, dtype in [("float32 state (float kernel)", {}, torch.float32),
                                    ("bfloat16 state", dict(state_precision=torch.bfloat16), torch.float32),
                                    ("int8 state", dict(state_precision="int8"), torch.float32),
                                    ("int4 state", dict(state_precision="int4"), torch.float32),
                                    ("bf16 params, bf16 state", {}, torch.bfloat16)]:
            param, optimizer = _make(lambda p: amsgrad.AMSGrad(p, lr=LR, **kwargs), dtype, size)
            best = float("inf")
            for _ in range(200):
                start = time.perf_counter()
                optimizer.step()
                best = min(best, time.perf_counter() - start)
            out.append((name, best / size * 1e9))
    finally:
        torch.set_num_threads(threads)
    return out


def memory_bandwidth(size: int, repeats: int = 7) -> float:
    """GB/s of an in-place ``x += y`` over ``size`` float32 (12 bytes per element moved: the steps'
    pattern of streams read and written in place), median of ``repeats``: which bandwidth phase a
    shared machine is in, so that runs can be compared."""
    x, y = torch.ones(size), torch.ones(size)
    x.add_(y)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x.add_(y)
        times.append(time.perf_counter() - start)
    return 12 * size / statistics.median(times) / 1e9


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    flags = os.environ.get("AMSGRAD_NATIVE_FLAGS", "default (-march=native ...)")
    return (f"{cpu}, {torch.get_num_threads()} threads, load average {load:.1f}; torch {torch.__version__}, "
            f"Python {platform.python_version()}; C kernel flags: {flags}; native: "
            f"{'yes' if native.library() is not None else native.unavailable_reason()}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks low_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16 * M, help="parameters in the one tensor (default 16M)")
    parser.add_argument("--rounds", type=int, default=11, help="interleaved rounds (default 11)")
    parser.add_argument("--only", nargs="*", help="entries whose name contains one of these words")
    parser.add_argument("--cycles", action="store_true", help="also ns/cycles per element on one thread")
    parser.add_argument("--cycles-size", type=int, default=1 << 18, help="elements for --cycles (default 256K)")
    parser.add_argument("--ghz", type=float, default=2.6,
                        help="clock for converting ns to cycles (default 2.6, the clock /proc/cpuinfo gives on "
                             "the project's machine, whose cores run at about 3.9 under load)")
    args = parser.parse_args(argv)
    print(_machine())
    print(f"1 x {args.size:,} parameters, {args.rounds} interleaved rounds, median (min) ms per step\n")
    before = memory_bandwidth(args.size)
    rows = measure(args.size, args.rounds, args.only)
    after = memory_bandwidth(args.size)
    print(f"{'optimizer':40s} {'ms/step':>16s} {'ratio':>6s}  {'state B/param':>13s}")
    for row in rows:
        if row.get("missing"):
            print(f"{row['name']:40s} not installed (pip install '.[bench]')")
            continue
        cell = f"{row['median_ms']:.2f} ({row['min_ms']:.2f})"
        print(f"{row['name']:40s} {cell:>16s} {row['ratio']:6.2f}  {row['bytes_per_parameter']:13.2f}")
    print("\nratio: to torch fused AMSGrad float32 (bf16 rows: to torch fused AMSGrad on bfloat16 parameters)")
    print(f"memory bandwidth (x += y over {args.size:,} float32, 12 bytes per element): {before:.0f} GB/s before "
          f"the rounds, {after:.0f} GB/s after")
    if args.cycles:
        print(f"\none thread, {args.cycles_size:,} elements (in cache), best of 200 steps:")
        for name, ns in cycles_per_element(args.cycles_size, args.ghz):
            print(f"  {name:28s} {ns:5.2f} ns/element  ~{ns * args.ghz:4.1f} cycles at {args.ghz} GHz")
    return 0
