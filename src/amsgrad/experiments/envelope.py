r"""What a run looks like at every scale: per-bin minimum, maximum and mean, on log-spaced bins.

A trace sampled every 1,000th step aliases on the paper's online problem: its period, 101, and
the sampling interval beat, so the samples of :math:`x_t` fall on one phase of the oscillation
and draw a smooth line that the iterate never follows. The engines therefore summarise *every*
step while they run, into bins whose width grows with t (:data:`BINS_PER_DECADE` per decade,
one step wide below t ≈ 25): for each bin, the minimum, maximum and mean of :math:`x_t` and of
:math:`R(t)/t`, and the standard deviation of :math:`x_t`. A plot then draws the mean as a line
and the range (or, for a random walk, mean ± standard deviation) as a band; a run of 10^7 steps
has 361 bins. (The step's regret itself is in the sampled trace.)

:func:`bin_edges` fixes the bins once for all runs, so that runs of any length, advanced in
chunks of any size, by either engine, have the same bins. :class:`EnvelopeBuilder` is the
readable (numpy) accumulator that the torch engine uses; the fast engine keeps the same sums in
its compiled loop, and the tests check that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

__all__ = ["BINS_PER_DECADE", "STATISTICS", "bin_edges", "spread", "Envelope", "EnvelopeBuilder"]

#: Bins per factor of 10 in t.
BINS_PER_DECADE = 60

_MAX_T = 2**62


def bin_edges() -> np.ndarray:
    """The first step of every bin: 1, 2, 3, …, then ⌊10^(k/B)⌋ without repeats (B = :data:`BINS_PER_DECADE`).

    Bin k holds the steps ``edges[k] <= t < edges[k + 1]``.

    >>> edges = bin_edges()
    >>> edges[:5].tolist(), bool((np.diff(edges) > 0).all())
    ([1, 2, 3, 4, 5], True)
    """
    exponents = np.arange(0, int(np.log10(_MAX_T) * BINS_PER_DECADE) + 2) / BINS_PER_DECADE
    edges = np.unique(np.floor(10.0**exponents).astype(np.int64))
    return edges[edges <= _MAX_T]


#: The names of the per-bin statistics, in the order the compiled engine stores them.
STATISTICS = ("x_min", "x_max", "x_mean", "x_std", "average_min", "average_max", "average_mean")


@dataclass
class Envelope:
    """Per bin: its steps, and the range and mean of x_t and of R(t)/t (and x_t's spread).

    Attributes:
        first, last: the first and last step of the bin that the run reached (``last`` is
            below the bin's end for the bin a run stopped in).
        x_min, x_max, x_mean, x_std: of :math:`x_t` over the bin's steps (``std`` the
            population standard deviation).
        average_min, average_max, average_mean: of :math:`R(t)/t`.
    """

    first: np.ndarray
    last: np.ndarray
    x_min: np.ndarray
    x_max: np.ndarray
    x_mean: np.ndarray
    x_std: np.ndarray
    average_min: np.ndarray
    average_max: np.ndarray
    average_mean: np.ndarray

    @classmethod
    def empty(cls) -> Envelope:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), *(np.empty(0) for _ in STATISTICS))

    @classmethod
    def from_rows(cls, first: np.ndarray, last: np.ndarray, statistics: np.ndarray) -> Envelope:
        """From the steps and a ``(bins, len(STATISTICS))`` array in :data:`STATISTICS` order."""
        return cls(np.asarray(first, np.int64), np.asarray(last, np.int64), *(np.ascontiguousarray(statistics[:, i]) for i in range(len(STATISTICS))))

    @classmethod
    def concatenate(cls, parts: list[Envelope]) -> Envelope:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def __len__(self) -> int:
        return int(self.first.size)

    @property
    def middle(self) -> np.ndarray:
        """Where a bin sits on a log axis: the geometric mean of its first and last step."""
        return np.sqrt(self.first.astype(np.float64) * self.last.astype(np.float64))

    def to_dict(self) -> dict[str, list]:
        return {f.name: getattr(self, f.name).tolist() for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> Envelope:
        return cls(*(np.asarray(data[f.name], dtype=np.int64 if f.name in ("first", "last") else np.float64) for f in fields(cls)))


def spread(sum_of_squares: float, mean: float, count: int) -> float:
    """The population standard deviation from Σ v², the mean and the count (0 where rounding makes the variance negative).

    >>> spread(2.0 * 2.0 + 4.0 * 4.0, 3.0, 2)
    1.0
    """
    return float(np.sqrt(max(sum_of_squares / count - mean * mean, 0.0)))


class EnvelopeBuilder:
    """Accumulates an :class:`Envelope` from per-step values, fed in order, in chunks of any size.

    >>> b = EnvelopeBuilder()
    >>> b.add(1, np.array([0.0, 0.5, 1.0]), np.array([1.0, 2.0, 3.0]))
    >>> e = b.envelope()
    >>> e.first.tolist(), e.x_max.tolist(), e.average_mean.tolist()
    ([1, 2, 3], [0.0, 0.5, 1.0], [1.0, 2.0, 3.0])
    """

    def __init__(self) -> None:
        self.edges = bin_edges()
        self._closed: list[Envelope] = []
        self._open: tuple | None = None  # (bin, first, last, count, sums, minima, maxima) of the bin being filled

    def add(self, first: int, x: np.ndarray, average: np.ndarray) -> None:
        """Steps ``first`` … ``first + len(x) - 1``: x_t and R(t)/t of each."""
        n = len(x)
        if n == 0:
            return
        steps = np.arange(first, first + n, dtype=np.int64)
        bins = np.searchsorted(self.edges, steps, side="right") - 1
        starts = np.concatenate([[0], np.nonzero(np.diff(bins))[0] + 1])
        values = np.stack([x, average, x * x])  # (3, n): the squares for the spread
        counts = np.diff(np.append(starts, n))
        sums = np.add.reduceat(values, starts, axis=1)
        minima = np.minimum.reduceat(values[:2], starts, axis=1)
        maxima = np.maximum.reduceat(values[:2], starts, axis=1)
        lasts = np.append(steps[starts[1:] - 1], steps[-1])
        groups = [(int(bins[s]), int(steps[s]), int(last), int(c), sums[:, i], minima[:, i], maxima[:, i]) for i, (s, last, c) in enumerate(zip(starts, lasts, counts))]
        if self._open is not None and self._open[0] == groups[0][0]:
            b, f, _, c, s, lo, hi = self._open
            _, _, last, c2, s2, lo2, hi2 = groups[0]
            groups[0] = (b, f, last, c + c2, s + s2, np.minimum(lo, lo2), np.maximum(hi, hi2))
        elif self._open is not None:
            self._closed.append(self._as_envelope([self._open]))
        if len(groups) > 1:
            self._closed.append(self._as_envelope(groups[:-1]))
        self._open = groups[-1]

    @staticmethod
    def _as_envelope(groups: list[tuple]) -> Envelope:
        rows = np.empty((len(groups), len(STATISTICS)))
        for i, (_, _, _, count, sums, minima, maxima) in enumerate(groups):
            x_mean = sums[0] / count
            rows[i] = [minima[0], maxima[0], x_mean, spread(sums[2], x_mean, count), minima[1], maxima[1], sums[1] / count]
        return Envelope.from_rows([g[1] for g in groups], [g[2] for g in groups], rows)

    def envelope(self) -> Envelope:
        """Every bin so far, the one being filled included."""
        parts = list(self._closed)
        if self._open is not None:
            parts.append(self._as_envelope([self._open]))
        return Envelope.concatenate(parts)
