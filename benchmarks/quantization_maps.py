"""Which code map for which moment: the measurement behind :mod:`amsgrad.quantization.formats`.

A small convolutional network is trained with float32 AMSGrad (600 steps); at steps 20, 200 and
600 its state is quantized block-wise with each candidate map, and the relative L2 error of the
update direction :math:`m/\\sqrt{\\hat v}` is reported (for v: of :math:`m/\\sqrt{v}` too, v
rounded to nearest as Adam would store it; the maximum rounded up as AMSGrad stores it). Only
tensors of at least 4096 elements count, as only those are compressed. The encoders' cost is a
separate question: the float codes and the sqrt-linear code encode with integer arithmetic in the
kernels, the dynamic tree map needs a search of its table. This one-shot error decided the maps
of m; those of v and v̂ (e5m3 and e4m0, where this error prefers sqrt-linear) were decided by
training runs (``low_memory_training``), see :mod:`amsgrad.quantization.formats`.
"""

from __future__ import annotations

import argparse
import math

import torch

from amsgrad.quantization import blockwise, codes

SNAPSHOTS = (20, 200, 600)


def snapshots(seed: int = 0) -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(64 * 8 * 8, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    x = torch.randn(512, 1, 8, 8)
    y = (x.flatten(1) @ torch.randn(64, 10)).argmax(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)
    out = []
    for step in range(1, max(SNAPSHOTS) + 1):
        index = torch.randint(0, 512, (64,))
        loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in SNAPSHOTS:
            out.append([(s["exp_avg"].flatten().clone(), s["exp_avg_sq"].flatten().clone(),
                         s["max_exp_avg_sq"].flatten().clone()) for p, s in optimizer.state.items() if p.numel() >= 4096])
    return out


def _error(snapshot, which: str, code_map: codes.CodeMap, block: int) -> float:
    num = den = 0.0
    for m, v, vmax in snapshot:
        if which == "m":
            q = blockwise.dequantize(*blockwise.quantize(m, code_map, block), code_map, block, m.numel())
            exact, approx = m / (vmax.sqrt() + 1e-8), q / (vmax.sqrt() + 1e-8)
        else:
            second = vmax if which == "vmax" else v
            q = blockwise.dequantize(*blockwise.quantize(second, code_map, block, round_up=which == "vmax"),
                                     code_map, block, m.numel())
            exact, approx = m / (second.sqrt() + 1e-8), m / (q.sqrt() + 1e-8)
        num += float(((exact - approx) ** 2).sum())
        den += float((exact**2).sum())
    return math.sqrt(num / den)


CANDIDATES = {
    (8, "m"): [codes.minifloat(8, 4, True), codes.minifloat(8, 3, True), codes.dynamic_tree(8, True),
               codes.linear(8, True)],
    (8, "v"): [codes.sqrt_linear(8), codes.minifloat(8, 4, False, zero=False), codes.minifloat(8, 3, False, zero=False),
               codes.dynamic_tree(8, False)],
    (4, "m"): [codes.minifloat(4, 1, True), codes.dynamic_tree(4, True), codes.linear(4, True),
               codes.minifloat(4, 0, True)],
    (4, "v"): [codes.sqrt_linear(4), codes.linear(4, False, zero=False), codes.minifloat(4, 1, False, zero=False),
               codes.minifloat(4, 0, False, zero=False), codes.dynamic_tree(4, False)],
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks quantization_maps", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    states = snapshots()
    print(f"relative L2 error of the update direction at steps {', '.join(map(str, SNAPSHOTS))}; "
          f"blocks of 256 (8-bit) and 128 (4-bit)\n")
    for (bits, moment), maps in CANDIDATES.items():
        block = 256 if bits == 8 else 128
        for code_map in maps:
            if moment == "m":
                cells = ["  ".join(f"{_error(s, 'm', code_map, block):.4f}" for s in states)]
                print(f"{bits}-bit m  {code_map.name:26s} {cells[0]}")
            else:
                up = "  ".join(f"{_error(s, 'vmax', code_map, block):.4f}" for s in states)
                near = "  ".join(f"{_error(s, 'v', code_map, block):.4f}" for s in states)
                print(f"{bits}-bit v  {code_map.name:26s} maximum (up) {up}   v (nearest) {near}")
        print()
    return 0
