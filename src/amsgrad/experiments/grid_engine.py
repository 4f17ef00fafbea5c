r"""The grid engine: every cell of a (β1, β2) grid at once, in SIMD lanes and on every core.

The cells of a sweep are independent runs of the same problem, so the loop is turned inside
out: time outside, cells inside. Each step's gradient, step size and β1 decay are computed
once for the whole grid (:func:`_step_tables`, in parallel over the steps of a chunk); a cell
then costs a few fused multiply-adds, one square root and one division, over contiguous
arrays that the compiler vectorises (AVX2 or AVX-512 lanes of float64). Blocks of cells run
on every core (``numba.prange``).

A block holds about :data:`LANES` cells, whole β2 columns or pieces of one. A column's
correction :math:`1 - β_2^t` (a ``pow`` per step until it rounds to 1: 3.7·10^5 steps for
β2 = 0.9999) is computed once per column piece, not per cell; a cell's :math:`1 - β_1^t`
needs a ``pow`` per cell, but only for the first few thousand steps. Once every correction of
a block has rounded to 1 the block runs one loop over all its cells without them, which is
where a long sweep spends nearly all its time.

The arithmetic is that of the scalar engine, the very same functions
(:func:`~amsgrad.experiments.fast_engine._step_constants`, ``_step_numerator``,
``_cell_step``), so every cell ends bit for bit where
:class:`~amsgrad.experiments.fast_engine.FastRun` ends alone (the tests check every cell of a
grid, for every variant, setting and schedule). Vectorising changes no rounding: the compiler
only reorders operations across independent cells, never within one, and keeps the fused
multiply-adds of the scalar engine (``llvm.fma``, as torch's CPU kernels round).

:class:`GridRun` advances the grid chunk by chunk, its state (x, m, v, v̂ and R(t) of every
cell) carried between chunks, so that a caller can show progress or stop between chunks; its
memory is the state (5 numbers a cell) and the step tables of one chunk (bounded by
:data:`MAX_CHUNK_STEPS`).
"""

from __future__ import annotations

import numpy as np
import numba
from numba import njit, prange

from .fast_engine import _adamx_factor, _cell_step, _gradient, _step_constants, _step_numerator, kernel_settings
from .problems import X_START, X_STAR, Problem
from .variants import Settings, Variant

__all__ = ["GridRun", "final_points", "LANES", "MAX_CHUNK_STEPS", "chunk_steps_for"]

#: Cells per block: 32 vectors of 8 float64 lanes (AVX-512), 64 of 4 (AVX2). Entering a
#: vectorised loop costs tens of cycles (overlap checks of its arrays, the remainder), so a
#: block must be long enough to hide it, and short enough for its state to stay in L1 (14 KB).
LANES = 256

#: The most steps one call of the kernel runs: bounds the step tables (5 float64 per step).
MAX_CHUNK_STEPS = 1 << 16

#: Cell-steps per chunk that :func:`chunk_steps_for` aims at: about 0.05-0.2 s of work.
CHUNK_CELL_STEPS = 1 << 27


def chunk_steps_for(cells: int) -> int:
    """Steps per chunk for a grid of ``cells`` cells: ~:data:`CHUNK_CELL_STEPS` cell-steps, at most
    :data:`MAX_CHUNK_STEPS` steps.

    >>> chunk_steps_for(1024), chunk_steps_for(128 * 128)
    (65536, 8192)
    """
    return int(max(1, min(MAX_CHUNK_STEPS, CHUNK_CELL_STEPS // max(1, cells))))


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def _step_tables(first, count, spike, slope, period, probability, seed, lr, inv_sqrt, decay, beta2, beta2_code):
    """Per step t = first … first + count - 1: g_t, α_t, λ^(t-1), λ^(t(t-1)/2), β2,t.

    ``power`` has one more entry, in front: λ^(first-2), AdamX's previous power (1 before t = 1,
    as the scalar engine starts).
    """
    g = np.empty(count)
    step_lr = np.empty(count)
    power = np.empty(count + 1)
    product = np.empty(count)
    beta2_t = np.empty(count)
    power[0] = _step_constants(first - 1, lr, inv_sqrt, decay, 1.0, beta2, beta2_code)[1] if first >= 2 else 1.0
    for s in prange(count):
        t = first + s
        g[s] = _gradient(t, spike, slope, period, probability, seed)
        step_lr[s], power[s + 1], product[s], beta2_t[s] = _step_constants(t, lr, inv_sqrt, decay, 1.0, beta2, beta2_code)
    return g, step_lr, power, product, beta2_t


# The loops over the cells of a block. Each is specialised by literal arguments (max_code,
# which per-cell arrays it reads) where its caller knows them, so that the compiled loop has
# no branch left and vectorises. Arrays are indexed in the loop itself, never passed to a
# function inside it (that would count references per cell, a call that stops the vectoriser).


@njit(inline="always")
def _lanes_settled(x_, m_, v_, v_max_, regret_, beta1, beta2, g_t, decay_power, neg_step, eps, max_code):
    """Every correction 1 (and AdamX's factor 1): each cell's own β1, β2; the step size shared.

    With v / 1 skipped, the three maxima are one: max(v̂, v).
    """
    if max_code == 0:
        for k in range(x_.size):
            x = x_[k]
            regret_[k] += g_t * (x - X_STAR)
            x_[k], m_[k], v_[k], v_max_[k] = _cell_step(x, m_[k], v_[k], v_max_[k], g_t, beta1[k] * decay_power, (1.0 - beta2[k]) * g_t, beta2[k], 0, 1.0, 1.0, neg_step, eps, 1.0)
    else:
        for k in range(x_.size):
            x = x_[k]
            regret_[k] += g_t * (x - X_STAR)
            x_[k], m_[k], v_[k], v_max_[k] = _cell_step(x, m_[k], v_[k], v_max_[k], g_t, beta1[k] * decay_power, (1.0 - beta2[k]) * g_t, beta2[k], 1, 1.0, 1.0, neg_step, eps, 1.0)


@njit(inline="always")
def _lanes_shared_beta2(x_, m_, v_, v_max_, regret_, beta1, g_t, decay_power, b2, neg_step, eps):
    """AdamNC: one β2,t for every cell, no maximum, no correction."""
    gg = (1.0 - b2) * g_t
    for k in range(x_.size):
        x = x_[k]
        regret_[k] += g_t * (x - X_STAR)
        x_[k], m_[k], v_[k], v_max_[k] = _cell_step(x, m_[k], v_[k], v_max_[k], g_t, beta1[k] * decay_power, gg, b2, 0, 1.0, 1.0, neg_step, eps, 1.0)


@njit(inline="always")
def _lanes_per_cell(x_, m_, v_, v_max_, regret_, beta1, beta2, g_t, decay_power, neg, v_divisor, factor, den_divisor, eps, max_code, with_v_divisor, with_factor, with_den_divisor):
    """The first steps: each cell its own step size ``neg`` (and, where the literal ``with_*``
    says so, its own v divisor, AdamX factor and denominator divisor)."""
    for k in range(x_.size):
        x = x_[k]
        regret_[k] += g_t * (x - X_STAR)
        x_[k], m_[k], v_[k], v_max_[k] = _cell_step(
            x, m_[k], v_[k], v_max_[k], g_t, beta1[k] * decay_power, (1.0 - beta2[k]) * g_t, beta2[k], max_code,
            v_divisor[k] if with_v_divisor else 1.0, factor[k] if with_factor else 1.0, neg[k], eps,
            den_divisor[k] if with_den_divisor else 1.0,
        )  # fmt: skip


@njit(inline="always")
def _lanes_per_cell_any(x_, m_, v_, v_max_, regret_, beta1, beta2, g_t, decay_power, neg, v_divisor, factor, den_divisor, eps, max_code, adamx_decaying, optimized_update):
    """:func:`_lanes_per_cell` specialised for the variant: only the arrays it needs are read."""
    if optimized_update:
        if max_code == 0:
            _lanes_per_cell(x_, m_, v_, v_max_, regret_, beta1, beta2, g_t, decay_power, neg, v_divisor, factor, den_divisor, eps, 0, False, False, False)
        elif max_code == 2:
            _lanes_per_cell(x_, m_, v_, v_max_, regret_, beta1, beta2, g_t, decay_power, neg, v_divisor, factor, den_divisor, eps, 2, True, False, False)
        elif max_code == 3 and adamx_decaying:
            _lanes_per_cell(x_, m_, v_, v_max_, regret_, beta1, beta2, g_t, decay_power, neg, v_divisor, factor, den_divisor, eps, 3, False, True, False)
        else:
            _lanes_per_cell(x_, m_, v_, v_max_, regret_, beta1, beta2, g_t, decay_power, neg, v_divisor, factor, den_divisor, eps, 1, False, False, False)
    else:
        if max_code == 0:
            _lanes_per_cell(x_, m_, v_, v_max_, regret_, beta1, beta2, g_t, decay_power, neg, v_divisor, factor, den_divisor, eps, 0, False, False, True)
        elif max_code == 2:
            _lanes_per_cell(x_, m_, v_, v_max_, regret_, beta1, beta2, g_t, decay_power, neg, v_divisor, factor, den_divisor, eps, 2, True, False, True)
        elif max_code == 3 and adamx_decaying:
            _lanes_per_cell(x_, m_, v_, v_max_, regret_, beta1, beta2, g_t, decay_power, neg, v_divisor, factor, den_divisor, eps, 3, False, True, True)
        else:
            _lanes_per_cell(x_, m_, v_, v_max_, regret_, beta1, beta2, g_t, decay_power, neg, v_divisor, factor, den_divisor, eps, 1, False, False, True)


@njit(inline="always")
def _settled_steps(start, g, step_lr, power, beta2_t, x_, m_, v_, v_max_, regret_, beta1, beta2, eps, max_code, optimized_update, beta2_code):
    """Steps ``start`` … of the tables once every correction of the block is 1: nothing left per step but the cells."""
    if beta2_code != 0:  # AdamNC
        for s in range(start, g.size):
            numerator = _step_numerator(step_lr[s], 1.0, 0, optimized_update)[0]
            _lanes_shared_beta2(x_, m_, v_, v_max_, regret_, beta1, g[s], power[s + 1], beta2_t[s], -(numerator / 1.0), eps)
    elif max_code == 0:
        for s in range(start, g.size):
            numerator = _step_numerator(step_lr[s], 1.0, 0, optimized_update)[0]
            _lanes_settled(x_, m_, v_, v_max_, regret_, beta1, beta2, g[s], power[s + 1], -(numerator / 1.0), eps, 0)
    else:
        for s in range(start, g.size):
            numerator = _step_numerator(step_lr[s], 1.0, 1, optimized_update)[0]
            _lanes_settled(x_, m_, v_, v_max_, regret_, beta1, beta2, g[s], power[s + 1], -(numerator / 1.0), eps, 1)


@njit(nogil=True, error_model="numpy")
def _advance_block(
    first, g, step_lr, power, product, beta2_t, beta1, beta2, x_, m_, v_, v_max_, regret_, segment_start, segment_beta2,
    eps, max_code, bias_correction, optimized_update, decay, beta2_code,
):  # fmt: skip
    """One block of cells through the steps of the tables, time outer, cells inner.

    The block is one or more *segments*, pieces of β2 columns (``segment_start`` are offsets
    into the block's cells). While a segment's 1 - β2^t, or a cell's 1 - ∏ β1,k, has not yet
    rounded to 1 (or AdamX's β1 factor to 1), each step computes the segments' numbers, fills
    per-cell arrays with them and runs :func:`_lanes_per_cell`; once everything is 1, the rest of
    the chunk runs :func:`_settled_steps`, the step's numbers shared by every cell.
    (AdamNC, ``beta2_code`` 1, has no correction, so it is always settled.)
    """
    lanes = x_.size
    segments = segment_beta2.size
    correction1 = np.ones(lanes)
    settled1 = np.zeros(lanes, dtype=np.bool_)
    factor = np.ones(lanes)
    neg = np.empty(lanes)
    v_divisor = np.ones(lanes)
    den_divisor = np.ones(lanes)
    unsettled1 = lanes if bias_correction else 0
    correction2 = np.ones(segments)
    settled2 = np.zeros(segments, dtype=np.bool_)
    unsettled2 = segments if bias_correction and beta2_code == 0 else 0
    adamx_decaying = max_code == 3 and decay != 1.0
    for s in range(g.size):
        if (unsettled1 == 0 and unsettled2 == 0 and not adamx_decaying) or beta2_code != 0:
            _settled_steps(s, g, step_lr, power, beta2_t, x_, m_, v_, v_max_, regret_, beta1, beta2, eps, max_code, optimized_update, beta2_code)
            break
        t = first + s
        decay_power = power[s + 1]
        if unsettled2 > 0:
            for j in range(segments):
                if not settled2[j]:
                    c = 1.0 - segment_beta2[j] ** float(t)
                    correction2[j] = c
                    if c == 1.0:
                        settled2[j] = True
                        unsettled2 -= 1
        if unsettled1 > 0:
            product_t = product[s]
            for k in range(lanes):
                if not settled1[k]:
                    c = 1.0 - beta1[k] ** float(t) * product_t
                    correction1[k] = c
                    if c == 1.0:
                        settled1[k] = True
                        unsettled1 -= 1
        if adamx_decaying:
            previous_power = power[s]
            done = True
            for k in range(lanes):
                factor[k] = _adamx_factor(t, beta1[k], decay_power, previous_power)
                done = done and 1.0 - beta1[k] * previous_power == 1.0
            # 1 - β1,t-1 has rounded to 1 in every cell: so has 1 - β1,t, and every later factor is 1
            adamx_decaying = not done
        for j in range(segments):
            numerator, segment_v_divisor, segment_den_divisor = _step_numerator(step_lr[s], correction2[j], max_code, optimized_update)
            lo, hi = segment_start[j], segment_start[j + 1]
            if unsettled1 > 0:
                for k in range(lo, hi):
                    neg[k] = -(numerator / correction1[k])
            else:
                neg[lo:hi] = -(numerator / 1.0)
            v_divisor[lo:hi] = segment_v_divisor
            den_divisor[lo:hi] = segment_den_divisor
        _lanes_per_cell_any(
            x_, m_, v_, v_max_, regret_, beta1, beta2, g[s], decay_power, neg, v_divisor, factor, den_divisor, eps,
            max_code, adamx_decaying, optimized_update,
        )  # fmt: skip


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def _advance_grid(
    first, g, step_lr, power, product, beta2_t, beta1, beta2, block_segments, segment_start, segment_beta2, x, m, v, v_max, regret,
    eps, max_code, bias_correction, optimized_update, decay, beta2_code, order,
):  # fmt: skip
    blocks = block_segments.size - 1
    # one block at a time to whichever thread is free (see GridRun.advance), the costliest first
    for i in prange(blocks):
        b = order[i]
        j0, j1 = block_segments[b], block_segments[b + 1]
        lo, hi = segment_start[j0], segment_start[j1]
        _advance_block(
            first, g, step_lr, power, product, beta2_t, beta1[lo:hi], beta2[lo:hi],
            x[lo:hi], m[lo:hi], v[lo:hi], v_max[lo:hi], regret[lo:hi], segment_start[j0 : j1 + 1] - lo, segment_beta2[j0:j1],
            eps, max_code, bias_correction, optimized_update, decay, beta2_code,
        )  # fmt: skip


def _blocks(rows: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a column-major grid into blocks of about :data:`LANES` cells.

    Returns (block_segments, segment_start): block b is the segments
    ``block_segments[b] … block_segments[b+1] - 1``, segment s the cells
    ``segment_start[s] … segment_start[s+1] - 1``, all within one column. Short columns are
    grouped whole into a block; a long one is split into near-equal pieces.

    >>> [a.tolist() for a in _blocks(100, 3)]
    [[0, 2, 3], [0, 100, 200, 300]]
    >>> [a.tolist() for a in _blocks(300, 1)]
    [[0, 1, 2], [0, 150, 300]]
    """
    starts, block_segments = [], [0]
    if rows <= LANES:
        per_block = max(1, LANES // rows)
        for j in range(columns):
            starts.append(j * rows)
            if (j + 1) % per_block == 0 or j == columns - 1:
                block_segments.append(j + 1)
    else:
        pieces = -(-rows // LANES)
        for j in range(columns):
            for p in range(pieces):
                starts.append(j * rows + p * rows // pieces)
                block_segments.append(len(starts))
    return np.array(block_segments, dtype=np.int64), np.array(starts + [rows * columns], dtype=np.int64)


class GridRun:
    """One variant at every (β1, β2) of a grid, advanced together, chunk by chunk.

    Cells are indexed ``[i, j]`` for ``(beta1s[i], beta2s[j])``; ``settings.betas`` is ignored.
    A variant whose trajectory does not depend on β2 (AdamNC) runs one column and repeats it.

    >>> from amsgrad.experiments import make_problem, variant, Settings
    >>> run = GridRun(make_problem("online"), variant("adam"), Settings(), [0.0, 0.9], [0.9, 0.99])
    >>> run.advance(100_000)
    >>> run.t, run.final_x.tolist()
    (100000, [[1.0, 1.0], [1.0, 1.0]])
    """

    engine = "grid"

    def __init__(self, problem: Problem, variant: Variant, settings: Settings, beta1s, beta2s):
        self.problem, self.variant, self.settings = problem, variant, settings
        self.beta1s = np.ascontiguousarray(beta1s, dtype=np.float64)
        self.beta2s = np.ascontiguousarray(beta2s, dtype=np.float64)
        self.shape = (self.beta1s.size, self.beta2s.size)
        columns = self.beta2s if variant.uses_beta2 else self.beta2s[:1]
        rows = self.beta1s.size
        # column-major cells: a column's rows are contiguous
        self._beta1 = np.tile(self.beta1s, columns.size)
        self._beta2 = np.repeat(columns, rows)
        self._block_segments, self._segment_start = _blocks(rows, columns.size)
        self._segment_beta2 = self._beta2[self._segment_start[:-1]].copy()
        # the blocks of the largest β2 (the last) wait longest for 1 - β2^t to round to 1
        self._order = np.arange(self._block_segments.size - 2, -1, -1, dtype=np.int64)
        self.cells = columns.size * rows
        self._x = np.full(self.cells, X_START)
        self._m, self._v, self._v_max, self._regret = (np.zeros(self.cells) for _ in range(4))
        lr, _, beta2, eps, max_code, bias_correction, optimized_update, inv_sqrt, decay, beta2_code = kernel_settings(variant, settings)
        self._table_args = (lr, inv_sqrt, decay, beta2, beta2_code)
        self._cell_args = (eps, max_code, bias_correction, optimized_update, decay, beta2_code)
        self.t = 0
        self.advance(0)  # load (or, the first time on a machine, compile) the kernels now

    def advance(self, count: int) -> None:
        """Run ``count`` more steps of every cell (in calls of at most :data:`MAX_CHUNK_STEPS`)."""
        done = 0
        while done < count or (count == 0 and done == 0):
            n = min(MAX_CHUNK_STEPS, count - done)
            first = self.t + 1
            tables = _step_tables(first, n, *self.problem.kernel_args(), *self._table_args)
            with numba.parallel_chunksize(1):  # blocks handed out one by one, not split evenly in advance
                _advance_grid(
                    first, *tables, self._beta1, self._beta2, self._block_segments, self._segment_start, self._segment_beta2,
                    self._x, self._m, self._v, self._v_max, self._regret, *self._cell_args, self._order,
                )  # fmt: skip
            self.t += n
            done += n
            if count == 0:
                break

    def _as_grid(self, values: np.ndarray) -> np.ndarray:
        rows, columns = self.shape
        computed = values.reshape(-1, rows).T  # (rows, computed columns)
        return np.ascontiguousarray(np.broadcast_to(computed, self.shape)) if computed.shape[1] != columns else computed.copy()

    @property
    def final_x(self) -> np.ndarray:
        """:math:`x_{t+1}` of every cell, shape (len(beta1s), len(beta2s))."""
        return self._as_grid(self._x)

    @property
    def regret_sum(self) -> np.ndarray:
        """R(t) of every cell."""
        return self._as_grid(self._regret)

    @property
    def average_regret(self) -> np.ndarray:
        """R(t)/t of every cell (NaN before the first step)."""
        return self.regret_sum / self.t if self.t else np.full(self.shape, np.nan)

    def state(self) -> dict[str, np.ndarray]:
        """x, m, v, v̂ and R(t) of every cell, each shaped as the grid."""
        return {name: self._as_grid(a) for name, a in (("x", self._x), ("m", self._m), ("v", self._v), ("v_max", self._v_max), ("regret_sum", self._regret))}


def final_points(
    problem: Problem,
    variant: Variant,
    settings: Settings,
    steps: int,
    beta1s: np.ndarray,
    beta2s: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Final x and R(T)/T after ``steps`` steps for every (β1, β2) of a grid.

    ``settings.betas`` is ignored; the result arrays are indexed ``[i, j]`` for
    ``(beta1s[i], beta2s[j])``.
    """
    run = GridRun(problem, variant, settings, beta1s, beta2s)
    run.advance(int(steps))
    return run.final_x, run.average_regret


def inspect_vectorisation() -> dict[str, dict[str, list[int]]]:
    """How the compiler vectorised the loops over cells: vector widths of their sqrt, division and FMA.

    Compiles (without the disk cache, whose code cannot be inspected) a copy of each loop and
    reads its LLVM IR: ``{"settled": {"sqrt": [8], "fdiv": [8], "fma": [8]}, ...}`` means 8
    float64 lanes (AVX-512); ``[]``, that the loop stayed scalar. ``settled`` is the loop a long
    sweep spends nearly all its time in; ``first steps`` (AMSGrad) and ``first steps, corrected
    max, standard form`` run while corrections are below 1; ``adamnc`` is AdamNC's.
    """
    import re

    @njit(error_model="numpy")
    def settled(x, m, v, v_max, regret, beta1, beta2, g_t, decay_power, neg_step, eps):
        _lanes_settled(x, m, v, v_max, regret, beta1, beta2, g_t, decay_power, neg_step, eps, 1)

    @njit(error_model="numpy")
    def adamnc(x, m, v, v_max, regret, beta1, g_t, decay_power, b2, neg_step, eps):
        _lanes_shared_beta2(x, m, v, v_max, regret, beta1, g_t, decay_power, b2, neg_step, eps)

    @njit(error_model="numpy")
    def first_steps(x, m, v, v_max, regret, beta1, beta2, g_t, decay_power, neg, v_divisor, factor, den_divisor, eps, max_code, optimized):
        _lanes_per_cell_any(x, m, v, v_max, regret, beta1, beta2, g_t, decay_power, neg, v_divisor, factor, den_divisor, eps, max_code, False, optimized)

    a = [np.ones(64) for _ in range(11)]
    settled(*a[:7], -1.0, 1.0, -0.01, 1e-16)
    adamnc(*a[:6], -1.0, 1.0, 0.5, -0.01, 1e-16)
    loops = [("settled", settled), ("adamnc", adamnc)]
    for name, max_code, optimized in (("first steps", 1, True), ("first steps, corrected max, standard form", 2, False)):
        compiled = njit(error_model="numpy")(first_steps.py_func)
        compiled(*a[:7], -1.0, 1.0, *a[7:11], 1e-16, max_code, optimized)
        loops.append((name, compiled))
    report = {}
    for name, function in loops:
        ir = function.inspect_llvm(function.signatures[0])
        report[name] = {
            "sqrt": sorted({int(w) for w in re.findall(r"@llvm\.sqrt\.v(\d+)f64", ir)}),
            "fdiv": sorted({int(w) for w in re.findall(r"fdiv <(\d+) x double>", ir)}),
            "fma": sorted({int(w) for w in re.findall(r"@llvm\.fma\.v(\d+)f64", ir)}),
        }
    return report
