"""Train a small model with FSDP2 and AMSGrad, save a distributed checkpoint, resume from it.

Run on two processes (CPUs with gloo, or one GPU per process with NCCL)::

    torchrun --nproc-per-node 2 examples/train_at_scale.py --steps 50 --checkpoint-dir ckpt
    torchrun --nproc-per-node 2 examples/train_at_scale.py --steps 50 --checkpoint-dir ckpt --resume

Each process keeps a shard of every parameter and of the optimizer state (DTensors); the
checkpoint is written by all processes together and can be loaded by a job of another size.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

import amsgrad


def build_model(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1)).to(device)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def batch(step: int, rank: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step * 1000 + rank)  # each rank its own data
    x = torch.randn(64, 32, generator=generator)
    return x.to(device), (x[:, :1] * x[:, 1:2] + torch.sin(x[:, 2:3])).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="steps to train in this run")
    parser.add_argument("--checkpoint-dir", default="checkpoint", help="where the checkpoint is saved")
    parser.add_argument("--resume", action="store_true", help="load the checkpoint first")
    args = parser.parse_args()

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    model = build_model(device)
    # nonfinite="skip": a step whose gradient holds inf/NaN on any rank is skipped on all of them.
    optimizer = amsgrad.AMSGrad(model.parameters(), lr=1e-2, weight_decay=amsgrad.WeightDecay(0.01),
                                nonfinite="skip")
    start = 0
    if args.resume:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state, "step": torch.tensor(0)}
        dcp.load(state, checkpoint_id=args.checkpoint_dir)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        start = int(state["step"])
        if rank == 0:
            print(f"resumed from step {start}")

    for step in range(start, start + args.steps):
        x, y = batch(step, rank, device)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        if rank == 0 and (step % 10 == 0 or step == start + args.steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}  skipped {optimizer.skipped_steps}")

    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state, "step": torch.tensor(start + args.steps)}
    dcp.save(state, checkpoint_id=args.checkpoint_dir)
    if rank == 0:
        print(f"saved checkpoint at step {start + args.steps} to {args.checkpoint_dir}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
