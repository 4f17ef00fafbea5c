"""Rounding to bfloat16: nearest (as torch), up, and stochastic with counter-based random bits."""

from __future__ import annotations

import torch

from amsgrad.quantization import rounding


def _interesting_floats() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, generator=generator) * torch.logspace(-30, 30, 50_000)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 3.3895314e38, 1e-40, -1e-40])
    return torch.cat([x, special])


def test_nearest_is_torchs_conversion():
    x = _interesting_floats()
    ours = rounding.round_nearest_bfloat16(x)
    number = ~torch.isnan(x)  # torch's NaN depends on its code path; ours is always 0x7FC0
    assert torch.equal(ours[number].view(torch.int16), x[number].to(torch.bfloat16).view(torch.int16))
    assert torch.all(ours[~number].view(torch.int16) == 0x7FC0)


def test_round_up_is_the_smallest_bfloat16_not_below():
    x = _interesting_floats()
    x = x[~torch.isnan(x)]
    up = rounding.round_up_bfloat16(x).float()
    assert torch.all(up >= x)
    finite = torch.isfinite(up) & (up != 0)
    below = torch.nextafter(up.to(torch.bfloat16), torch.tensor(-float("inf"), dtype=torch.bfloat16)).float()
    assert torch.all(below[finite] < x[finite])
    assert torch.isnan(rounding.round_up_bfloat16(torch.tensor([float("nan")]))).all()


def test_stochastic_rounding_is_unbiased_and_between_neighbours():
    x = torch.full((200_000,), 1.0 + 2.0**-10)  # a quarter of the way from 1 to the next bfloat16 (1 + 2^-7)
    bits = rounding.random_bits(rounding.rounding_key(7, 3, rounding.ROLE_PARAM), 0, x.numel())
    rounded = rounding.stochastic_round_bfloat16(x, bits).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2.0**-7}
    assert abs((rounded == 1.0 + 2.0**-7).float().mean().item() - 0.125) < 0.005
    negative = rounding.stochastic_round_bfloat16(-x, bits).float()
    assert torch.equal(negative, -rounded)  # sign-magnitude: symmetric


def test_random_bits_depend_on_seed_step_role_and_index_only():
    key = rounding.rounding_key(123, 10, rounding.ROLE_EXP_AVG)
    whole = rounding.random_bits(key, 0, 1000)
    assert torch.equal(torch.cat([rounding.random_bits(key, 0, 400), rounding.random_bits(key, 400, 600)]), whole)
    assert whole.min() >= 0 and whole.max() < 65536
    others = [rounding.rounding_key(124, 10, 1), rounding.rounding_key(123, 11, 1), rounding.rounding_key(123, 10, 2)]
    assert len({key, *others}) == 4
    # Roughly uniform bits.
    assert abs(whole.float().mean().item() / 65536 - 0.5) < 0.03


def test_sqrt_float32_is_correctly_rounded():
    import numpy as np

    generator = torch.Generator().manual_seed(3)
    x = torch.cat([torch.rand(200_000, generator=generator) * torch.logspace(-44, 38, 200_000),
                   torch.tensor([0.0, 1e-45, float("inf"), 4.0, 2.0, 3.4028235e38])])
    assert (torch.sqrt(x).numpy() != np.sqrt(x.numpy())).any()  # why this function exists
    assert np.array_equal(rounding.sqrt_float32(x).numpy(), np.sqrt(x.numpy()))
    assert torch.isnan(rounding.sqrt_float32(torch.tensor([float("nan"), -1.0]))).all()
