"""The optimizers: a generic template, weight decay, Adam and AMSGrad."""

from .adam import Adam
from .amsgrad import AMSGrad
from .generic import GenericAdaptiveOptimizer
from .weight_decay import WeightDecay

__all__ = ["GenericAdaptiveOptimizer", "WeightDecay", "Adam", "AMSGrad"]
