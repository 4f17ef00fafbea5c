"""Exact, fast, checkpoint-safe AMSGrad and Adam for PyTorch, and the paper's AdamNC and AdamX.

The public names are imported on first use, so that ``import amsgrad`` is instant and the
``amsgrad`` command's experiments, which do not need torch, do not pay for importing it.

>>> import amsgrad
>>> sorted(amsgrad.__all__)
['AMSGrad', 'Adam', 'AdamNC', 'AdamX', 'GenericAdaptiveOptimizer', 'NonFiniteGradientError', 'WeightDecay']
>>> amsgrad.AMSGrad.__module__
'amsgrad.optimizers.amsgrad'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_EXPORTS = {
    "GenericAdaptiveOptimizer": "amsgrad.optimizers.generic",
    "WeightDecay": "amsgrad.optimizers.weight_decay",
    "Adam": "amsgrad.optimizers.adam",
    "AMSGrad": "amsgrad.optimizers.amsgrad",
    "AdamNC": "amsgrad.optimizers.adamnc",
    "AdamX": "amsgrad.optimizers.adamx",
    "NonFiniteGradientError": "amsgrad.optimizers.nonfinite",
}

__all__ = ["GenericAdaptiveOptimizer", "WeightDecay", "Adam", "AMSGrad", "AdamNC", "AdamX", "NonFiniteGradientError"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from .optimizers import AMSGrad, Adam, AdamNC, AdamX, GenericAdaptiveOptimizer, WeightDecay
    from .optimizers.nonfinite import NonFiniteGradientError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'amsgrad' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
