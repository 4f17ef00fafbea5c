"""The small regression MLP whose loss curves the low-precision tests compare."""

from __future__ import annotations

import torch

import amsgrad

STEPS = 300


def train_small_mlp(dtype: torch.dtype, autocast: torch.dtype | None = None, **settings):
    """300 full-batch AMSGrad steps (lr 1e-2) of an 8-32-1 MLP in ``dtype``; returns (losses, model, optimizer).

    Runs on one thread: the model is too small to gain from more, and a busy machine makes
    extra threads slow.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)).to(dtype)
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(256, 8, generator=generator)
        y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2]
        optimizer = amsgrad.AMSGrad(model.parameters(), lr=1e-2, **settings)
        losses = []
        for _ in range(STEPS):
            optimizer.zero_grad()
            if autocast is None:
                out = model(x.to(dtype))
            else:
                with torch.autocast("cpu", dtype=autocast):
                    out = model(x)
            loss = torch.nn.functional.mse_loss(out.float(), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses, model, optimizer
    finally:
        torch.set_num_threads(threads)
