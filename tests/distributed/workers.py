"""What each rank of a test job runs: ``python -m tests.distributed.workers SCENARIO OUT_DIR``.

Every scenario trains the same small float64 model on the same data; rank ``r`` of ``W`` gets
the ``r``-th chunk of every combined batch. Results (full parameters and optimizer state,
gathered where sharded) are written with ``torch.save`` for the test to compare.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import amsgrad

DTYPE = torch.float64
SETTINGS = dict(lr=0.05, betas=(0.8, 0.99), weight_decay=amsgrad.WeightDecay(0.01))
PER_RANK = 4


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1)).to(DTYPE)


def combined_batch(step: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(PER_RANK * world_size, 6, generator=generator, dtype=DTYPE)
    return x, torch.sin(x[:, :1]) - x[:, 1:2] ** 2


def rank_batch(step: int, rank: int, world_size: int):
    x, y = combined_batch(step, world_size)
    return x.chunk(world_size)[rank], y.chunk(world_size)[rank]


def train(model, optimizer, steps, batch_for, after_backward=None) -> None:
    for step in steps:
        x, y = batch_for(step)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        if after_backward is not None:
            after_backward(step)
        optimizer.step()


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered whole; a plain tensor as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor.detach()


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    params = {name: full(p).clone() for name, p in model.named_parameters()}
    names = {p: name for name, p in model.named_parameters()}
    state = {
        names[p]: {key: full(value).clone() for key, value in optimizer.state[p].items()}
        for group in optimizer.param_groups for p in group["params"] if optimizer.state[p]
    }
    return {"params": params, "state": state, "skipped_steps": optimizer.skipped_steps}


def strip(name: str) -> str:
    return name.removeprefix("module.")


def reference(steps, world_size: int, **overrides) -> dict:
    """The single-process run on the combined batches."""
    model = make_model()
    optimizer = amsgrad.AMSGrad(model.parameters(), **{**SETTINGS, **overrides})
    train(model, optimizer, steps, lambda step: combined_batch(step, world_size))
    return snapshot(model, optimizer)


# ----------------------------------------------------------------------------- scenarios
def ddp(out: Path, rank: int, world_size: int) -> None:
    """DDP equals one process on the combined batches, including a step skipped for an inf."""
    from torch.nn.parallel import DistributedDataParallel

    bad_step = 3

    def batch_for(step):
        x, y = rank_batch(step, rank, world_size)
        if step == bad_step and rank == world_size - 1:
            x = x.clone()
            x[0, 0] = math.inf  # only one rank sees it; the all-reduce spreads it to every rank
        return x, y

    model = DistributedDataParallel(make_model())
    optimizer = amsgrad.AMSGrad(model.parameters(), nonfinite="skip", **SETTINGS)
    train(model, optimizer, range(8), batch_for)
    result = snapshot(model, optimizer)
    result["params"] = {strip(k): v for k, v in result["params"].items()}
    result["state"] = {strip(k): v for k, v in result["state"].items()}
    if rank == 0:
        result["reference"] = reference([s for s in range(8) if s != bad_step], world_size, nonfinite="skip")
    torch.save(result, out / f"ddp-rank{rank}.pt")


#: The optimizer's own choice, and each path forced (``foreach``/``fused`` are group settings).
IMPLEMENTATIONS = {
    "default": {},
    "readable": dict(foreach=False, fused=False),
    "foreach": dict(foreach=True, fused=False),
}


def _fully_sharded(seed: int = 0) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    model = make_model(seed)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def fsdp(out: Path, rank: int, world_size: int) -> None:
    """FSDP2 (DTensor parameters) equals the unsharded run; a non-finite shard skips every rank."""
    results = {}
    for name, paths in IMPLEMENTATIONS.items():
        model = _fully_sharded()
        optimizer = amsgrad.AMSGrad(model.parameters(), nonfinite="skip", **SETTINGS, **paths)
        batch_for = lambda step: rank_batch(step, rank, world_size)  # noqa: E731
        bad_step = 4

        def poison_one_shard(step):
            if step == bad_step and rank == 0:
                model[0].weight.grad.to_local().view(-1)[0] = math.inf

        train(model, optimizer, range(bad_step), batch_for)
        before = snapshot(model, optimizer)
        train(model, optimizer, [bad_step], batch_for, poison_one_shard)
        after_skip = snapshot(model, optimizer)
        train(model, optimizer, range(bad_step + 1, 10), batch_for)
        results[name] = {
            "type": type(next(model.parameters())).__name__,
            "state_type": type(optimizer.state[next(model.parameters())]["exp_avg"]).__name__,
            "before": before,
            "after_skip": after_skip,
            "final": snapshot(model, optimizer),
        }
    if rank == 0:
        results["reference"] = reference([s for s in range(10) if s != 4], world_size)
    torch.save(results, out / f"fsdp-rank{rank}.pt")


def zero(out: Path, rank: int, world_size: int) -> None:
    """ZeroRedundancyOptimizer trains AMSGrad; its consolidated state_dict round-trips."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    batch_for = lambda step: rank_batch(step, rank, world_size)  # noqa: E731
    model = DistributedDataParallel(make_model())
    optimizer = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=amsgrad.AMSGrad, **SETTINGS)
    train(model, optimizer, range(6), batch_for)

    optimizer.consolidate_state_dict(to=0)
    if rank == 0:
        torch.save(optimizer.state_dict(), out / "zero-consolidated.pt")
    dist.barrier()
    consolidated = torch.load(out / "zero-consolidated.pt", weights_only=True)

    resumed_model = DistributedDataParallel(make_model(seed=1))
    resumed_model.load_state_dict(model.state_dict())
    resumed = ZeroRedundancyOptimizer(resumed_model.parameters(), optimizer_class=amsgrad.AMSGrad, lr=1.0)
    resumed.load_state_dict(consolidated)
    train(model, optimizer, range(6, 10), batch_for)
    train(resumed_model, resumed, range(6, 10), batch_for)

    result = {
        "params": {strip(k): v.detach().clone() for k, v in model.named_parameters()},
        "resumed_params": {strip(k): v.detach().clone() for k, v in resumed_model.named_parameters()},
        "local_state": [optimizer.optim.state[p] for p in optimizer.optim.param_groups[0]["params"]],
        "resumed_local_state": [resumed.optim.state[p] for p in resumed.optim.param_groups[0]["params"]],
        "resumed_lr": resumed.param_groups[0]["lr"],
    }
    if rank == 0:
        # Not the object loaded above: load_state_dict shares its "step" tensors, as torch.optim does.
        result["consolidated"] = torch.load(out / "zero-consolidated.pt", weights_only=True)
        result["reference_at_6"] = reference(range(6), world_size)
        result["reference"] = reference(range(10), world_size)
    torch.save(result, out / f"zero-rank{rank}.pt")


def lowmem(out: Path, rank: int, world_size: int) -> None:
    """int8 state (every tensor, however small) under DDP and under ZeroRedundancyOptimizer."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    settings = dict(SETTINGS, state_precision="int8", min_compressed_numel=0)
    batch_for = lambda step: rank_batch(step, rank, world_size)  # noqa: E731
    model = DistributedDataParallel(make_model())
    optimizer = amsgrad.AMSGrad(model.parameters(), **settings)
    train(model, optimizer, range(6), batch_for)
    result = {"ddp": snapshot(model, optimizer)}

    zmodel = DistributedDataParallel(make_model())
    zero_optimizer = ZeroRedundancyOptimizer(zmodel.parameters(), optimizer_class=amsgrad.AMSGrad, **settings)
    train(zmodel, zero_optimizer, range(6), batch_for)
    zero_optimizer.consolidate_state_dict(to=0)
    if rank == 0:
        torch.save(zero_optimizer.state_dict(), out / "lowmem-zero.pt")
    dist.barrier()
    consolidated = torch.load(out / "lowmem-zero.pt", weights_only=True)
    resumed_model = DistributedDataParallel(make_model(seed=1))
    resumed_model.load_state_dict(zmodel.state_dict())
    resumed = ZeroRedundancyOptimizer(resumed_model.parameters(), optimizer_class=amsgrad.AMSGrad, lr=1.0)
    resumed.load_state_dict(consolidated)
    train(zmodel, zero_optimizer, range(6, 10), batch_for)
    train(resumed_model, resumed, range(6, 10), batch_for)
    result["zero_params"] = {strip(k): v.detach().clone() for k, v in zmodel.named_parameters()}
    result["zero_resumed_params"] = {strip(k): v.detach().clone() for k, v in resumed_model.named_parameters()}
    result["zero_local_keys"] = sorted({key for state in zero_optimizer.optim.state.values() for key in state})
    if rank == 0:
        result["reference"] = reference(range(6), world_size, state_precision="int8", min_compressed_numel=0)
    torch.save(result, out / f"lowmem-rank{rank}.pt")


def _dcp_state(model, optimizer):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def dcp_save(out: Path, rank: int, world_size: int) -> None:
    """Train 5 steps, save a distributed checkpoint, then train on uninterrupted."""
    import torch.distributed.checkpoint as dcp

    model = _fully_sharded()
    optimizer = amsgrad.AMSGrad(model.parameters(), nonfinite="skip", **SETTINGS)
    batch_for = lambda step: rank_batch(step, rank, world_size)  # noqa: E731
    train(model, optimizer, range(5), batch_for)
    dcp.save(_dcp_state(model, optimizer), checkpoint_id=out / "checkpoint")
    train(model, optimizer, range(5, 10), batch_for)
    torch.save(snapshot(model, optimizer), out / f"dcp-uninterrupted-rank{rank}.pt")


def dcp_load(out: Path, rank: int, world_size: int) -> None:
    """A fresh job, built differently, loads the checkpoint and continues."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    model = _fully_sharded(seed=7)
    optimizer = amsgrad.AMSGrad(model.parameters(), lr=1.0)  # every setting comes from the checkpoint
    state = _dcp_state(model, optimizer)
    dcp.load(state, checkpoint_id=out / "checkpoint")
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    train(model, optimizer, range(5, 10), lambda step: rank_batch(step, rank, world_size))
    torch.save(snapshot(model, optimizer), out / f"dcp-resumed-rank{rank}.pt")


SCENARIOS = {f.__name__: f for f in (ddp, fsdp, zero, lowmem, dcp_save, dcp_load)}


def main(argv: list[str]) -> None:
    name, out = argv[0], Path(argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        SCENARIOS[name](out, dist.get_rank(), dist.get_world_size())
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Done, and every rank knows it: leave without running C++ static destructors, where gloo's
    # threads, their peer (rank 0, the store's host) gone, now and then abort the process
    # ("terminate called without an active exception", exit -6) after all the work succeeded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
