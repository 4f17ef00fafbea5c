"""The paper's synthetic experiments (Reddi, Kale & Kumar, ICLR 2018), as pure functions.

A map of the package:

* :mod:`~amsgrad.experiments.problems` — the linear problems on [-1, 1] (online, stochastic,
  the Theorem 1 and Theorem 2 families) and their gradient sequence.
* :mod:`~amsgrad.experiments.variants` — which optimizer (``adam``, ``amsgrad``, variants)
  with which hyperparameters.
* :mod:`~amsgrad.experiments.simulate` — :func:`simulate`, one optimizer on one problem,
  with either engine:

  - :mod:`~amsgrad.experiments.fast_engine`, the update rules compiled with numba;
  - :mod:`~amsgrad.experiments.torch_engine`, the library's optimizer classes themselves.

  Both keep, besides the sampled trace, every step summarised in log-spaced bins
  (:mod:`~amsgrad.experiments.envelope`), which the plots draw.

* :mod:`~amsgrad.experiments.sweep` — a grid of (β1, β2), run by
  :mod:`~amsgrad.experiments.grid_engine`: every cell at once, vectorised across cells and
  spread over the cores, bit for bit the fast engine's numbers.
* :mod:`~amsgrad.experiments.plotting` — the figures (matplotlib, PNG).
* :mod:`~amsgrad.experiments.tracking` — recording runs with MLflow, in a separate process
  (:mod:`~amsgrad.experiments.recorder`); :mod:`~amsgrad.experiments.mlflow_store`, the local
  SQLite store (checked, created once, written to fast).
* :mod:`~amsgrad.experiments.report` — tables, JSON and the files written to ``--out``.
* :mod:`~amsgrad.experiments.cost` — a job's cost, estimated before it starts, and its limits.
* :mod:`~amsgrad.experiments.stopping` — how long jobs stop on SIGINT/SIGTERM: a flag checked
  between chunks of work.
* :mod:`~amsgrad.experiments.realdata` — the paper's Section 5: real data, its three models,
  a grid search on Dask distributed (``amsgrad train``).

The command line (``amsgrad synthetic``, ``amsgrad sweep``, ``amsgrad train``) is a thin layer over these, in
:mod:`amsgrad.cli`.

>>> from amsgrad.experiments import make_problem, simulate, variant, Settings
>>> online = make_problem("online")
>>> adam = simulate(online, variant("adam"), Settings(), 1_000_000)
>>> amsgrad = simulate(online, variant("amsgrad"), Settings(), 1_000_000)
>>> adam.final_x, amsgrad.final_x < -0.9
(1.0, True)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Light modules (numpy at most) load now. A public name that is also a submodule's name
# (``simulate``) must be bound here: importing the submodule later would otherwise rebind
# the package attribute to the module.
from .simulate import ENGINES, Interrupted, RunResult, Trace, simulate
from .variants import SCHEDULES, VARIANTS, Settings, Variant, variant

#: Names from modules that compile with numba, loaded on first use, so that the tracking
#: process (:mod:`.recorder`) and the command line import only what they need.
_LAZY = {
    "SETTINGS": "problems",
    "Problem": "problems",
    "make_problem": "problems",
    "theorem1_betas": "problems",
}

__all__ = [
    "ENGINES",
    "SCHEDULES",
    "SETTINGS",
    "VARIANTS",
    "Interrupted",
    "Problem",
    "RunResult",
    "Settings",
    "Trace",
    "Variant",
    "make_problem",
    "simulate",
    "theorem1_betas",
    "variant",
]

if TYPE_CHECKING:
    from .problems import SETTINGS, Problem, make_problem, theorem1_betas


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'amsgrad.experiments' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
