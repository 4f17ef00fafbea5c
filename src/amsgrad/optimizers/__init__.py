"""The optimizers: a generic template, weight decay, Adam, AMSGrad, AdamNC and AdamX."""

from .adam import Adam
from .adamnc import AdamNC
from .adamx import AdamX
from .amsgrad import AMSGrad
from .generic import GenericAdaptiveOptimizer
from .weight_decay import WeightDecay

__all__ = ["GenericAdaptiveOptimizer", "WeightDecay", "Adam", "AMSGrad", "AdamNC", "AdamX"]
