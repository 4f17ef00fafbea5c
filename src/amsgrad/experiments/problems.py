r"""The paper's synthetic problems: linear losses on :math:`x \in [-1, 1]`.

Every problem of Reddi, Kale & Kumar (ICLR 2018, §3) has the same shape. At step
:math:`t = 1, 2, \dots` the loss is linear, :math:`f_t(x) = g_t \cdot x`, with

.. math::

    g_t = \begin{cases} C & \text{on a "spike" step} \\ -s & \text{otherwise} \end{cases}

and a spike either every ``period`` steps (:math:`t \bmod k = 1`: the *online* setting) or
with probability ``p`` (the *stochastic* setting). The feasible set is :math:`[-1, 1]`, the
start :math:`x_1 = 0`, and iterates are projected (clamped) after every step. The problems are
chosen so that the average gradient is positive, which makes :math:`x^* = -1` optimal, while
the rare large spike is what misleads Adam towards :math:`+1`.

The regret of step :math:`t` is :math:`f_t(x_t) - f_t(x^*) = g_t (x_t - x^*)`.

Spikes of the stochastic setting come from a counter-based generator (SplitMix64 of the seed
and :math:`t`), so any step's gradient is known without replaying the ones before it, and
every engine sees exactly the same sequence for the same seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from numba import njit

__all__ = [
    "LOWER",
    "UPPER",
    "X_START",
    "X_STAR",
    "SETTINGS",
    "Problem",
    "make_problem",
    "theorem1_betas",
    "gradient_at",
    "gradients",
]

#: The feasible set is [LOWER, UPPER]; every problem starts at X_START and has optimum X_STAR.
LOWER, UPPER = -1.0, 1.0
X_START = 0.0
X_STAR = -1.0

#: The settings ``make_problem`` accepts (the ``--setting`` of the command line).
SETTINGS = ("online", "stochastic", "theorem1", "periodic")


@dataclass(frozen=True)
class Problem:
    """One synthetic problem: :math:`g_t = C` on spike steps, :math:`-s` otherwise.

    Exactly one of ``period`` and ``probability`` is set.

    Attributes:
        setting: the name it was made under (one of :data:`SETTINGS`).
        spike: C, the gradient on a spike step (> 0).
        slope: s, so that the gradient on every other step is ``-slope`` (> 0).
        period: k, a spike when ``t mod k == 1`` (online settings), or None.
        probability: p, a spike with this probability (stochastic setting), or None.
        seed: the seed of the stochastic spikes (unused by online settings).
    """

    setting: str
    spike: float
    slope: float
    period: int | None = None
    probability: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.period is None) == (self.probability is None):
            raise ValueError("a problem needs exactly one of period and probability")
        if not (math.isfinite(self.spike) and self.spike > 0):
            raise ValueError(f"C must be a finite number > 0, got {self.spike!r}")
        if not (math.isfinite(self.slope) and self.slope > 0):
            raise ValueError(f"the slope must be a finite number > 0, got {self.slope!r}")
        if self.period is not None and (isinstance(self.period, bool) or int(self.period) != self.period or self.period < 2):
            raise ValueError(f"the period must be an integer >= 2, got {self.period!r}")
        if self.probability is not None and not 0.0 < self.probability < 1.0:
            raise ValueError(f"the probability must be in (0, 1), got {self.probability!r}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"the seed must be an integer in [0, 2**63), got {self.seed!r}")
        if self.mean_gradient <= 0:
            raise ValueError(
                f"the average gradient must be > 0 so that x* = -1 is optimal; got {self.mean_gradient:.6g} "
                f"(C={self.spike:g}, slope={self.slope:g}, {self._frequency_text()}): increase C"
            )

    @property
    def spike_frequency(self) -> float:
        """The fraction of steps that are spikes: 1/k, or p."""
        return 1.0 / self.period if self.period is not None else float(self.probability)

    @property
    def mean_gradient(self) -> float:
        """The average gradient, :math:`C q - s (1 - q)` with q the spike frequency."""
        q = self.spike_frequency
        return self.spike * q - self.slope * (1.0 - q)

    @property
    def description(self) -> str:
        """The loss in one line, e.g. ``f_t(x) = 1010·x if t mod 101 = 1, else -10·x``."""
        spike, slope = _number(self.spike), _number(self.slope)
        other = "-x" if self.slope == 1 else f"-{slope}·x"
        if self.period is not None:
            return f"f_t(x) = {spike}·x if t mod {self.period} = 1, else {other}"
        return f"f_t(x) = {spike}·x with probability {self.probability:g}, else {other} (seed {self.seed})"

    def params(self) -> dict[str, float | int | str | None]:
        """The problem as flat parameters, for tracking and JSON."""
        return {
            "setting": self.setting,
            "C": self.spike,
            "slope": self.slope,
            "period": self.period,
            "probability": self.probability,
            "seed": self.seed if self.probability is not None else None,
        }

    def kernel_args(self) -> tuple[float, float, int, float, int]:
        """The problem as the plain numbers the compiled kernels take."""
        period = 0 if self.period is None else int(self.period)
        probability = 0.0 if self.probability is None else float(self.probability)
        return float(self.spike), float(self.slope), period, probability, int(self.seed)

    def _frequency_text(self) -> str:
        return f"period={self.period}" if self.period is not None else f"probability={self.probability:g}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def make_problem(
    setting: str = "online",
    *,
    spike: float | None = None,
    period: int | None = None,
    probability: float | None = None,
    seed: int = 0,
) -> Problem:
    """The problem of a named setting, with optional overrides.

    * ``online``: the reference's problem, :math:`1010 x` if :math:`t \\bmod 101 = 1`, else
      :math:`-10 x` (C and the period may be overridden).
    * ``stochastic``: :math:`1010 x` with probability 0.01, else :math:`-10 x`, seeded.
    * ``theorem1``: the paper's Theorem 1, :math:`C x` if :math:`t \\bmod 3 = 1`, else
      :math:`-x`, with C = 3 unless given (the theorem needs C > 2; its β1 = 0,
      β2 = 1/(1 + C²) are :func:`theorem1_betas`).
    * ``periodic``: the general family of Theorem 2, :math:`C x` every k steps, else
      :math:`-x` (defaults C = 250, k = 200: a spike rarer than β2 = 0.99 remembers).

    >>> make_problem("online").description
    'f_t(x) = 1010·x if t mod 101 = 1, else -10·x'
    >>> make_problem("theorem1", spike=5).description
    'f_t(x) = 5·x if t mod 3 = 1, else -x'
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {', '.join(SETTINGS)}")
    if setting == "stochastic":
        if period is not None:
            raise ValueError("the period applies to the online settings, not to 'stochastic'")
        base = Problem(setting, 1010.0, 10.0, probability=0.01, seed=seed)
        return replace(
            base,
            spike=base.spike if spike is None else float(spike),
            probability=base.probability if probability is None else float(probability),
        )
    if probability is not None:
        raise ValueError(f"the probability applies to the 'stochastic' setting, not to {setting!r}")
    defaults = {"online": (1010.0, 10.0, 101), "theorem1": (3.0, 1.0, 3), "periodic": (250.0, 1.0, 200)}
    default_spike, slope, default_period = defaults[setting]
    if setting == "theorem1" and period not in (None, 3):
        raise ValueError("Theorem 1's period is 3; use the 'periodic' setting for another period")
    return Problem(
        setting,
        default_spike if spike is None else float(spike),
        slope,
        period=default_period if period is None else period,
        seed=seed,
    )


def theorem1_betas(spike: float) -> tuple[float, float]:
    """Theorem 1's β1 = 0 and β2 = 1/(1 + C²).

    >>> theorem1_betas(3.0)
    (0.0, 0.1)
    """
    return 0.0, 1.0 / (1.0 + spike * spike)


# ----------------------------------------------------------------------------------------
# The gradient sequence, compiled: shared by every engine, so all see the same g_t.

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2**-53


@njit(cache=True)
def _uniform(seed: int, t: int) -> float:
    """SplitMix64 of (seed, t) as a float in [0, 1): the stochastic setting's coin for step t."""
    z = np.uint64(seed) * _MIX2 + np.uint64(t) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return float(z >> np.uint64(11)) * _TO_UNIT


@njit(cache=True)
def gradient_at(t: int, spike: float, slope: float, period: int, probability: float, seed: int) -> float:
    """:math:`g_t` of the problem given by :meth:`Problem.kernel_args`."""
    if period > 0:
        is_spike = t % period == 1
    else:
        is_spike = _uniform(seed, t) < probability
    return spike if is_spike else -slope


@njit(cache=True)
def _gradients(first: int, count: int, spike: float, slope: float, period: int, probability: float, seed: int) -> np.ndarray:
    out = np.empty(count, dtype=np.float64)
    for i in range(count):
        out[i] = gradient_at(first + i, spike, slope, period, probability, seed)
    return out


def gradients(problem: Problem, first: int, count: int) -> np.ndarray:
    """:math:`g_t` for :math:`t` = ``first`` … ``first + count - 1``, as float64.

    >>> g = gradients(make_problem("online"), 1, 202)
    >>> [float(g[0]), float(g[1]), float(g[101])]
    [1010.0, -10.0, 1010.0]
    """
    if first < 1 or count < 0:
        raise ValueError(f"steps start at t = 1 (got first={first}, count={count})")
    return _gradients(int(first), int(count), *problem.kernel_args())
