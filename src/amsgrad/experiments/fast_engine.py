"""The fast engine: the optimizers' update rules on one scalar, compiled with numba.

The kernel repeats, operation for operation, what the readable path of
:class:`amsgrad.Adam` / :class:`amsgrad.AMSGrad` does to a one-element float64 parameter
(``m.mul_(β1).add_(g, alpha=1-β1)``, ``v.mul_(β2).addcmul_(g, g, value=1-β2)``,
``θ.addcdiv_(m, denominator, value=-step_size)``, then the clamp), so that it gives the
torch engine's trajectory to the last bit or close to it; the tests check the two engines
agree on every variant, setting and schedule. Compilation is cached on disk (``cache=True``),
so only the first run on a machine pays for it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from .problems import LOWER, UPPER, X_START, X_STAR, Problem, _uniform
from .variants import Settings, Variant

__all__ = ["FastRun", "final_points"]

@intrinsic
def _fma(typingctx, a, b, c):
    """a·b + c rounded once, as torch's CPU kernels compute ``add_(alpha=)`` and ``addcmul_``."""
    signature = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, sig, args):
        return builder.fma(*args)

    return signature, codegen


# Layout of the state vector the kernel carries between chunks.
_X, _M, _V, _VMAX, _REGRET_SUM, _T = range(6)
_STATE_SIZE = 6


@njit(cache=True, nogil=True)
def _advance(
    state,
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
    record_every,
    out_step,
    out_regret,
    out_x,
    out_average,
):
    """Run steps ``first`` … ``first + count - 1`` from ``state``; return how many were recorded.

    Every ``record_every``-th step (0: none) writes t, its regret, x_t and R(t)/t to the
    ``out_*`` arrays, which must have room for them.
    """
    x = state[_X]
    m = state[_M]
    v = state[_V]
    v_max = state[_VMAX]
    regret_sum = state[_REGRET_SUM]

    one_minus_beta1 = 1.0 - beta1
    one_minus_beta2 = 1.0 - beta2
    # 1 - β^t, recomputed with pow (as the optimizer does) until it rounds to exactly 1.0;
    # from there on it stays 1.0, and pow, the costliest operation here, is skipped.
    correction1 = 1.0
    correction2 = 1.0
    settled1 = not bias_correction
    settled2 = not bias_correction

    phase = first % period if period > 0 else 0
    next_record = ((first - 1) // record_every + 1) * record_every if record_every > 0 else -1
    recorded = 0

    for t in range(first, first + count):
        # g_t of the problem (problems.gradient_at, with a running phase instead of t mod k)
        if period > 0:
            g = spike if phase == 1 else -slope
            phase += 1
            if phase == period:
                phase = 0
        else:
            g = spike if _uniform(seed, t) < probability else -slope

        # the regret of x_t, before the update
        regret = g * (x - X_STAR)
        regret_sum += regret
        if t == next_record:
            out_step[recorded] = t
            out_regret[recorded] = regret
            out_x[recorded] = x
            out_average[recorded] = regret_sum / t
            recorded += 1
            next_record += record_every

        # m_t = β1 m + (1-β1) g and v_t = β2 v + (1-β2) g², rounded as torch's
        # m.mul_(β1).add_(g, alpha=1-β1) and v.mul_(β2).addcmul_(g, g, value=1-β2) round them
        m = _fma(g, one_minus_beta1, m * beta1)
        v = _fma(one_minus_beta2 * g, g, v * beta2)
        if not settled1:
            correction1 = 1.0 - beta1 ** float(t)
            settled1 = correction1 == 1.0
        if not settled2:
            correction2 = 1.0 - beta2 ** float(t)
            settled2 = correction2 == 1.0

        # the running maximum, and the second correction the update still needs
        second = v
        correction2_left = correction2
        if max_code == 1:
            v_max = max(v_max, v)
            second = v_max
        elif max_code == 2:
            v_max = max(v_max, v / correction2)
            second = v_max
            correction2_left = 1.0

        step_lr = lr * (1.0 / math.sqrt(t)) if inv_sqrt else lr
        if optimized_update:
            denominator = math.sqrt(second) + eps
            step_size = step_lr * math.sqrt(correction2_left) / correction1
        else:
            denominator = math.sqrt(second)
            if correction2_left != 1.0:
                denominator = denominator / math.sqrt(correction2_left)
            denominator = denominator + eps
            step_size = step_lr / correction1
        x = x + -step_size * m / denominator
        x = min(max(x, LOWER), UPPER)

    state[_X] = x
    state[_M] = m
    state[_V] = v
    state[_VMAX] = v_max
    state[_REGRET_SUM] = regret_sum
    state[_T] = first + count - 1
    return recorded


def _kernel_settings(variant: Variant, settings: Settings) -> tuple:
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
    )


def _new_state() -> np.ndarray:
    state = np.zeros(_STATE_SIZE, dtype=np.float64)
    state[_X] = X_START
    return state


class FastRun:
    """One optimizer on one problem, advanced chunk by chunk by the compiled kernel.

    >>> from amsgrad.experiments import make_problem, variant, Settings
    >>> run = FastRun(make_problem("online"), variant("adam"), Settings())
    >>> trace = run.advance(100_000, record_every=1000)
    >>> run.t, len(trace.step), run.x
    (100000, 100, 1.0)
    """

    engine = "fast"

    def __init__(self, problem: Problem, variant: Variant, settings: Settings):
        self.problem, self.variant, self.settings = problem, variant, settings
        self._state = _new_state()
        self._kernel_args = _kernel_settings(variant, settings)
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
        recorded = _advance(
            self._state,
            first,
            count,
            *self.problem.kernel_args(),
            *self._kernel_args,
            record_every,
            *out,
        )
        return Trace(*(a[:recorded] for a in out))

    def flush(self):
        """Records made but not yet returned: none, since a compiled chunk cannot stop halfway."""
        from .simulate import Trace

        return Trace.empty()


@njit(cache=True, parallel=True)
def _grid(steps, spike, slope, period, probability, seed, lr, beta1s, beta2s, eps, max_code, bias_correction, optimized_update, inv_sqrt):
    rows, columns = beta1s.size, beta2s.size
    final_x = np.empty((rows, columns), dtype=np.float64)
    average_regret = np.empty((rows, columns), dtype=np.float64)
    empty_i = np.empty(0, dtype=np.int64)
    empty_f = np.empty(0, dtype=np.float64)
    for cell in prange(rows * columns):
        i, j = cell // columns, cell % columns
        state = np.zeros(_STATE_SIZE, dtype=np.float64)
        state[_X] = X_START
        _advance(
            state, 1, steps, spike, slope, period, probability, seed,
            lr, beta1s[i], beta2s[j], eps, max_code, bias_correction, optimized_update, inv_sqrt,
            0, empty_i, empty_f, empty_f, empty_f,
        )  # fmt: skip
        final_x[i, j] = state[_X]
        average_regret[i, j] = state[_REGRET_SUM] / steps
    return final_x, average_regret


def final_points(
    problem: Problem,
    variant: Variant,
    settings: Settings,
    steps: int,
    beta1s: np.ndarray,
    beta2s: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Final x and R(T)/T after ``steps`` steps for every (β1, β2) of a grid, in parallel.

    ``settings.betas`` is ignored; the result arrays are indexed ``[i, j]`` for
    ``(beta1s[i], beta2s[j])``.
    """
    beta1s = np.ascontiguousarray(beta1s, dtype=np.float64)
    beta2s = np.ascontiguousarray(beta2s, dtype=np.float64)
    lr, _, _, eps, max_code, bias_correction, optimized_update, inv_sqrt = _kernel_settings(variant, settings)
    return _grid(
        int(steps), *problem.kernel_args(), lr, beta1s, beta2s, eps, max_code, bias_correction, optimized_update, inv_sqrt
    )
