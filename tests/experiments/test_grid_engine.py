"""The grid engine, the new algorithms of the fast engine, and the per-bin envelopes.

* Every cell of a grid run by the grid engine ends bit for bit where the scalar fast engine
  ends alone: every variant, setting, schedule, update form and β1 decay, on grids whose
  corrections settle during the run and on grids whose corrections do not.
* AdamNC, AdamX and β1 decay follow their formulas (an independent float64 loop, 1e-10), AdamX
  with a constant β1 is the paper's AMSGrad (Algorithm 2) bit for bit, and AdamNC with β1 = 0
  and α_t = α/√t is Adagrad.
* The envelope the compiled loop keeps equals the readable numpy one, whatever the chunks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from amsgrad.experiments import SCHEDULES, SETTINGS, VARIANTS, Settings, make_problem, simulate, variant
from amsgrad.experiments.envelope import EnvelopeBuilder, bin_edges
from amsgrad.experiments.fast_engine import FastRun
from amsgrad.experiments.grid_engine import LANES, MAX_CHUNK_STEPS, GridRun, chunk_steps_for, inspect_vectorisation
from amsgrad.experiments.problems import gradients
from amsgrad.experiments.sweep import SweepInterrupted, default_beta1s, default_beta2s, sweep

from . import reference

# β1 from 0, β2 to 0.9999: the corrections of the larger β2 never round to 1 within the run.
WIDE = (np.array([0.0, 0.5, 0.9, 0.99]), default_beta2s(5))
# β2 <= 0.99, β1 <= 0.9: every correction rounds to 1 after ~3,700 steps, so the run ends in
# the loop that a long sweep spends its time in.
SETTLING = (np.array([0.0, 0.3, 0.9]), np.array([0.5, 0.9, 0.99]))
STEPS = 6000
CHUNKS = (1000, 2345, 2655)  # uneven, to cross chunk boundaries

CONFIGS = [(name, schedule, optimized, decay) for name in VARIANTS for schedule in SCHEDULES for optimized in (True, False) for decay in (1.0, 0.999)]


def _settings(schedule: str, optimized: bool, decay: float, betas=(0.9, 0.99)) -> Settings:
    return Settings(lr=0.05, betas=betas, schedule=schedule, optimized_update=optimized, beta1_decay=decay)


def _assert_cells_equal_scalar_runs(problem, v, settings, beta1s, beta2s, chunks=CHUNKS):
    grid = GridRun(problem, v, settings, beta1s, beta2s)
    for n in chunks:
        grid.advance(n)
    state = grid.state()
    for i, beta1 in enumerate(beta1s):
        for j, beta2 in enumerate(beta2s):
            alone = FastRun(problem, v, Settings(**{**settings.__dict__, "betas": (float(beta1), float(beta2))}))
            alone.advance(sum(chunks), 0)
            where = f"{problem.setting}, beta1 {beta1:g}, beta2 {beta2:g}"
            assert state["x"][i, j] == alone.x, where
            assert state["regret_sum"][i, j] == alone.regret_sum, where
            for key, index in (("m", 1), ("v", 2), ("v_max", 3)):
                assert state[key][i, j] == alone._state[index], f"{key}, {where}"


@pytest.mark.parametrize("config", CONFIGS, ids=["-".join(map(str, c)) for c in CONFIGS])
def test_every_cell_equals_the_scalar_engine_bit_for_bit(config):
    name, schedule, optimized, decay = config
    settings = _settings(schedule, optimized, decay)
    for setting in SETTINGS:
        problem = make_problem(setting, seed=5)
        for beta1s, beta2s in (WIDE, SETTLING):
            _assert_cells_equal_scalar_runs(problem, variant(name), settings, beta1s, beta2s)


@pytest.mark.parametrize("name", ["amsgrad", "adamx"])
def test_columns_longer_than_a_block_are_split_and_still_exact(name):
    beta1s = np.linspace(0.0, 0.95, LANES + 44)  # one column, two blocks
    settings = _settings("inv-sqrt", True, 0.999)
    _assert_cells_equal_scalar_runs(make_problem("stochastic", seed=1), variant(name), settings, beta1s, np.array([0.9, 0.999]), chunks=(700, 1300))


def test_a_chunk_is_split_to_bound_the_step_tables():
    assert chunk_steps_for(1) == MAX_CHUNK_STEPS and chunk_steps_for(10**9) == 1
    problem, v, settings = make_problem("online"), variant("amsgrad"), Settings()
    whole = GridRun(problem, v, settings, [0.9], [0.99])
    whole.advance(MAX_CHUNK_STEPS + 5)  # two kernel calls
    pieces = GridRun(problem, v, settings, [0.9], [0.99])
    for n in (5, MAX_CHUNK_STEPS):
        pieces.advance(n)
    assert whole.t == pieces.t == MAX_CHUNK_STEPS + 5
    assert whole.final_x.tolist() == pieces.final_x.tolist()


def test_adamnc_runs_one_column_and_repeats_it():
    run = GridRun(make_problem("online"), variant("adamnc"), Settings(), [0.0, 0.9], [0.5, 0.9, 0.999])
    run.advance(2000)
    assert run.cells == 2  # β2,t = 1 - 1/t: β2 does not matter
    x = run.final_x
    assert x.shape == (2, 3) and (x == x[:, :1]).all()


def test_the_hot_loops_are_vectorised():
    # The loops over cells compile to packed (SIMD) square roots, divisions and FMAs.
    for loop, widths in inspect_vectorisation().items():
        for op in ("sqrt", "fdiv", "fma"):
            assert widths[op] and min(widths[op]) >= 2, (loop, op, widths)


# ---------------------------------------------------------------------- the new algorithms
FORMULA_CONFIGS = [
    ("adamnc", "constant", True, 1.0),
    ("adamnc", "inv-sqrt", True, 0.99),
    ("adamx", "constant", True, 1.0),
    ("adamx", "inv-sqrt", True, 0.99),
    ("adamx", "constant", False, 0.995),
    ("adam", "constant", True, 0.99),
    ("adam", "inv-sqrt", False, 0.99),
    ("amsgrad", "constant", True, 0.99),
    ("amsgrad", "inv-sqrt", False, 0.995),
    ("amsgrad-corrected", "constant", True, 0.99),
    ("amsgrad-paper", "inv-sqrt", True, 0.99),
]


@pytest.mark.parametrize("config", FORMULA_CONFIGS, ids=["-".join(map(str, c)) for c in FORMULA_CONFIGS])
@pytest.mark.parametrize("setting", ["online", "stochastic"])
def test_the_fast_engine_follows_the_formulas(config, setting):
    # β1,t = β1 λ^(t-1); the first-moment correction 1 - ∏_{k<=t} β1,k (the engine computes it
    # as 1 - β1^t λ^(t(t-1)/2)); AdamNC's β2,t = 1 - 1/t; AdamX's rescaled maximum.
    name, schedule, optimized, decay = config
    problem = make_problem(setting, seed=3)
    settings = _settings(schedule, optimized, decay)
    xs, averages = reference.run(problem, variant(name), settings, 3000)
    trace = FastRun(problem, variant(name), settings).advance(3000, 1)
    np.testing.assert_allclose(trace.x, xs, rtol=0, atol=1e-10)
    np.testing.assert_allclose(trace.average_regret, averages, rtol=0, atol=1e-10)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_adamx_with_a_constant_beta1_is_amsgrad_algorithm_2(schedule, setting):
    # ((1 - β1)/(1 - β1))² = 1 exactly, so v̂_t = max(v̂_{t-1}, v_t): the paper's Algorithm 2.
    problem, settings = make_problem(setting, seed=2), Settings(schedule=schedule)
    adamx = FastRun(problem, variant("adamx"), settings)
    paper = FastRun(problem, variant("amsgrad-paper"), settings)
    for run in (adamx, paper):
        run.advance(50_000, 0)
    assert adamx.x == paper.x and adamx.regret_sum == paper.regret_sum
    grids = [GridRun(problem, variant(name), settings, *WIDE) for name in ("adamx", "amsgrad-paper")]
    for grid in grids:
        grid.advance(20_000)
    assert (grids[0].final_x == grids[1].final_x).all()


def test_adamx_with_a_decaying_beta1_differs_from_amsgrad():
    problem, settings = make_problem("online"), Settings(beta1_decay=0.999)
    adamx = simulate(problem, variant("adamx"), settings, 100_000, record_every=0)
    paper = simulate(problem, variant("amsgrad-paper"), settings, 100_000, record_every=0)
    assert adamx.final_x != paper.final_x


@pytest.mark.parametrize("setting", ["online", "stochastic"])
def test_adamnc_with_beta1_zero_and_inverse_sqrt_steps_is_adagrad(setting):
    # v_t = (1/t) Σ g², so α/√t · g/√v_t = α g / √(Σ g²): Adagrad with step size α (ε = 0).
    problem, alpha = make_problem(setting, seed=4), 0.3
    settings = Settings(lr=alpha, betas=(0.0, 0.99), eps=0.0, schedule="inv-sqrt")
    trace = FastRun(problem, variant("adamnc"), settings).advance(5000, 1)
    x, total, expected = 0.0, 0.0, []
    for g in gradients(problem, 1, 5000).tolist():
        expected.append(x)
        total += g * g
        x = min(max(x - alpha * g / math.sqrt(total), -1.0), 1.0)
    np.testing.assert_allclose(trace.x, expected, rtol=0, atol=1e-12)


def test_beta1_decay_one_is_a_constant_beta1():
    problem = make_problem("stochastic", seed=6)
    for name in ("adam", "amsgrad", "adamx"):
        plain = simulate(problem, variant(name), Settings(), 20_000, record_every=0)
        decayed = simulate(problem, variant(name), Settings(beta1_decay=1.0), 20_000, record_every=0)
        assert plain.final_x == decayed.final_x and plain.average_regret == decayed.average_regret


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5, float("nan"), True, "0.9"])
def test_settings_refuse_a_bad_beta1_decay(decay):
    with pytest.raises(ValueError, match=r"beta1_decay must be a number in \(0, 1\]"):
        Settings(beta1_decay=decay)


# ---------------------------------------------------------------------- envelopes
@pytest.mark.parametrize("name", ["adam", "amsgrad", "adamx"])
def test_the_compiled_envelope_equals_the_readable_one(name):
    problem, settings = make_problem("online"), Settings(schedule="inv-sqrt")
    run = FastRun(problem, variant(name), settings)
    trace = run.advance(30_000, 1)
    builder = EnvelopeBuilder()
    for lo in range(0, 30_000, 7000):  # fed in pieces that cut through bins
        builder.add(lo + 1, trace.x[lo : lo + 7000], trace.average_regret[lo : lo + 7000])
    fast, readable = run.envelope(), builder.envelope()
    assert fast.first.tolist() == readable.first.tolist() and fast.last.tolist() == readable.last.tolist()
    for key in ("x_min", "x_max", "average_min", "average_max"):
        np.testing.assert_array_equal(getattr(fast, key), getattr(readable, key), err_msg=key)
    for key in ("x_mean", "average_mean"):
        np.testing.assert_allclose(getattr(fast, key), getattr(readable, key), rtol=1e-12, atol=1e-15, err_msg=key)
    for key in ("x_std",):  # √(E[x²] - E[x]²): a rounding of 1e-16 in the variance is 1e-8 here
        np.testing.assert_allclose(getattr(fast, key), getattr(readable, key), rtol=1e-9, atol=1e-6, err_msg=key)
    assert (fast.x_std[fast.first == fast.last] == 0).all()


def test_the_envelope_does_not_depend_on_the_chunks_and_stays_small():
    problem, v, settings = make_problem("stochastic", seed=1), variant("amsgrad"), Settings()
    whole = simulate(problem, v, settings, 300_000, record_every=0, chunk_steps=300_000).envelope
    pieces = simulate(problem, v, settings, 300_000, record_every=0, chunk_steps=12_345).envelope
    for key in whole.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(whole, key), getattr(pieces, key), err_msg=key)
    edges = bin_edges()
    assert len(whole) == int(np.searchsorted(edges, 300_000, side="right"))  # one row a bin, ~330 for 10^6 steps
    assert whole.first[0] == 1 and whole.last[-1] == 300_000
    assert (whole.first[1:] == whole.last[:-1] + 1).all()  # every step in exactly one bin


def test_each_late_bin_spans_the_swing_of_a_period():
    # On the period-101 problem Adam's x_t swings every period. Samples every 1,000th step
    # (1000 = 9·101 + 91) alias that into a wave 100 times slower; a bin wider than a period
    # holds the whole swing, which is what the plots draw.
    dense = simulate(make_problem("online"), variant("adam"), Settings(), 200_000, record_every=1)
    envelope, x = dense.envelope, dense.trace.x
    for first, last, low, high in zip(envelope.first, envelope.last, envelope.x_min, envelope.x_max):
        if first > 100_000:
            assert low == x[first - 1 : last].min() and high == x[first - 1 : last].max()
            period = x[last - 101 : last]
            assert high - low >= period.max() - period.min() > 0.05


def test_the_torch_engine_has_the_same_envelope():
    problem, v, settings = make_problem("stochastic", seed=2), variant("amsgrad"), Settings()
    fast = simulate(problem, v, settings, 5000, engine="fast", record_every=0).envelope
    slow = simulate(problem, v, settings, 5000, engine="torch", record_every=0, chunk_steps=1500).envelope
    assert fast.first.tolist() == slow.first.tolist()
    for key in ("x_min", "x_max", "x_mean", "average_min", "average_max", "average_mean"):
        np.testing.assert_allclose(getattr(fast, key), getattr(slow, key), rtol=0, atol=1e-9, err_msg=key)


# ---------------------------------------------------------------------- the sweep
def test_a_sweep_does_not_depend_on_its_chunks_and_reports_progress():
    problem, variants = make_problem("online"), [variant("adam"), variant("adamx")]
    beta1s, beta2s = default_beta1s(3), default_beta2s(4)
    calls = []
    whole = sweep(problem, variants, Settings(), 40_000, beta1s, beta2s)
    pieces = sweep(problem, variants, Settings(), 40_000, beta1s, beta2s, chunk_steps=7777, on_progress=calls.append)
    for v in variants:
        assert whole.final_x[v.name].tolist() == pieces.final_x[v.name].tolist()
        assert whole.average_regret[v.name].tolist() == pieces.average_regret[v.name].tolist()
    assert sum(calls) == 2 * 3 * 4 and len(calls) == 2 * math.ceil(40_000 / 7777)
    summary = {s["optimizer"]: s for s in pieces.summary()}
    assert summary["adam"]["steps_done"] == 40_000 and summary["adam"]["cell_steps_per_second"] > 0
    assert pieces.completed


def test_an_interrupted_sweep_keeps_every_cell_at_the_steps_done():
    calls = 0

    def stop_after_two_chunks(cells):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt

    with pytest.raises(SweepInterrupted) as caught:
        sweep(make_problem("online"), [variant("adam"), variant("amsgrad")], Settings(), 10_000, default_beta1s(2), default_beta2s(2), chunk_steps=3000, on_progress=stop_after_two_chunks)
    result = caught.value.result
    assert not result.completed
    assert result.steps_done == {"adam": 6000}  # AMSGrad never started
    assert np.isfinite(result.final_x["adam"]).all() and "amsgrad" not in result.final_x
    assert [s["optimizer"] for s in result.summary()] == ["adam"]
