"""The torch engine: the library's own optimizer classes (Adam, AMSGrad, AdamNC, AdamX) on a real torch parameter.

This is the experiment as a user would write it: a float64 ``torch.nn.Parameter`` x, its
gradient :math:`\\nabla f_t(x_t) = g_t` in ``x.grad`` (what ``(g_t * x).backward()`` puts
there, without autograd's cost), ``optimizer.step()``, then the projection
``x.clamp_(-1, 1)``; the inv-sqrt schedule is a ``LambdaLR``. It is exact but slow (tens of
thousands of steps a second), and is the yardstick the fast engine is tested against.

Because the optimizers work element by element, one parameter with n elements runs n
problems at once (:class:`TorchBatchRun`), each element exactly as if it were alone; the
engine tests use this to cover every setting in one pass.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .envelope import Envelope, EnvelopeBuilder
from .problems import X_START, X_STAR, Problem, gradients
from .simulate import Trace
from .variants import Settings, Variant

__all__ = ["TorchRun", "TorchBatchRun"]


def _inv_sqrt(k: int) -> float:
    # LambdaLR's multiplier for epoch k, which is step t = k + 1: α_t = α/√t.
    return 1.0 / math.sqrt(k + 1)


class TorchBatchRun:
    """One optimizer on several problems at once, one element of the parameter each.

    >>> from amsgrad.experiments import make_problem, variant, Settings
    >>> run = TorchBatchRun([make_problem("online"), make_problem("stochastic")], variant("adam"), Settings())
    >>> traces = run.advance(2000, record_every=1000)
    >>> run.t, [t.step.tolist() for t in traces]
    (2000, [[1000, 2000], [1000, 2000]])
    """

    engine = "torch"

    def __init__(self, problems: Sequence[Problem], variant: Variant, settings: Settings):
        self.problems, self.variant, self.settings = list(problems), variant, settings
        n = len(self.problems)
        self.param = torch.nn.Parameter(torch.full((n,), X_START, dtype=torch.float64))
        self.param.grad = torch.zeros_like(self.param)
        self.optimizer = variant.make_optimizer([self.param], settings)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _inv_sqrt) if settings.schedule == "inv-sqrt" else None
        self.t = 0
        self.regret_sums = np.zeros(n)
        self._pending: list[Trace] = [Trace.empty() for _ in range(n)]
        self._envelopes = [EnvelopeBuilder() for _ in range(n)]

    @property
    def xs(self) -> np.ndarray:
        """The current iterates, one per problem."""
        return self.param.detach().numpy().copy()

    def advance(self, count: int, record_every: int) -> list[Trace]:
        """Run ``count`` more steps; return each problem's :class:`~amsgrad.experiments.Trace`."""
        first = self.t + 1
        g = np.stack([gradients(p, first, count) for p in self.problems], axis=1)  # (count, n)
        x_seen = np.empty_like(g)  # x_t, the point each step's loss is evaluated at
        param, grad, optimizer, scheduler = self.param, self.param.grad, self.optimizer, self.scheduler
        x_now = param.detach().numpy()  # a view: it follows the parameter
        g_rows = torch.from_numpy(g)
        done = 0
        try:
            for i in range(count):
                x_seen[i] = x_now
                grad.copy_(g_rows[i])
                optimizer.step()
                with torch.no_grad():
                    param.clamp_(-1.0, 1.0)
                if scheduler is not None:
                    scheduler.step()
                done = i + 1
        finally:  # after Ctrl-C too: account for the steps that were taken
            self._account(first, g[:done], x_seen[:done], record_every)
        return self.flush()

    def _account(self, first: int, g: np.ndarray, x_seen: np.ndarray, record_every: int) -> None:
        if not len(g):
            return
        regret = g * (x_seen - X_STAR)  # f_t(x_t) - f_t(x*)
        running = regret.copy()
        running[0] += self.regret_sums  # R(t), summed in order, as a scalar loop would
        np.cumsum(running, axis=0, out=running)
        self.regret_sums = running[-1].copy()
        steps = np.arange(first, first + len(g))
        self.t = int(steps[-1])
        average = running / steps[:, None]
        for j, builder in enumerate(self._envelopes):
            builder.add(first, x_seen[:, j], average[:, j])
        if record_every:
            rows = np.nonzero(steps % record_every == 0)[0]
            for j in range(len(self.problems)):
                part = Trace(steps[rows], regret[rows, j], x_seen[rows, j], average[rows, j])
                self._pending[j] = Trace.concatenate([self._pending[j], part])

    def flush(self) -> list[Trace]:
        """The records not yet returned."""
        pending, self._pending = self._pending, [Trace.empty() for _ in self.problems]
        return pending

    def envelopes(self) -> list[Envelope]:
        """Every step so far of each problem, in the log-spaced bins of :mod:`~amsgrad.experiments.envelope`."""
        return [builder.envelope() for builder in self._envelopes]


class TorchRun:
    """One optimizer on one problem, stepped by the library's optimizer class.

    >>> from amsgrad.experiments import make_problem, variant, Settings
    >>> run = TorchRun(make_problem("online"), variant("amsgrad"), Settings())
    >>> trace = run.advance(2000, record_every=1000)
    >>> run.t, trace.step.tolist()
    (2000, [1000, 2000])
    """

    engine = "torch"

    def __init__(self, problem: Problem, variant: Variant, settings: Settings):
        self.problem, self.variant, self.settings = problem, variant, settings
        self._batch = TorchBatchRun([problem], variant, settings)

    @property
    def t(self) -> int:
        return self._batch.t

    @property
    def x(self) -> float:
        """The current iterate: :math:`x_{t+1}` after t steps."""
        return float(self._batch.xs[0])

    @property
    def regret_sum(self) -> float:
        """R(t), the regret of the steps so far."""
        return float(self._batch.regret_sums[0])

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._batch.optimizer

    def advance(self, count: int, record_every: int) -> Trace:
        """Run ``count`` more steps; return the :class:`~amsgrad.experiments.Trace` recorded."""
        return self._batch.advance(count, record_every)[0]

    def flush(self) -> Trace:
        return self._batch.flush()[0]

    def envelope(self) -> Envelope:
        """Every step so far, in log-spaced bins."""
        return self._batch.envelopes()[0]
