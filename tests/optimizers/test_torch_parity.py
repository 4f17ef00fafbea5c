"""Float64 parity with torch.optim.Adam/AdamW wherever the semantics coincide."""

import io

import pytest
import torch

import amsgrad

from .helpers import assert_same_run

STEPS = 200
TOLERANCE = 1e-10

# (name, our optimizer, torch's optimizer): the recipe in the README, case by case.
CASES = [
    ("adam", lambda p: amsgrad.Adam(p, lr=1e-2, eps=1e-8, optimized_update=False),
     lambda p, **kw: torch.optim.Adam(p, lr=1e-2, **kw)),
    ("amsgrad", lambda p: amsgrad.AMSGrad(p, lr=1e-2, eps=1e-8, optimized_update=False),
     lambda p, **kw: torch.optim.Adam(p, lr=1e-2, amsgrad=True, **kw)),
    ("amsgrad-l2", lambda p: amsgrad.AMSGrad(p, lr=1e-2, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.01,
                                             optimized_update=False),
     lambda p, **kw: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.95), weight_decay=0.01, amsgrad=True, **kw)),
    ("adamw", lambda p: amsgrad.Adam(p, lr=1e-2, eps=1e-8, weight_decay=amsgrad.WeightDecay(0.01),
                                     optimized_update=False),
     lambda p, **kw: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.01, **kw)),
    ("amsgradw", lambda p: amsgrad.AMSGrad(p, lr=1e-2, eps=1e-8, weight_decay=amsgrad.WeightDecay(0.1),
                                           optimized_update=False),
     lambda p, **kw: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, amsgrad=True, **kw)),
    ("amsgrad-maximize", lambda p: amsgrad.AMSGrad(p, lr=1e-3, eps=1e-8, optimized_update=False, maximize=True),
     lambda p, **kw: torch.optim.Adam(p, lr=1e-3, amsgrad=True, maximize=True, **kw)),
]
IDS = [case[0] for case in CASES]


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
    ).double()


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(10_000 + step)
    x = torch.randn(32, 6, generator=generator, dtype=torch.float64)
    y = torch.sin(x.sum(dim=1, keepdim=True)) + 0.1 * torch.randn(32, 1, generator=generator, dtype=torch.float64)
    return x, y


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: range, scheduler=None) -> None:
    for step in steps:
        x, y = data(step)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def max_difference(model_a, opt_a, model_b, opt_b) -> float:
    """Largest |Δ| over parameters and every state tensor that both optimizers keep."""
    worst = 0.0
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        worst = max(worst, (a - b).abs().max().item())
        state_a, state_b = opt_a.state[a], opt_b.state[b]
        assert set(state_a) == set(state_b)
        for key in state_a:
            worst = max(worst, (state_a[key].double() - state_b[key].double()).abs().max().item())
    return worst


@pytest.mark.parametrize("torch_foreach", [False, True], ids=["torch-for-loop", "torch-foreach"])
@pytest.mark.parametrize("name, ours, theirs", CASES, ids=IDS)
def test_parity_with_torch_on_a_small_model(name, ours, theirs, torch_foreach):
    model_ours, model_torch = make_model(), make_model()
    opt_ours, opt_torch = ours(model_ours.parameters()), theirs(model_torch.parameters(), foreach=torch_foreach)
    train(model_ours, opt_ours, range(STEPS))
    train(model_torch, opt_torch, range(STEPS))
    assert max_difference(model_ours, opt_ours, model_torch, opt_torch) <= TOLERANCE


def _roundtrip(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("direction", ["torch-to-ours", "ours-to-torch"])
@pytest.mark.parametrize("name, ours, theirs", CASES, ids=IDS)
def test_continue_a_checkpoint_written_by_the_other_library(name, ours, theirs, direction):
    writer_of, reader_of = (theirs, ours) if direction == "torch-to-ours" else (ours, theirs)
    reference_model = make_model()
    reference = writer_of(reference_model.parameters())
    train(reference_model, reference, range(100))

    model = make_model()
    writer = writer_of(model.parameters())
    train(model, writer, range(50))
    checkpoint = _roundtrip({"model": model.state_dict(), "optimizer": writer.state_dict()})

    resumed_model = make_model(seed=1)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed = reader_of(resumed_model.parameters())
    resumed.load_state_dict(checkpoint["optimizer"])
    train(resumed_model, resumed, range(50, 100))
    assert max_difference(resumed_model, resumed, reference_model, reference) <= TOLERANCE


def test_settings_a_foreign_state_dict_lacks_keep_its_math():
    # What torch.optim.AdamW saves wins; what it lacks gets torch's meaning (tests/optimizers/test_drop_in.py
    # has every key), and without a running maximum max_of keeps the constructor's choice.
    model = make_model()
    writer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    train(model, writer, range(3))
    reader = amsgrad.AMSGrad(model.parameters(), lr=0.5, eps=1e-8, optimized_update=False, max_of="corrected")
    with pytest.warns(UserWarning, match=r"param group 0 was saved with amsgrad=False .*enable_amsgrad\(\)"):
        reader.load_state_dict(writer.state_dict())
    group = reader.param_groups[0]
    assert group["lr"] == 1e-2 and group["eps"] == 1e-8 and group["amsgrad"] is False
    assert group["weight_decay"] == 0.05 and group["decoupled_weight_decay"] is True
    assert group["optimized_update"] is False and group["max_of"] == "corrected"
    assert group["absolute_weight_decay"] is False and group["bias_correction"] is True


def test_amsgrad_group_loading_a_plain_adam_state_starts_its_maximum_from_v():
    model_a, model_b = make_model(), make_model()
    writer = torch.optim.Adam(model_a.parameters(), lr=1e-2)
    train(model_a, writer, range(5))
    reader = amsgrad.AMSGrad(model_b.parameters(), lr=1e-2, eps=1e-8, optimized_update=False)
    model_b.load_state_dict(model_a.state_dict())
    with pytest.warns(UserWarning, match="enable_amsgrad"):
        reader.load_state_dict(writer.state_dict())
    reader.param_groups[0]["amsgrad"] = True  # by hand: the maximum starts from 0 (enable_amsgrad starts it from v)
    train(model_b, reader, range(5, 6))
    for param in model_b.parameters():
        state = reader.state[param]
        assert torch.equal(state["max_exp_avg_sq"], state["exp_avg_sq"])


@pytest.mark.parametrize("schedule", ["one-cycle", "step", "cosine"])
def test_lr_schedulers_match_torch_including_cycled_betas(schedule):
    def make_scheduler(optimizer):
        if schedule == "one-cycle":  # cycles betas[0] as well as lr
            return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=STEPS)
        if schedule == "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.5)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS)

    model_ours, model_torch = make_model(), make_model()
    opt_ours = amsgrad.AMSGrad(model_ours.parameters(), lr=1e-2, eps=1e-8, optimized_update=False)
    opt_torch = torch.optim.Adam(model_torch.parameters(), lr=1e-2, amsgrad=True)
    sched_ours, sched_torch = make_scheduler(opt_ours), make_scheduler(opt_torch)
    train(model_ours, opt_ours, range(STEPS), sched_ours)
    train(model_torch, opt_torch, range(STEPS), sched_torch)
    assert opt_ours.param_groups[0]["betas"] == opt_torch.param_groups[0]["betas"]
    assert max_difference(model_ours, opt_ours, model_torch, opt_torch) <= TOLERANCE


def test_resume_with_a_scheduler_is_bit_identical():
    def make(seed_model):
        model = make_model()
        optimizer = amsgrad.AMSGrad(model.parameters(), lr=1e-2)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=60)
        return model, optimizer, scheduler

    model, optimizer, scheduler = make(0)
    train(model, optimizer, range(30), scheduler)
    checkpoint = _roundtrip({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict()})
    train(model, optimizer, range(30, 60), scheduler)

    resumed_model, resumed, resumed_scheduler = make(1)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed.load_state_dict(checkpoint["optimizer"])
    resumed_scheduler.load_state_dict(checkpoint["scheduler"])
    train(resumed_model, resumed, range(30, 60), resumed_scheduler)
    params, resumed_params = list(model.parameters()), list(resumed_model.parameters())
    assert_same_run(optimizer, params, resumed, resumed_params)
