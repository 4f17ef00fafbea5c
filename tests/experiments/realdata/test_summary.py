"""Choosing the best grid point, mean ± std over seeds, and the Figure-2-style plot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from amsgrad.experiments.realdata.plots import plot_losses
from amsgrad.experiments.realdata.summary import best_points, grid_points, results_document, results_table
from amsgrad.experiments.realdata.training import TrainConfig, TrainResult

PNG = b"\x89PNG\r\n\x1a\n"


def _run(optimizer, lr, seed, final_train, final_test=1.0, completed=True):
    config = TrainConfig("mlp", optimizer, lr=lr, beta2=0.99, seed=seed, steps=20, eval_every=10)
    history = {
        "step": [0, 10, 20],
        "train_loss": [2.3, (2.3 + final_train) / 2, final_train],
        "test_loss": [2.3, 2.0, final_test],
        "train_accuracy": [0.1, 0.5, 0.9],
        "test_accuracy": [0.1, 0.5, 0.8 + seed / 100],
        "batch_loss": [math.nan, 1.0, 0.5],
    }
    return TrainResult(config, history, completed=completed, steps_done=20 if completed else 10)


def _grid():
    return [
        _run("adam", 0.1, 0, 0.50), _run("adam", 0.1, 1, 0.70),  # mean 0.60
        _run("adam", 0.01, 0, 0.40), _run("adam", 0.01, 1, 0.44),  # mean 0.42: best
        _run("amsgrad", 0.1, 0, math.nan), _run("amsgrad", 0.1, 1, 0.1),  # diverged once: never best
        _run("amsgrad", 0.01, 0, 0.30), _run("amsgrad", 0.01, 1, 0.34),
        _run("amsgrad", 0.001, 0, 0.2), _run("amsgrad", 0.001, 1, 0.2, completed=False),  # unfinished
    ]


def test_best_point_is_lowest_mean_final_training_loss_among_finished_finite_points():
    best = best_points(_grid())
    assert [(p.optimizer, p.lr) for p in best] == [("adam", 0.01), ("amsgrad", 0.01)]
    mean, std = best[0].final("train_loss")
    assert mean == pytest.approx(0.42) and std == pytest.approx(np.std([0.40, 0.44], ddof=1))
    assert [(p.optimizer, p.lr) for p in best_points(_grid(), select="test_accuracy")][0] == ("adam", 0.1)
    assert len(grid_points(_grid())) == 5
    with pytest.raises(ValueError, match="select must be one of"):
        best_points(_grid(), select="step")


def test_curve_is_mean_and_std_over_seeds():
    point = best_points(_grid())[1]
    steps, mean, std = point.curve("train_loss")
    assert steps.tolist() == [0, 10, 20]
    np.testing.assert_allclose(mean, [2.3, (2.6 + 2.64) / 4, 0.32])
    np.testing.assert_allclose(std[-1], np.std([0.30, 0.34], ddof=1))


def test_document_and_table():
    document = results_document(_grid())
    rows = {r["optimizer"]: r for r in document["results"]}
    assert rows["amsgrad"]["lr"] == 0.01 and rows["amsgrad"]["seeds"] == [0, 1]
    assert {"optimizer", "final_train_loss", "final_test_loss", "final_train_accuracy", "final_test_accuracy", "final_test_accuracy_std"} <= set(rows["adam"])
    assert rows["adam"]["final_test_accuracy"] == pytest.approx(0.805)
    diverged = [g for g in document["grid"] if g["optimizer"] == "amsgrad" and g["lr"] == 0.1][0]
    assert diverged["final_train_loss"] is None  # NaN is not JSON
    table = results_table(_grid()).splitlines()
    assert table[0].split() == ["optimizer", "best", "lr", "beta2", "seeds", "train", "loss", "test", "loss", "train", "acc", "%", "test", "acc", "%"]
    assert table[2].split()[:8] == ["Adam", "0.01", "0.99", "2", "0.4200", "±", "0.0283", "1.0000"]
    assert "80.50 ± 0.71" in table[2]


def test_plot_png_and_vector(tmp_path):
    saved = plot_losses(_grid(), [tmp_path / "f.png", tmp_path / "f.pdf", tmp_path / "f.svg"], title="mlp")
    assert (tmp_path / "f.png").read_bytes().startswith(PNG)
    assert (tmp_path / "f.pdf").read_bytes().startswith(b"%PDF")
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()[:500] and len(saved) == 3
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_losses([_run("adam", 0.1, 0, 0.5, completed=False)], [tmp_path / "g.png"])


def test_a_stopped_grid_is_reported_with_how_far_it_got():
    stopped = [_run("adam", 0.1, 0, 0.5, completed=False), _run("amsgrad", 0.1, 0, 0.4, completed=False)]
    assert best_points(stopped) == []
    table = results_table(stopped).splitlines()
    assert table[0].split()[-2:] == ["steps", "done"] and table[2].split()[-1] == "10" and table[3].startswith("AMSGrad")
