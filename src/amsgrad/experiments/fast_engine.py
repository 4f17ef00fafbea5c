r"""The fast engine: the optimizers' update rules on one scalar, compiled with numba.

The kernel repeats, operation for operation, what the readable path of the library's
optimizers does to a one-element float64 parameter (``m.mul_(β1).add_(g, alpha=1-β1)``,
``v.mul_(β2).addcmul_(g, g, value=1-β2)``, ``θ.addcdiv_(m, denominator, value=-step_size)``,
then the clamp), so that it gives the torch engine's trajectory to the last bit or close to
it; the tests check that the two engines agree on every variant, setting and schedule.

One step of every variant, for :math:`t = 1, 2, \dots`, with :math:`β_{1,t} = β_1 λ^{t-1}`
(λ = ``beta1_decay``, 1 for a constant β1):

.. math::

    m_t &= β_{1,t} m_{t-1} + (1 - β_{1,t}) g_t \qquad
    v_t = β_{2,t} v_{t-1} + (1 - β_{2,t}) g_t^2 \\
    \hat v_t &= v_t \text{ (Adam, AdamNC)}, \quad \max(\hat v_{t-1}, v_t) \text{ (AMSGrad)}, \quad
        \max\Big(\Big(\frac{1 - β_{1,t}}{1 - β_{1,t-1}}\Big)^2 \hat v_{t-1}, v_t\Big) \text{ (AdamX, } \hat v_1 = v_1) \\
    x_{t+1} &= \Pi_{[-1, 1]}\Big(x_t - α_t \frac{\sqrt{1 - β_2^t}}{1 - \prod_{k \le t} β_{1,k}}
        \cdot \frac{m_t}{\sqrt{\hat v_t} + \hat ε}\Big)

with :math:`β_{2,t} = β_2`, or :math:`1 - 1/t` for AdamNC, and
:math:`\prod_{k \le t} β_{1,k} = β_1^t λ^{t(t-1)/2}`; without bias correction (AdamNC, AdamX,
the ``-paper`` variants) both corrections are 1. :func:`_step_constants` computes what a step
shares across cells and :func:`_cell_step` the rest, and :mod:`~amsgrad.experiments.grid_engine`
calls the same two functions for every cell of a (β1, β2) grid, so the two engines agree bit
for bit. Compilation is cached on disk (``cache=True``), so only the first run on a machine
pays for it.

Besides the trace sampled every ``record_every`` steps, the kernel summarises every step into
the log-spaced bins of :mod:`~amsgrad.experiments.envelope` (range and mean per bin), which is
what the plots draw.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from .envelope import STATISTICS, Envelope, bin_edges
from .problems import LOWER, UPPER, X_START, X_STAR, Problem, _uniform
from .variants import Settings, Variant

__all__ = ["FastRun", "kernel_settings"]


@intrinsic
def _fma(typingctx, a, b, c):
    """a·b + c rounded once, as torch's CPU kernels compute ``add_(alpha=)`` and ``addcmul_``."""
    signature = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, sig, args):
        return builder.fma(*args)

    return signature, codegen


# ----------------------------------------------------------------------------------------
# The arithmetic of one step, shared by this engine and the grid engine.


@njit(inline="always")
def _gradient(t, spike, slope, period, probability, seed):
    """g_t (as problems.gradient_at)."""
    if period > 0:
        return spike if t % period == 1 else -slope
    return spike if _uniform(seed, t) < probability else -slope


@njit(inline="always")
def _step_constants(t, lr, inv_sqrt, decay, previous_power, beta2, beta2_code):
    """What step t shares across cells: α_t, λ^(t-1), λ^(t(t-1)/2) and β2,t.

    ``decay ** x`` and ``1.0 - 1.0 / t`` are the expressions the optimizer classes evaluate
    (in Python floats), so both give the same numbers. ``previous_power`` is λ^(t-2): once it
    has underflowed to 0, so have both powers of step t (pow is monotone), and pow is skipped.
    """
    tf = float(t)
    step_lr = lr * (1.0 / math.sqrt(tf)) if inv_sqrt else lr
    if decay == 1.0:
        decay_power, decay_product = 1.0, 1.0
    elif previous_power == 0.0:
        decay_power, decay_product = 0.0, 0.0
    else:
        decay_power = decay ** (tf - 1.0)
        decay_product = decay ** (tf * (tf - 1.0) / 2.0)
    beta2_t = 1.0 - 1.0 / tf if beta2_code == 1 else beta2
    return step_lr, decay_power, decay_product, beta2_t


@njit(inline="always")
def _adamx_factor(t, beta1, decay_power, previous_power):
    """((1 - β1,t)/(1 - β1,t-1))² for t >= 2 (1 at t = 1, where AdamX sets v̂_1 = v_1)."""
    if t == 1:
        return 1.0
    ratio = (1.0 - beta1 * decay_power) / (1.0 - beta1 * previous_power)
    return ratio * ratio


@njit(inline="always")
def _cell_step(x, m, v, v_max, g, beta1_t, gg, beta2_t, max_code, v_divisor, adamx_factor, neg_step, eps, den_divisor):
    """The moments, the maximum and the projected update of one cell; returns (x, m, v, v_max).

    ``gg`` is (1 - β2,t)·g_t; ``v_divisor`` the correction the corrected maximum divides v_t by;
    ``den_divisor`` √(1 - β2^t) of the standard update form; ``neg_step`` minus the step size.
    A divisor of exactly 1 is skipped: x / 1 is x, so skipping changes no bit.
    """
    # m_t = β1 m + (1-β1) g and v_t = β2 v + (1-β2) g², rounded as torch's
    # m.mul_(β1).add_(g, alpha=1-β1) and v.mul_(β2).addcmul_(g, g, value=1-β2) round them
    m = _fma(g, 1.0 - beta1_t, m * beta1_t)
    v = _fma(gg, g, v * beta2_t)
    if max_code == 0:
        second = v
    elif max_code == 1:
        v_max = max(v_max, v)
        second = v_max
    elif max_code == 2:
        v_max = max(v_max, v / v_divisor if v_divisor != 1.0 else v)
        second = v_max
    else:
        v_max = max(v_max * adamx_factor, v)
        second = v_max
    denominator = math.sqrt(second)
    if den_divisor != 1.0:
        denominator = denominator / den_divisor
    denominator = denominator + eps
    x = x + neg_step * m / denominator
    x = min(max(x, LOWER), UPPER)
    return x, m, v, v_max


@njit(inline="always")
def _step_numerator(step_lr, correction2, max_code, optimized_update):
    """(numerator, v_divisor, den_divisor) of a step: the step size is numerator / (1 - ∏ β1,k).

    The optimized form's step size is α_t √(1-β2^t) / (1 - ∏ β1,k); the standard form's is
    α_t / (1 - ∏ β1,k), with √(1-β2^t) dividing √v̂_t instead. The maximum of corrected v_t
    divides v_t by 1 - β2^t and needs no further correction.
    """
    v_divisor = 1.0
    correction2_left = correction2
    if max_code == 2:
        v_divisor = correction2
        correction2_left = 1.0
    if optimized_update:  # √1 is 1: skipped once the correction has rounded to 1
        return step_lr * math.sqrt(correction2_left) if correction2_left != 1.0 else step_lr, v_divisor, 1.0
    den_divisor = math.sqrt(correction2_left) if correction2_left != 1.0 else 1.0
    return step_lr, v_divisor, den_divisor


# ----------------------------------------------------------------------------------------
# The scalar engine: one cell, every step recorded into the trace and the envelope.

# Layout of the state vector the kernel carries between chunks.
_X, _M, _V, _VMAX, _REGRET_SUM, _T, _DECAY_POWER, _BIN, _BIN_FIRST, _BIN_COUNT = range(10)
_STATE_SIZE = 10
# The running per-bin statistics: (min, max, sum) of x and of R(t)/t; the sum of the squares of x.
_ACCUMULATORS = 7


@njit(inline="always")
def _write_bin(out, count, x_low, x_high, x_sum, x_squares, a_low, a_high, a_sum):
    """A bin's row of :data:`~amsgrad.experiments.envelope.STATISTICS` from its running sums."""
    x_mean = x_sum / count
    out[0] = x_low
    out[1] = x_high
    out[2] = x_mean
    out[3] = math.sqrt(max(x_squares / count - x_mean * x_mean, 0.0))
    out[4] = a_low
    out[5] = a_high
    out[6] = a_sum / count


@njit(inline="always")
def _bin_statistics(sums, count, out):
    _write_bin(out, count, sums[0], sums[1], sums[2], sums[6], sums[3], sums[4], sums[5])


@njit(cache=True, nogil=True, error_model="numpy")
def _advance(
    state,
    sums,
    first,
    count,
    spike,
    slope,
    period,
    probability,
    seed,
    lr,
    beta1,
    beta2,
    eps,
    max_code,
    bias_correction,
    optimized_update,
    inv_sqrt,
    decay,
    beta2_code,
    record_every,
    out_step,
    out_regret,
    out_x,
    out_average,
    edges,
    bin_first,
    bin_last,
    bin_statistics,
):
    """Run steps ``first`` … ``first + count - 1`` from ``state``; return (recorded, bins closed).

    Every ``record_every``-th step (0: none) writes t, its regret, x_t and R(t)/t to the
    ``out_*`` arrays; every bin of ``edges`` completed writes its statistics to ``bin_*``.
    Both must have room for them.
    """
    x = state[_X]
    m = state[_M]
    v = state[_V]
    v_max = state[_VMAX]
    regret_sum = state[_REGRET_SUM]
    previous_power = state[_DECAY_POWER]
    bin_index = int(state[_BIN])
    current_first = int(state[_BIN_FIRST])
    bin_count = int(state[_BIN_COUNT])
    next_edge = edges[bin_index + 1]

    # 1 - β^t, recomputed with pow (as the optimizer does) until it rounds to exactly 1.0;
    # from there on it stays 1.0, and pow, the costliest operation here, is skipped.
    correction1 = 1.0
    correction2 = 1.0
    settled1 = not bias_correction
    settled2 = not bias_correction or beta2_code != 0

    next_record = ((first - 1) // record_every + 1) * record_every if record_every > 0 else -1
    recorded = 0
    closed = 0
    # the bin's running statistics, in registers (written back to ``sums`` at the end)
    x_low, x_high, x_sum, a_low, a_high, a_sum, x_squares = sums[0], sums[1], sums[2], sums[3], sums[4], sums[5], sums[6]

    for t in range(first, first + count):
        g = _gradient(t, spike, slope, period, probability, seed)

        # the regret of x_t, before the update
        regret = g * (x - X_STAR)
        regret_sum += regret
        average = regret_sum / t
        if t == next_record:
            out_step[recorded] = t
            out_regret[recorded] = regret
            out_x[recorded] = x
            out_average[recorded] = average
            recorded += 1
            next_record += record_every
        if t == next_edge:  # a new bin: write out the one it ends
            if bin_index >= 0:
                bin_first[closed] = current_first
                bin_last[closed] = t - 1
                _write_bin(bin_statistics[closed], bin_count, x_low, x_high, x_sum, x_squares, a_low, a_high, a_sum)
                closed += 1
            bin_index += 1
            next_edge = edges[bin_index + 1]
            current_first = t
            bin_count = 0
            x_low, a_low = np.inf, np.inf
            x_high, a_high = -np.inf, -np.inf
            x_sum = a_sum = x_squares = 0.0
        bin_count += 1
        x_low = min(x_low, x)
        x_high = max(x_high, x)
        x_sum += x
        x_squares += x * x
        a_low = min(a_low, average)
        a_high = max(a_high, average)
        a_sum += average

        step_lr, decay_power, decay_product, beta2_t = _step_constants(t, lr, inv_sqrt, decay, previous_power, beta2, beta2_code)
        if not settled1:
            correction1 = 1.0 - beta1 ** float(t) * decay_product
            settled1 = correction1 == 1.0
        if not settled2:
            correction2 = 1.0 - beta2 ** float(t)
            settled2 = correction2 == 1.0
        factor = _adamx_factor(t, beta1, decay_power, previous_power) if max_code == 3 and decay != 1.0 else 1.0
        numerator, v_divisor, den_divisor = _step_numerator(step_lr, correction2, max_code, optimized_update)
        neg_step = -(numerator / correction1) if correction1 != 1.0 else -numerator  # x / 1 is x
        x, m, v, v_max = _cell_step(
            x, m, v, v_max, g, beta1 * decay_power, (1.0 - beta2_t) * g, beta2_t, max_code, v_divisor, factor, neg_step, eps, den_divisor
        )
        previous_power = decay_power

    sums[0], sums[1], sums[2], sums[3], sums[4], sums[5], sums[6] = x_low, x_high, x_sum, a_low, a_high, a_sum, x_squares
    state[_X] = x
    state[_M] = m
    state[_V] = v
    state[_VMAX] = v_max
    state[_REGRET_SUM] = regret_sum
    state[_T] = first + count - 1
    state[_DECAY_POWER] = previous_power
    state[_BIN] = bin_index
    state[_BIN_FIRST] = current_first
    state[_BIN_COUNT] = bin_count
    return recorded, closed


@njit(cache=True)
def _open_bin(sums, count, out):
    _bin_statistics(sums, count, out)


def kernel_settings(variant: Variant, settings: Settings) -> tuple:
    """What the kernels need of a variant and its settings, as plain numbers.

    (lr, β1, β2, ε, max_code, bias_correction, optimized_update, inv_sqrt, λ, beta2_code).
    """
    beta1, beta2 = settings.betas
    return (
        settings.lr,
        beta1,
        beta2,
        settings.eps,
        variant.max_code,
        variant.bias_correction,
        settings.optimized_update,
        settings.schedule == "inv-sqrt",
        settings.beta1_decay,
        1 if variant.beta2_schedule == "inverse" else 0,
    )


_EDGES = bin_edges()


class FastRun:
    """One optimizer on one problem, advanced chunk by chunk by the compiled kernel.

    >>> from amsgrad.experiments import make_problem, variant, Settings
    >>> run = FastRun(make_problem("online"), variant("adam"), Settings())
    >>> trace = run.advance(100_000, record_every=1000)
    >>> run.t, len(trace.step), run.x
    (100000, 100, 1.0)
    >>> envelope = run.envelope()  # every step, summarised in log-spaced bins
    >>> int(envelope.first[0]), int(envelope.last[-1]), float(envelope.x_max[-1])
    (1, 100000, 1.0)
    """

    engine = "fast"

    def __init__(self, problem: Problem, variant: Variant, settings: Settings):
        self.problem, self.variant, self.settings = problem, variant, settings
        self._state = np.zeros(_STATE_SIZE, dtype=np.float64)
        self._state[_X] = X_START
        self._state[_DECAY_POWER] = 1.0
        self._state[_BIN] = -1
        self._sums = np.zeros(_ACCUMULATORS, dtype=np.float64)
        self._bins: list[Envelope] = []
        self._kernel_args = kernel_settings(variant, settings)
        self.advance(0, 0)  # load (or, the first time on a machine, compile) the kernel now

    @property
    def t(self) -> int:
        """The number of steps done."""
        return int(self._state[_T])

    @property
    def x(self) -> float:
        """The current iterate: :math:`x_{t+1}` after t steps."""
        return float(self._state[_X])

    @property
    def regret_sum(self) -> float:
        """R(t), the regret of the steps so far."""
        return float(self._state[_REGRET_SUM])

    def advance(self, count: int, record_every: int):
        """Run ``count`` more steps; return the :class:`~amsgrad.experiments.Trace` recorded."""
        from .simulate import Trace

        first = self.t + 1
        room = count // record_every + 1 if record_every > 0 else 0
        out = [np.empty(room, dtype=np.int64)] + [np.empty(room, dtype=np.float64) for _ in range(3)]
        bins = int(np.searchsorted(_EDGES, first + count, side="right") - np.searchsorted(_EDGES, first, side="left")) + 1
        bin_first, bin_last = np.empty(bins, dtype=np.int64), np.empty(bins, dtype=np.int64)
        bin_statistics = np.empty((bins, len(STATISTICS)), dtype=np.float64)
        recorded, closed = _advance(
            self._state,
            self._sums,
            first,
            count,
            *self.problem.kernel_args(),
            *self._kernel_args,
            record_every,
            *out,
            _EDGES,
            bin_first,
            bin_last,
            bin_statistics,
        )
        if closed:
            self._bins.append(Envelope.from_rows(bin_first[:closed], bin_last[:closed], bin_statistics[:closed]))
        return Trace(*(a[:recorded] for a in out))

    def envelope(self) -> Envelope:
        """Every step so far, in log-spaced bins (the bin being filled included)."""
        parts = list(self._bins)
        count = int(self._state[_BIN_COUNT])
        if count:
            row = np.empty((1, len(STATISTICS)))
            _open_bin(self._sums, count, row[0])
            parts.append(Envelope.from_rows([int(self._state[_BIN_FIRST])], [self.t], row))
        return Envelope.concatenate(parts)

    def flush(self):
        """Records made but not yet returned: none, since a compiled chunk cannot stop halfway."""
        from .simulate import Trace

        return Trace.empty()
