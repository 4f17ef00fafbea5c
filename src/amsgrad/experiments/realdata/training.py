r"""One training run as a pure function: a :class:`TrainConfig` and the data in, histories out.

:func:`train` trains one model with one optimizer of the library at one grid point (α, β2)
and one seed, with the paper's protocol: minibatches of 128 drawn without replacement
(reshuffled every epoch), cross-entropy loss, β1 = 0.9, and the model's step-size schedule
(α/√t for logistic regression, constant otherwise; :data:`~.models.MODELS`).

Every ``eval_every`` steps (and at the first and last) it records, in evaluation mode
(no dropout), the loss and accuracy on a fixed subset of the training set and on the test
set, and the mean minibatch loss since the last record. The subset is the same for every
run, so runs are compared on the same examples.

The same config gives the same numbers (the seed fixes the initial weights, the batch order
and the dropout masks; the global RNG is restored afterwards), given the same number of
torch threads. ``should_stop()`` is asked between steps: a run told to stop records where it
is and returns, marked incomplete. ``on_progress(step, record)`` is called at every record.

The harness adds nothing to a step that a hand-written loop would not do: the data are
float32 tensors before the first step, a batch is one ``index_select``, ``lr`` is set on the
param group (no scheduler object), and no Python float is read from the loss between records.
``python -m benchmarks train_step`` measures a step against a plain PyTorch loop.

>>> from amsgrad.experiments.realdata.data import Dataset
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> data = Dataset("mnist", rng.integers(0, 256, (512, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, 512),
...                rng.integers(0, 256, (64, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, 64), "random")
>>> result = train(TrainConfig("logreg", "amsgrad", lr=0.01, beta2=0.99, steps=20, eval_every=10), data)
>>> result.history["step"], result.completed
([0, 10, 20], True)
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

from ..variants import VARIANTS, Settings, variant
from .models import MODELS, build_model

__all__ = ["TrainConfig", "TrainResult", "Prepared", "train", "prepare", "evaluation_sets", "HISTORY_KEYS"]

#: The series a run records, one value per record.
HISTORY_KEYS = ("step", "train_loss", "test_loss", "train_accuracy", "test_accuracy", "batch_loss")


@dataclass(frozen=True)
class TrainConfig:
    """One run: a model, an optimizer at one grid point, a seed, and the protocol's details.

    Attributes:
        model: a key of :data:`~.models.MODELS` (``logreg``, ``mlp``, ``cifarnet``).
        optimizer: a key of :data:`amsgrad.experiments.variants.VARIANTS` (``adam``, ``amsgrad``, …).
        lr: α (the first step's size under α/√t).
        beta2: β2.
        seed: initial weights, batch order and dropout.
        steps: optimizer steps (minibatches).
        beta1: β1 (the paper: 0.9).
        eps: ε̂ of the library's update (``optimized_update=True``), as TensorFlow's Adam
            applies its ``epsilon``; 1e-8 is TensorFlow's and Keras's default.
        batch_size: the paper's 128.
        kernel_size: CIFARNET's convolution kernels (6 the paper's, 5 TF-slim's).
        schedule: ``None`` for the model's (:data:`~.models.MODELS`), or ``constant``/``inv-sqrt``.
        eval_every: steps between records (``None``: ``steps // 50``, at least 1).
        eval_size: at most this many training and test examples are evaluated (``None``: all
            the test set and as many training examples).
    """

    model: str
    optimizer: str
    lr: float
    beta2: float
    seed: int = 0
    steps: int = 5000
    beta1: float = 0.9
    eps: float = 1e-8
    batch_size: int = 128
    kernel_size: int = 6
    schedule: str | None = None
    eval_every: int | None = None
    eval_size: int | None = None

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        variant(self.optimizer)  # a ValueError that lists the names
        for name in ("seed",):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "kernel_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("eval_every", "eval_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
        self.settings()  # checks lr, betas, eps and schedule

    @property
    def resolved_schedule(self) -> str:
        return self.schedule or MODELS[self.model].schedule

    @property
    def record_every(self) -> int:
        return self.eval_every or max(1, self.steps // 50)

    def settings(self) -> Settings:
        """The optimizer's hyperparameters, as the synthetic experiments spell them."""
        return Settings(lr=self.lr, betas=(self.beta1, self.beta2), eps=self.eps, optimized_update=True, schedule=self.resolved_schedule)

    @property
    def grid_point(self) -> tuple[str, float, float]:
        """What a grid search chooses among: (optimizer, α, β2)."""
        return (self.optimizer, self.lr, self.beta2)

    @property
    def label(self) -> str:
        return f"{VARIANTS[self.optimizer].label} lr={self.lr:g} beta2={self.beta2:g} seed={self.seed}"

    def key(self) -> str:
        """A file name that identifies this run: readable, with a hash of every field."""
        digest = hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.model}-{self.optimizer}-lr{self.lr:g}-b2{self.beta2:g}-seed{self.seed}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class TrainResult:
    """What one run recorded.

    Attributes:
        config: the run's configuration.
        history: lists keyed by :data:`HISTORY_KEYS`; ``history["step"][i]`` is the step of
            record i (0 is before the first step).
        completed: False if the run was stopped before ``config.steps``.
        steps_done: optimizer steps taken.
        seconds: wall time of the training loop, records included.
        step_seconds: wall time of the steps alone (records excluded).
        dataset: the data set's fingerprint and description.
    """

    config: TrainConfig
    history: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
    completed: bool = True
    steps_done: int = 0
    seconds: float = 0.0
    step_seconds: float = 0.0
    dataset: dict[str, str] = field(default_factory=dict)

    def final(self, key: str) -> float:
        values = self.history[key]
        return values[-1] if values else math.nan

    def summary(self) -> dict[str, Any]:
        """The final values, for tables and JSON."""
        return {
            "optimizer": self.config.optimizer,
            "lr": self.config.lr,
            "beta2": self.config.beta2,
            "seed": self.config.seed,
            **{f"final_{k}": self.final(k) for k in HISTORY_KEYS if k != "step"},
            "steps_done": self.steps_done,
            "completed": self.completed,
            "seconds": round(self.seconds, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; a value that is not finite (a diverged loss) becomes None."""
        return {
            "config": self.config.to_dict(),
            "history": {k: [v if v is None or math.isfinite(v) else None for v in values] for k, values in self.history.items()},
            "completed": self.completed,
            "steps_done": self.steps_done,
            "seconds": self.seconds,
            "step_seconds": self.step_seconds,
            "dataset": self.dataset,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainResult:
        return cls(
            config=TrainConfig.from_dict(values["config"]),
            history={k: [math.nan if v is None else v for v in values["history"].get(k, [])] for k in HISTORY_KEYS},
            completed=bool(values["completed"]),
            steps_done=int(values["steps_done"]),
            seconds=float(values["seconds"]),
            step_seconds=float(values.get("step_seconds", 0.0)),
            dataset=dict(values.get("dataset", {})),
        )


@dataclass(frozen=True)
class Prepared:
    """A data set as the training loop reads it: float32 images and int64 labels, as tensors."""

    train_x: Any
    train_y: Any
    test_x: Any
    test_y: Any
    shape: tuple[int, int, int]
    fingerprint: str
    description: str


def prepare(data) -> Prepared:
    """The data set's tensors, made once and shared by every run that uses them."""
    train_x, train_y, test_x, test_y = data.tensors()
    return Prepared(train_x, train_y, test_x, test_y, tuple(data.shape), data.fingerprint(), data.describe())


def evaluation_sets(prepared: Prepared, eval_size: int | None):
    """The examples every record evaluates: a fixed random subset of the training set (seed 0,
    the same for every run) as large as the test part, and the first ``eval_size`` test examples."""
    import torch

    size = min(len(prepared.test_y), eval_size) if eval_size else len(prepared.test_y)
    n = len(prepared.train_y)
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: min(size, n)]
    return (prepared.train_x[chosen], prepared.train_y[chosen]), (prepared.test_x[:size], prepared.test_y[:size])


def _evaluate(model, x, y, batch: int = 2000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y), in evaluation mode, in batches."""
    import torch
    import torch.nn.functional as F

    model.eval()
    loss = torch.zeros((), dtype=torch.float64)
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(y), batch):
            logits = model(x[i : i + batch])
            loss += F.cross_entropy(logits, y[i : i + batch], reduction="sum").double()
            correct += int((logits.argmax(dim=1) == y[i : i + batch]).sum())
    model.train()
    return float(loss) / len(y), correct / len(y)


def train(
    config: TrainConfig,
    data,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``data`` (a :class:`~.data.Dataset` or :func:`prepare`'s result).

    Returns the recorded histories; ``completed`` is False when ``should_stop()`` said so.
    """
    import torch
    import torch.nn.functional as F

    prepared = data if isinstance(data, Prepared) else prepare(data)
    (eval_train_x, eval_train_y), (eval_test_x, eval_test_y) = evaluation_sets(prepared, config.eval_size)
    result = TrainResult(config, dataset={"fingerprint": prepared.fingerprint, "description": prepared.description})
    history = result.history
    settings = config.settings()
    inv_sqrt = settings.schedule == "inv-sqrt"
    every = config.record_every
    n, batch = len(prepared.train_y), config.batch_size
    if batch > n:
        raise ValueError(f"batch_size {batch} exceeds the {n} training examples")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.model, prepared.shape, config.kernel_size)
        optimizer = VARIANTS[config.optimizer].make_optimizer(model.parameters(), settings)
        group = optimizer.param_groups[0]
        order = torch.Generator().manual_seed(config.seed)
        train_x, train_y = prepared.train_x, prepared.train_y
        permutation, position = torch.randperm(n, generator=order), 0
        batch_losses = torch.zeros((), dtype=torch.float64)
        since_record = 0

        def record(step: int) -> None:
            nonlocal batch_losses, since_record
            train_loss, train_accuracy = _evaluate(model, eval_train_x, eval_train_y)
            test_loss, test_accuracy = _evaluate(model, eval_test_x, eval_test_y)
            values = {
                "train_loss": train_loss,
                "test_loss": test_loss,
                "train_accuracy": train_accuracy,
                "test_accuracy": test_accuracy,
                "batch_loss": float(batch_losses) / since_record if since_record else math.nan,
            }
            history["step"].append(step)
            for key, value in values.items():
                history[key].append(value)
            batch_losses, since_record = torch.zeros((), dtype=torch.float64), 0
            if on_progress is not None:
                on_progress(step, values)

        model.train()
        started = time.perf_counter()
        record_seconds = 0.0
        record(0)
        record_seconds += time.perf_counter() - started
        step = 0
        while step < config.steps:
            if should_stop is not None and should_stop():
                result.completed = False
                break
            if position + batch > n:  # a new epoch; the last partial batch is dropped
                permutation, position = torch.randperm(n, generator=order), 0
            index = permutation[position : position + batch]
            position += batch
            step += 1
            if inv_sqrt:
                group["lr"] = settings.lr / math.sqrt(step)
            loss = F.cross_entropy(model(train_x.index_select(0, index)), train_y.index_select(0, index))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            batch_losses += loss.detach()
            since_record += 1
            if step % every == 0 or step == config.steps:
                began = time.perf_counter()
                record(step)
                record_seconds += time.perf_counter() - began
        if not result.completed and (not history["step"] or history["step"][-1] != step):
            began = time.perf_counter()
            record(step)
            record_seconds += time.perf_counter() - began
        result.seconds = time.perf_counter() - started
        result.step_seconds = result.seconds - record_seconds
        result.steps_done = step
    return result


def measure(config: TrainConfig, data, steps: int = 3) -> tuple[float, float]:
    """Seconds per step and per record of ``config`` here, from a few real ones (after one to warm up).

    For a cost estimate before a grid starts: a run costs about
    ``config.steps * step + (config.steps // config.record_every + 1) * record``.
    """
    import dataclasses

    prepared = data if isinstance(data, Prepared) else prepare(data)
    probe = dataclasses.replace(config, steps=steps + 1, eval_every=steps + 1)
    warm = dataclasses.replace(probe, steps=1, eval_every=1)
    train(warm, prepared)
    result = train(probe, prepared)
    records = len(result.history["step"])
    return result.step_seconds / probe.steps, (result.seconds - result.step_seconds) / records
