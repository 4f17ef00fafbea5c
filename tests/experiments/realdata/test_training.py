"""One training run: the paper's protocol, deterministic, stoppable, and a plain loop's numbers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import amsgrad
from amsgrad.experiments.realdata.data import load_mnist
from amsgrad.experiments.realdata.models import build_model
from amsgrad.experiments.realdata.training import TrainConfig, TrainResult, evaluation_sets, prepare, train

from .files import write_mnist


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    write_mnist(folder, train=600, test=100, learnable=True)
    return prepare(load_mnist(folder))


def test_learns_and_records_every_eval_step(data):
    result = train(TrainConfig("mlp", "amsgrad", lr=3e-3, beta2=0.999, steps=60, eval_every=20), data)
    h = result.history
    assert h["step"] == [0, 20, 40, 60] and result.completed and result.steps_done == 60
    assert all(len(v) == 4 for v in h.values())
    assert math.isnan(h["batch_loss"][0]) and h["batch_loss"][-1] < h["batch_loss"][1]
    assert h["train_loss"][-1] < 0.5 * h["train_loss"][0] and h["test_accuracy"][-1] > 0.9
    assert 0 < result.step_seconds <= result.seconds


@pytest.mark.parametrize("model", ["logreg", "cifarnet"])
def test_same_seed_same_numbers_and_global_rng_untouched(data, model):
    config = TrainConfig(model, "adam", lr=1e-3, beta2=0.99, seed=3, steps=4, eval_every=2, eval_size=20)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = train(config, data)
    assert torch.equal(torch.get_rng_state(), before)
    second = train(config, data)
    assert first.history == second.history
    other = train(TrainConfig(model, "adam", lr=1e-3, beta2=0.99, seed=4, steps=4, eval_every=2, eval_size=20), data)
    assert other.history["train_loss"] != first.history["train_loss"]


def _plain_loop(config: TrainConfig, data):
    """The same run written by hand, as a user would: the numbers must be the harness's."""
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.shape)
    optimizer = amsgrad.AMSGrad(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: (k + 1) ** -0.5)
    order = torch.Generator().manual_seed(config.seed)
    n, b = len(data.train_y), config.batch_size
    permutation, position = torch.randperm(n, generator=order), 0
    for _ in range(config.steps):
        if position + b > n:
            permutation, position = torch.randperm(n, generator=order), 0
        index = permutation[position : position + b]
        position += b
        optimizer.zero_grad()
        F.cross_entropy(model(data.train_x[index]), data.train_y[index]).backward()
        optimizer.step()
        scheduler.step()
    with torch.no_grad():
        return F.cross_entropy(model(data.test_x), data.test_y).item()


def test_equals_a_plain_loop_with_the_inverse_sqrt_schedule(data):
    config = TrainConfig("logreg", "amsgrad", lr=0.05, beta2=0.99, seed=1, steps=13, eval_every=13)
    assert config.resolved_schedule == "inv-sqrt"  # the paper's α/√t for logistic regression
    result = train(config, data)  # 13 steps of 128 over 600 examples: three epochs
    assert result.history["test_loss"][-1] == pytest.approx(_plain_loop(config, data), rel=1e-6)


def test_should_stop_returns_what_was_done(data):
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > 7

    progress = []
    result = train(TrainConfig("logreg", "adam", lr=0.01, beta2=0.999, steps=100, eval_every=5), data, should_stop=should_stop, on_progress=lambda step, values: progress.append((step, values["test_loss"])))
    assert not result.completed and result.steps_done == 7
    assert result.history["step"] == [0, 5, 7]  # the point where it stopped is recorded
    assert [s for s, _ in progress] == [0, 5, 7] and progress[-1][1] == result.final("test_loss")
    assert result.summary()["completed"] is False and result.summary()["steps_done"] == 7


def test_result_round_trips_through_a_dict(data):
    result = train(TrainConfig("mlp", "amsgrad-corrected", lr=0.01, beta2=0.99, steps=3, eval_every=1), data)
    again = TrainResult.from_dict(result.to_dict())
    assert again.config == result.config and again.history == result.history and again.dataset == result.dataset
    assert result.dataset["fingerprint"] == data.fingerprint


def test_evaluation_sets_are_the_same_for_every_run(data):
    (train_x, train_y), (test_x, test_y) = evaluation_sets(data, 50)
    (again_x, _), _ = evaluation_sets(data, 50)
    assert torch.equal(train_x, again_x) and len(train_y) == 50 and torch.equal(test_x, data.test_x[:50])
    assert not torch.equal(train_x, data.train_x[:50])  # a random subset, not the first images
    (_, all_train_y), (_, all_test_y) = evaluation_sets(data, None)
    assert len(all_test_y) == len(data.test_y) == len(all_train_y)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": "resnet"}, "model must be one of logreg, mlp, cifarnet, got 'resnet'"),
        ({"optimizer": "sgd"}, "unknown optimizer 'sgd'"),
        ({"lr": -1.0}, "lr must be a finite number > 0, got -1.0"),
        ({"beta2": 1.0}, "betas must be two numbers in [0, 1)"),
        ({"steps": 0}, "steps must be an integer >= 1, got 0"),
        ({"eval_size": 0}, "eval_size must be None or an integer >= 1, got 0"),
        ({"schedule": "cosine"}, "unknown schedule 'cosine'"),
    ],
)
def test_bad_config(changes, message):
    values = {"model": "logreg", "optimizer": "adam", "lr": 0.1, "beta2": 0.99, **changes}
    with pytest.raises(ValueError) as error:
        TrainConfig(**values)
    assert message in str(error.value)


def test_batch_larger_than_the_data(data):
    with pytest.raises(ValueError, match="batch_size 1000 exceeds the 600 training examples"):
        train(TrainConfig("logreg", "adam", lr=0.1, beta2=0.99, steps=1, batch_size=1000), data)
