"""The torch engine: the library's own optimizer classes on a real torch parameter.

This is the experiment exactly as a user would write it (and as the reference does): a
float64 ``torch.nn.Parameter`` x, the loss :math:`f_t(x) = g_t x` differentiated by
autograd, ``optimizer.step()``, then the projection ``x.clamp_(-1, 1)``; the inv-sqrt
schedule is a ``LambdaLR``. It is exact but slow (tens of thousands of steps a second): it
is the yardstick the fast engine is tested against, and it is there for anyone who wants to
see the classes themselves at work.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .problems import X_START, X_STAR, Problem, gradients
from .simulate import Trace
from .variants import Settings, Variant

__all__ = ["TorchRun"]


def _inv_sqrt(k: int) -> float:
    # LambdaLR's multiplier for epoch k, which is step t = k + 1: α_t = α/√t.
    return 1.0 / math.sqrt(k + 1)


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
        self.param = torch.nn.Parameter(torch.tensor([X_START], dtype=torch.float64))
        self.optimizer = variant.make_optimizer([self.param], settings)
        self.scheduler = (
            torch.optim.lr_scheduler.LambdaLR(self.optimizer, _inv_sqrt) if settings.schedule == "inv-sqrt" else None
        )
        self.t = 0
        self.regret_sum = 0.0
        self._pending: list[tuple[int, float, float, float]] = []

    @property
    def x(self) -> float:
        """The current iterate: :math:`x_{t+1}` after t steps."""
        return float(self.param.item())

    def advance(self, count: int, record_every: int) -> Trace:
        """Run ``count`` more steps; return the :class:`~amsgrad.experiments.Trace` recorded."""
        param, optimizer, scheduler = self.param, self.optimizer, self.scheduler
        gs = gradients(self.problem, self.t + 1, count).tolist()
        for g in gs:
            t = self.t + 1
            x_t = param.item()
            regret = g * (x_t - X_STAR)  # f_t(x_t) - f_t(x*)
            optimizer.zero_grad()
            (param * g).sum().backward()  # f_t(x) = g_t x
            optimizer.step()
            with torch.no_grad():
                param.clamp_(-1.0, 1.0)
            if scheduler is not None:
                scheduler.step()
            self.regret_sum += regret
            self.t = t
            if record_every and t % record_every == 0:
                self._pending.append((t, regret, x_t, self.regret_sum / t))
        return self.flush()

    def flush(self) -> Trace:
        """The records not yet returned (after Ctrl-C stopped :meth:`advance` halfway)."""
        pending, self._pending = self._pending, []
        if not pending:
            return Trace.empty()
        step, regret, x, average = zip(*pending)
        return Trace(np.array(step, np.int64), np.array(regret), np.array(x), np.array(average))
