"""The figures: drawn from every step (no aliasing), legends off the curves, heatmaps inside the
β range with labelled edges, PNG/SVG/PDF, and re-drawn from the run folder's figure.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from amsgrad.experiments import Settings, make_problem, simulate, variant
from amsgrad.experiments.plotting import (
    FIGURE_DATA,
    _sweep_figure,
    _synthetic_figure,
    load_figure_data,
    plot_sweep,
    plot_synthetic,
    redraw,
    sweep_figure,
    synthetic_figure,
)
from amsgrad.experiments.sweep import default_beta1s, default_beta2s, sweep

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "svg": b"<?xml", "pdf": b"%PDF"}
NAMES = ("adam", "amsgrad", "adamnc", "adamx")


@pytest.fixture(scope="module")
def runs():
    return [simulate(make_problem("online"), variant(name), Settings(), 200_000) for name in NAMES]


@pytest.fixture(scope="module")
def swept():
    return sweep(make_problem("online"), [variant("adam"), variant("adamnc")], Settings(), 20_000, default_beta1s(5), default_beta2s(4))


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_each_curve_is_drawn_from_every_step_and_has_its_own_line_style(runs):
    figure = _synthetic_figure(synthetic_figure(runs))
    ax_x, ax_regret = figure.axes
    lines = [line for line in ax_x.get_lines() if line.get_label() in {r.variant.label for r in runs}]
    assert [line.get_label() for line in lines] == [r.variant.label for r in runs]
    dashes = {str(line._unscaled_dash_pattern) for line in lines}  # matplotlib names every custom dash "--"
    assert len(dashes) == len(runs)
    assert len({line.get_color() for line in lines}) == len(runs)
    for line, r in zip(lines, runs):
        # one point per log-spaced bin of steps (the mean of every step in it), not the trace's samples
        np.testing.assert_array_equal(line.get_ydata(), r.envelope.x_mean)
        assert line.get_xdata()[0] == 1 and len(line.get_xdata()) == len(r.envelope) != len(r.trace)


def test_the_legend_covers_no_curve(runs, swept):
    for figure in (_synthetic_figure(synthetic_figure(runs)), _sweep_figure(sweep_figure(swept), "final_x")):
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        [legend] = figure.legends
        box = legend.get_window_extent(renderer)
        assert not any(_overlaps(box, ax.get_window_extent(renderer)) for ax in figure.axes)


def test_heatmap_cells_stay_inside_the_beta_range_and_its_edges_are_labelled(swept):
    figure = _sweep_figure(sweep_figure(swept), "final_x")
    beta1s, beta2s = swept.beta1s, swept.beta2s
    for ax in figure.axes[:2]:
        assert ax.get_ylim() == (beta1s[0], beta1s[-1])  # β1 from 0 to 0.99, nothing above 1
        low, high = ax.get_xlim()
        assert (1 - 10**-low, 1 - 10**-high) == pytest.approx((beta2s[0], beta2s[-1]), abs=1e-12)
        [mesh] = ax.collections
        coordinates = mesh.get_coordinates()
        assert coordinates[..., 1].min() == beta1s[0] and coordinates[..., 1].max() == beta1s[-1]
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels[0] == f"{beta2s[0]:.6g}" and labels[-1] == f"{beta2s[-1]:.6g}"
    y_labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert y_labels[0] == "0" and y_labels[-1] == "0.99"
    assert "unused" in figure.axes[1].get_title()  # AdamNC's β2,t = 1 - 1/t


@pytest.mark.parametrize("image_format", ["png", "svg", "pdf"])
def test_a_run_folder_is_redrawn_in_any_format_from_its_figure_data(runs, tmp_path, image_format):
    plot = plot_synthetic(runs, tmp_path / "synthetic.png")
    assert (tmp_path / FIGURE_DATA).exists()
    again = redraw(tmp_path, "png", out=tmp_path / "again.png")
    assert again.read_bytes() == plot.read_bytes()  # the saved data is all the figure needs
    drawn = redraw(tmp_path, image_format, dpi=80)
    assert drawn == tmp_path / f"synthetic.{image_format}" and drawn.read_bytes().startswith(MAGIC[image_format])
    assert redraw(tmp_path, image_format, dpi=80, out=tmp_path / f"copy.{image_format}").read_bytes() == drawn.read_bytes()


def test_a_sweep_is_redrawn_with_either_metric(swept, tmp_path):
    plot_sweep(swept, tmp_path / "sweep.pdf", "average_regret")
    data = load_figure_data(tmp_path)
    assert data["kind"] == "sweep" and data["metric"] == "average_regret"
    assert np.array(data["results"][0]["final_x"]).shape == (5, 4)
    assert redraw(tmp_path, "png", metric="final_x").read_bytes().startswith(MAGIC["png"])


def test_the_figure_data_is_small_and_plain_json(tmp_path):
    long_run = [simulate(make_problem("online"), variant("amsgrad"), Settings(), 10_000_000, record_every=0)]
    plot_synthetic(long_run, tmp_path / "synthetic.png")
    text = (tmp_path / FIGURE_DATA).read_text()
    assert len(text) < 100_000  # 361 bins, whatever the number of steps
    assert json.loads(text)["runs"][0]["envelope"]["last"][-1] == 10_000_000


def test_a_stopped_run_and_a_stopped_sweep_say_so(tmp_path):
    stopped = simulate(make_problem("online"), variant("adam"), Settings(), 100_000, should_stop=iter([False, True]).__next__, chunk_steps=30_000)
    figure = _synthetic_figure(synthetic_figure([stopped]))
    assert "stopped at t = 30,000" in figure.legends[0].get_texts()[0].get_text()
    calls = iter([False, False, True])
    partial = sweep(make_problem("online"), [variant("adam"), variant("amsgrad")], Settings(), 50_000, default_beta1s(2), default_beta2s(2),
                    chunk_steps=10_000, should_stop=lambda: next(calls))
    figure = _sweep_figure(sweep_figure(partial), "final_x")
    assert len(figure.axes) == 2  # Adam's panel and the colour bar: AMSGrad never started
    assert "stopped at t = 20,000" in figure.axes[0].get_title()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda folder: redraw(folder, "jpg"), "format must be one of png, svg, pdf"),
        (lambda folder: redraw(folder / "nothing"), "has no figure.json"),
        (lambda folder: redraw(folder, "png", dpi=0), "dpi must be a number in [10, 2400]"),
        (lambda folder: redraw(folder, "png", metric="final_x"), "metric applies to a sweep"),
    ],
)
def test_bad_requests_are_refused_in_one_sentence(runs, tmp_path, call, message):
    plot_synthetic(runs[:1], tmp_path / "synthetic.png")
    with pytest.raises(ValueError) as caught:
        call(tmp_path)
    assert message in str(caught.value)


def test_a_damaged_figure_file_is_named(runs, tmp_path):
    plot_synthetic(runs[:1], tmp_path / "synthetic.png")
    data = json.loads((tmp_path / FIGURE_DATA).read_text())
    del data["runs"][0]["envelope"]["x_std"]
    (tmp_path / FIGURE_DATA).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"is incomplete: no runs\[0\]\.envelope\.x_std"):
        redraw(tmp_path)
