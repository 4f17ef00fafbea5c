"""Exact, fast, checkpoint-safe AMSGrad and Adam for PyTorch.

>>> import amsgrad
>>> sorted(amsgrad.__all__)
['AMSGrad', 'Adam', 'GenericAdaptiveOptimizer', 'NonFiniteGradientError', 'WeightDecay']
"""

from .optimizers import AMSGrad, Adam, GenericAdaptiveOptimizer, WeightDecay
from .optimizers.nonfinite import NonFiniteGradientError

__all__ = ["GenericAdaptiveOptimizer", "WeightDecay", "Adam", "AMSGrad", "NonFiniteGradientError"]
__version__ = "0.1.0"
