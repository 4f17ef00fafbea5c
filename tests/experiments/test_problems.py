"""The synthetic problems: the right gradient at the right step, and bad problems refused."""

from __future__ import annotations

import numpy as np
import pytest

from amsgrad.experiments import SETTINGS, make_problem, theorem1_betas
from amsgrad.experiments.problems import Problem, gradient_at, gradients


def test_online_problem_is_the_references():
    # f_t(x) = 1010 x if t mod 101 == 1 else -10 x, for t = 1, 2, ...
    g = gradients(make_problem("online"), 1, 1010)
    t = np.arange(1, 1011)
    np.testing.assert_array_equal(g, np.where(t % 101 == 1, 1010.0, -10.0))


@pytest.mark.parametrize("first", [1, 2, 100, 101, 102, 12345])
def test_gradients_do_not_depend_on_where_a_chunk_starts(first):
    for problem in (make_problem("online"), make_problem("stochastic", seed=3)):
        whole = gradients(problem, 1, first + 500)
        np.testing.assert_array_equal(gradients(problem, first, 500), whole[first - 1 : first + 499])
        assert gradient_at(first, *problem.kernel_args()) == whole[first - 1]


def test_stochastic_problem_spikes_with_its_probability_and_its_seed():
    problem = make_problem("stochastic", seed=0)
    g = gradients(problem, 1, 1_000_000)
    assert set(np.unique(g)) == {1010.0, -10.0}
    spikes = int((g == 1010.0).sum())
    # Binomial(10^6, 0.01): mean 10,000, standard deviation 99.5
    assert abs(spikes - 10_000) < 500
    np.testing.assert_array_equal(g, gradients(make_problem("stochastic", seed=0), 1, 1_000_000))
    other = gradients(make_problem("stochastic", seed=1), 1, 1_000_000)
    assert (other != g).sum() > 10_000


def test_theorem_families():
    problem = make_problem("theorem1", spike=5)
    np.testing.assert_array_equal(gradients(problem, 1, 6), [5, -1, -1, 5, -1, -1])
    assert theorem1_betas(5) == (0.0, 1.0 / 26.0)
    problem = make_problem("periodic", spike=7, period=4)
    np.testing.assert_array_equal(gradients(problem, 1, 8), [7, -1, -1, -1, 7, -1, -1, -1])


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_setting_has_its_optimum_at_minus_one(setting):
    # x* = -1 needs a positive average gradient.
    assert make_problem(setting).mean_gradient > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(setting="nope"), "unknown setting 'nope'"),
        (dict(setting="periodic", spike=2.0, period=5), "average gradient must be > 0"),
        (dict(setting="theorem1", spike=1.5), "average gradient must be > 0"),
        (dict(setting="theorem1", period=4), "Theorem 1's period is 3"),
        (dict(setting="stochastic", period=5), "period applies to the online settings"),
        (dict(setting="online", probability=0.1), "probability applies to the 'stochastic' setting"),
        (dict(setting="stochastic", probability=1.0), r"probability must be in \(0, 1\)"),
        (dict(setting="periodic", period=1), "period must be an integer >= 2"),
        (dict(setting="online", spike=float("nan")), "C must be a finite number > 0"),
        (dict(setting="stochastic", seed=-1), "seed must be an integer"),
    ],
)
def test_bad_problems_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_problem(**kwargs)


def test_a_problem_needs_exactly_one_kind_of_spike():
    with pytest.raises(ValueError, match="exactly one of period and probability"):
        Problem("online", 1010.0, 10.0)
