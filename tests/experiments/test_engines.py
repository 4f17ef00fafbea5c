"""The two engines agree, and the paper's claims hold at horizons a test can afford.

The torch engine steps the library's own ``amsgrad.Adam``/``AMSGrad``/``AdamNC``/``AdamX``; the
fast engine is a compiled copy of their update rules. Agreement is checked at every one of
10^5 steps, on x_t and on the running regret R(t)/t, for every variant, setting and schedule
the command line offers, and with a decaying β1 (all four settings at once, as four elements
of one torch parameter).
"""

from __future__ import annotations

import numpy as np
import pytest

from amsgrad.experiments import SCHEDULES, SETTINGS, VARIANTS, Settings, make_problem, simulate, theorem1_betas, variant
from amsgrad.experiments.fast_engine import FastRun
from amsgrad.experiments.simulate import Interrupted
from amsgrad.experiments.torch_engine import TorchBatchRun

STEPS = 100_000
TOLERANCE = 1e-9

# (variant, schedule, optimized_update, betas): every variant and schedule; the standard
# update form where it differs from the optimized one (the other variants apply no second
# bias correction, so both forms are the same update); and Theorem 1's β1 = 0.
CONFIGS = [(name, schedule, True, (0.9, 0.99), 1.0) for name in VARIANTS for schedule in SCHEDULES]
CONFIGS += [(name, schedule, False, (0.9, 0.99), 1.0) for name in ("adam", "amsgrad") for schedule in SCHEDULES]
CONFIGS += [(name, "inv-sqrt", True, theorem1_betas(3.0), 1.0) for name in ("adam", "amsgrad")]
# β1,t = β1 λ^(t-1): the corrections, AdamNC's and AdamX's rules with a decaying β1
CONFIGS += [(name, "constant", True, (0.9, 0.99), 0.9999) for name in ("adam", "amsgrad", "amsgrad-corrected", "adamnc", "adamx")]
CONFIGS += [(name, "inv-sqrt", False, (0.9, 0.99), 0.999) for name in ("amsgrad", "adamx")]


def _id(config) -> str:
    name, schedule, optimized, betas, decay = config
    text = f"{name}-{schedule}-{'optimized' if optimized else 'standard'}-b{betas[0]:g},{betas[1]:.3g}"
    return text + (f"-decay{decay:g}" if decay != 1.0 else "")


@pytest.mark.parametrize("config", CONFIGS, ids=[_id(c) for c in CONFIGS])
def test_fast_engine_equals_the_optimizer_classes(config):
    name, schedule, optimized, betas, decay = config
    settings = Settings(betas=betas, schedule=schedule, optimized_update=optimized, beta1_decay=decay)
    problems = [make_problem(setting, seed=7) for setting in SETTINGS]
    batch = TorchBatchRun(problems, variant(name), settings)
    torch_traces = batch.advance(STEPS, record_every=1)
    for problem, torch_trace, torch_x, torch_sum in zip(problems, torch_traces, batch.xs, batch.regret_sums):
        fast = FastRun(problem, variant(name), settings)
        fast_trace = fast.advance(STEPS, record_every=1)
        np.testing.assert_array_equal(fast_trace.step, torch_trace.step)
        np.testing.assert_allclose(fast_trace.x, torch_trace.x, rtol=0, atol=TOLERANCE, err_msg=problem.setting)
        np.testing.assert_allclose(fast_trace.average_regret, torch_trace.average_regret, rtol=0, atol=TOLERANCE, err_msg=problem.setting)
        assert fast.x == pytest.approx(float(torch_x), abs=TOLERANCE)
        assert fast.regret_sum / STEPS == pytest.approx(float(torch_sum) / STEPS, abs=TOLERANCE)


def test_a_batched_torch_run_equals_separate_ones():
    settings = Settings(schedule="inv-sqrt")
    problems = [make_problem("online"), make_problem("stochastic", seed=1)]
    batch = TorchBatchRun(problems, variant("amsgrad"), settings)
    traces = batch.advance(3000, record_every=100)
    for problem, trace in zip(problems, traces):
        alone = simulate(problem, variant("amsgrad"), settings, 3000, engine="torch", record_every=100)
        np.testing.assert_array_equal(alone.trace.x, trace.x)
        np.testing.assert_array_equal(alone.trace.average_regret, trace.average_regret)


@pytest.mark.parametrize("engine", ["fast", "torch"])
def test_chunking_does_not_change_a_run(engine):
    problem, v, settings = make_problem("stochastic", seed=2), variant("amsgrad"), Settings()
    whole = simulate(problem, v, settings, 20_000, engine=engine, record_every=1000, chunk_steps=20_000)
    pieces = simulate(problem, v, settings, 20_000, engine=engine, record_every=1000, chunk_steps=333)
    assert pieces.final_x == whole.final_x and pieces.average_regret == whole.average_regret
    for field in ("step", "regret", "x", "average_regret"):
        np.testing.assert_array_equal(getattr(pieces.trace, field), getattr(whole.trace, field))


def test_the_trace_is_what_the_reference_records():
    # Every 1,000 steps: the step's regret f_t(x_t) - f_t(x*), x_t and R(t)/t.
    result = simulate(make_problem("online"), variant("adam"), Settings(), 5000, record_every=1)
    every = result.trace
    g = np.where(every.step % 101 == 1, 1010.0, -10.0)
    np.testing.assert_array_equal(every.regret, g * (every.x + 1.0))
    np.testing.assert_allclose(every.average_regret, np.cumsum(every.regret) / every.step, rtol=1e-12)
    sparse = simulate(make_problem("online"), variant("adam"), Settings(), 5000, record_every=1000).trace
    assert sparse.step.tolist() == [1000, 2000, 3000, 4000, 5000]
    np.testing.assert_array_equal(sparse.x, every.x[999::1000])
    assert every.x[0] == 0.0  # x_1 = 0
    assert ((every.x >= -1) & (every.x <= 1)).all()


def test_an_interrupted_run_keeps_what_it_computed():
    calls = 0

    def stop_after_two_chunks(trace, count):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as caught:
        simulate(make_problem("online"), variant("adam"), Settings(), 10_000, engine="torch", chunk_steps=3000, on_chunk=stop_after_two_chunks)
    result = caught.value.result
    assert not result.completed and result.steps_done == 6000
    assert result.trace.step.tolist() == [1000, 2000, 3000, 4000, 5000, 6000]


@pytest.mark.parametrize("steps, record_every", [(0, 1000), (1.5, 1000), (-1, 1000), (10, -1), (True, 1)])
def test_simulate_refuses_bad_counts(steps, record_every):
    with pytest.raises(ValueError, match="must be an integer"):
        simulate(make_problem("online"), variant("adam"), Settings(), steps, record_every=record_every)


# ---------------------------------------------------------------------------- the paper
HORIZON = 1_000_000


def test_online_adam_goes_to_plus_one_and_amsgrad_to_the_optimum():
    online = make_problem("online")
    adam = simulate(online, variant("adam"), Settings(), HORIZON, record_every=0)
    amsgrad = simulate(online, variant("amsgrad"), Settings(), HORIZON, record_every=0)
    assert adam.final_x == 1.0  # measured: exactly +1 at 10^6 steps
    assert amsgrad.final_x < -0.9  # measured: -0.9464
    assert amsgrad.average_regret < adam.average_regret  # measured: 0.336 < 0.498


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stochastic_amsgrad_has_less_regret_than_adam(seed):
    stochastic = make_problem("stochastic", seed=seed)
    adam = simulate(stochastic, variant("adam"), Settings(), HORIZON, record_every=0)
    amsgrad = simulate(stochastic, variant("amsgrad"), Settings(), HORIZON, record_every=0)
    # measured R(T)/T, Adam vs AMSGrad: 0.253/0.156, 0.408/0.169, 0.507/0.198
    assert amsgrad.average_regret < 0.8 * adam.average_regret


def test_the_papers_picture_with_a_decaying_step_size():
    # α_t = 0.5/√t: AMSGrad reaches -0.9973 by 10^6 steps (-0.9993 by 10^7); Adam stays at +1.
    settings = Settings(lr=0.5, schedule="inv-sqrt")
    online = make_problem("online")
    assert simulate(online, variant("adam"), settings, HORIZON, record_every=0).final_x == 1.0
    assert simulate(online, variant("amsgrad"), settings, HORIZON, record_every=0).final_x < -0.995


@pytest.mark.parametrize("name", ["amsgrad", "amsgrad-corrected", "amsgrad-paper"])
def test_theorem1_adam_fails_where_every_amsgrad_converges(name):
    # C = 3, β1 = 0, β2 = 1/(1 + C²), α_t = 0.1/√t (Theorem 1's setting)
    problem = make_problem("theorem1")
    settings = Settings(lr=0.1, betas=theorem1_betas(3.0), schedule="inv-sqrt")
    assert simulate(problem, variant("adam"), settings, HORIZON, record_every=0).final_x > 0.999
    assert simulate(problem, variant(name), settings, HORIZON, record_every=0).final_x < -0.999
