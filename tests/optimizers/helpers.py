"""Small, deterministic problems shared by the optimizer tests."""

from __future__ import annotations

import torch

SHAPES = [(3, 4), (5,), (), (0,), (2, 1, 3)]


def make_params(seed: int = 0, dtype: torch.dtype = torch.float64, shapes=SHAPES) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype)) for shape in shapes]


def clone_params(params: list[torch.Tensor]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def gradients(params: list[torch.Tensor], step: int, seed: int = 1) -> list[torch.Tensor]:
    """Gradients for ``step``: random, of varying scale, the same for the same arguments."""
    generator = torch.Generator().manual_seed(seed * 100_003 + step)
    scale = 10.0 ** ((step % 5) - 2)
    return [scale * torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]


def run_steps(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], steps: range, seed: int = 1) -> None:
    for step in steps:
        for param, grad in zip(params, gradients(params, step, seed)):
            param.grad = grad
        optimizer.step()


def state_tensors(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """Every state tensor, in a fixed order, named for error messages."""
    items = []
    for index, param in enumerate(params):
        for key, value in sorted(optimizer.state[param].items()):
            if isinstance(value, torch.Tensor):
                items.append((f"param {index} {key}", value))
    return items


def assert_same_run(opt_a, params_a, opt_b, params_b, exact: bool = True, atol: float = 0.0) -> None:
    """Params and every state tensor of two runs are equal (bitwise when ``exact``)."""
    for index, (a, b) in enumerate(zip(params_a, params_b)):
        _assert_equal(f"param {index}", a, b, exact, atol)
    states_a, states_b = state_tensors(opt_a, params_a), state_tensors(opt_b, params_b)
    assert [name for name, _ in states_a] == [name for name, _ in states_b]
    for (name, a), (_, b) in zip(states_a, states_b):
        _assert_equal(name, a, b, exact, atol)


def _assert_equal(name, a, b, exact, atol):
    if exact:
        assert torch.equal(a, b), f"{name} differs: max |Δ| = {(a.double() - b.double()).abs().max()}"
    else:
        torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=lambda m: f"{name}: {m}")
