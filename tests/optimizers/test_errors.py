"""Bad input: a clear error that names the argument, the value and the accepted range."""

import math

import pytest
import torch

import amsgrad


def params():
    return [torch.nn.Parameter(torch.ones(2))]


# (case id, keyword arguments, exception, message pattern)
CONSTRUCTOR_ERRORS = [
    ("negative-lr", dict(lr=-0.1), ValueError, r"Invalid lr: -0\.1 \(expected a finite number >= 0\)"),
    ("nan-lr", dict(lr=math.nan), ValueError, r"Invalid lr: nan \(expected a finite number >= 0\)"),
    ("inf-lr", dict(lr=math.inf), ValueError, r"Invalid lr: inf"),
    ("string-lr", dict(lr="0.1"), TypeError, r"lr must be a real number, got '0\.1' of type str"),
    ("bool-lr", dict(lr=True), TypeError, r"lr must be a real number, got True"),
    ("two-element-lr", dict(lr=torch.tensor([0.1, 0.2])), ValueError, r"Invalid lr: a tensor with 2 elements \(expected 1"),
    ("negative-tensor-lr", dict(lr=torch.tensor(-1.0)), ValueError, r"Invalid lr: -1\.0"),
    ("integer-tensor-lr", dict(lr=torch.tensor(1)), TypeError, r"lr must be a floating-point tensor"),
    ("beta1-one", dict(betas=(1.0, 0.999)), ValueError, r"Invalid betas\[0\]: 1\.0 \(expected 0 <= beta1 < 1\)"),
    ("beta2-negative", dict(betas=(0.9, -0.1)), ValueError, r"Invalid betas\[1\]: -0\.1 \(expected 0 <= beta2 < 1\)"),
    ("beta2-nan", dict(betas=(0.9, math.nan)), ValueError, r"Invalid betas\[1\]: nan"),
    ("betas-length", dict(betas=(0.9,)), ValueError, r"Invalid betas: \(0\.9,\) has 1 values \(expected 2"),
    ("betas-type", dict(betas=0.9), TypeError, r"betas must be a pair \(beta1, beta2\), got 0\.9"),
    ("beta-string", dict(betas=("a", 0.9)), TypeError, r"betas\[0\] must be a real number, got 'a'"),
    ("negative-eps", dict(eps=-1e-8), ValueError, r"Invalid eps: -1e-08 \(expected a finite number >= 0\)"),
    ("nan-eps", dict(eps=math.nan), ValueError, r"Invalid eps: nan"),
    ("negative-weight-decay", dict(weight_decay=-0.1), ValueError, r"Invalid weight_decay: -0\.1 \(expected a finite number >= 0\)"),
    ("nan-weight-decay", dict(weight_decay=math.nan), ValueError, r"Invalid weight_decay: nan"),
    ("inf-weight-decay", dict(weight_decay=math.inf), ValueError, r"Invalid weight_decay: inf"),
    ("string-weight-decay", dict(weight_decay="l2"), TypeError, r"weight_decay must be a WeightDecay, a number >= 0"),
    ("optimized-update-type", dict(optimized_update="yes"), TypeError, r"optimized_update must be True or False, got 'yes'"),
    ("maximize-type", dict(maximize=1), TypeError, r"maximize must be True or False, got 1"),
    ("bias-correction-type", dict(bias_correction=None), TypeError, r"bias_correction must be True or False"),
    ("amsgrad-type", dict(amsgrad="true"), TypeError, r"amsgrad must be True or False"),
    ("max-of", dict(max_of="bias"), ValueError, r"Invalid max_of: 'bias' \(expected one of 'raw', 'corrected'\)"),
    ("foreach-type", dict(foreach="yes"), TypeError, r"foreach must be None, True or False, got 'yes'"),
    ("capturable-type", dict(capturable=1), TypeError, r"capturable must be True or False, got 1"),
    ("differentiable-type", dict(differentiable="no"), TypeError, r"differentiable must be True or False"),
    ("capturable-fused", dict(capturable=True, fused=True), ValueError,
     r"Invalid fused: True with capturable=True: capturable=True promises a step without host synchronisation.*"
     r"the fused kernels read each step count on the host"),
    ("capturable-readable", dict(capturable=True, foreach=False), ValueError,
     r"Invalid foreach: False with capturable=True: .*the readable path reads each step count on the host"),
    ("capturable-differentiable", dict(capturable=True, differentiable=True), ValueError,
     r"Invalid differentiable: True with capturable=True"),
    ("capturable-state-dtype", dict(capturable=True, state_dtype=torch.float64), ValueError,
     r"Invalid state_dtype: torch\.float64 with capturable=True"),
    ("capturable-nonfinite", dict(capturable=True, nonfinite="skip"), ValueError,
     r"Invalid nonfinite: 'skip' with capturable=True: .*reads the gradients' finiteness on the host"),
    ("differentiable-fused", dict(differentiable=True, fused=True), ValueError,
     r"Invalid fused: True with differentiable=True: autograd can record only the readable per-tensor path"),
    ("differentiable-foreach", dict(differentiable=True, foreach=True), ValueError,
     r"Invalid foreach: True with differentiable=True"),
    ("differentiable-lr-requires-grad", dict(differentiable=True, lr=torch.tensor(0.1, requires_grad=True)),
     ValueError, r"Invalid lr: a tensor that requires grad with differentiable=True"),
]


@pytest.mark.parametrize("kwargs, error, pattern", [c[1:] for c in CONSTRUCTOR_ERRORS], ids=[c[0] for c in CONSTRUCTOR_ERRORS])
def test_constructor_rejects_bad_input(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        amsgrad.AMSGrad(params(), **kwargs)


@pytest.mark.parametrize("kwargs, error, pattern", [c[1:] for c in CONSTRUCTOR_ERRORS if "amsgrad" not in c[1] and "max_of" not in c[1]],
                         ids=[c[0] for c in CONSTRUCTOR_ERRORS if "amsgrad" not in c[1] and "max_of" not in c[1]])
def test_adam_rejects_the_same_bad_input(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        amsgrad.Adam(params(), **kwargs)


WEIGHT_DECAY_ERRORS = [
    (dict(weight_decay=-1.0), ValueError, r"Invalid weight_decay: -1\.0"),
    (dict(weight_decay=math.nan), ValueError, r"Invalid weight_decay: nan"),
    (dict(weight_decay=None), TypeError, r"weight_decay must be a real number, got None"),
    (dict(weight_decouple="no"), TypeError, r"weight_decouple must be True or False"),
    (dict(absolute=1), TypeError, r"absolute must be True or False"),
    (dict(weight_decouple=False, absolute=True), ValueError, r"Invalid absolute: True with weight_decouple=False"),
]


@pytest.mark.parametrize("kwargs, error, pattern", WEIGHT_DECAY_ERRORS)
def test_weight_decay_rejects_bad_input(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        amsgrad.WeightDecay(**kwargs)


@pytest.mark.parametrize("kwargs, error, pattern", [c[1:] for c in CONSTRUCTOR_ERRORS if "weight_decay" not in c[1]],
                         ids=[c[0] for c in CONSTRUCTOR_ERRORS if "weight_decay" not in c[1]])
def test_add_param_group_rejects_bad_input_and_changes_nothing(kwargs, error, pattern):
    optimizer = amsgrad.AMSGrad(params())
    before = optimizer.state_dict()
    with pytest.raises(error, match=r"param group 1: " + pattern):
        optimizer.add_param_group({"params": params(), **kwargs})
    assert len(optimizer.param_groups) == 1
    assert optimizer.state_dict() == before


def test_group_weight_decay_is_checked():
    optimizer = amsgrad.AMSGrad(params())
    with pytest.raises(ValueError, match=r"param group 1: Invalid weight_decay: -1"):
        optimizer.add_param_group({"params": params(), "weight_decay": -1})
    with pytest.raises(TypeError, match=r"param group 1: decoupled_weight_decay must be True or False"):
        optimizer.add_param_group({"params": params(), "decoupled_weight_decay": "yes"})
    assert len(optimizer.param_groups) == 1


def test_a_bad_group_in_the_constructor_names_its_index():
    with pytest.raises(ValueError, match=r"param group 1: Invalid betas\[1\]: 1\.5"):
        amsgrad.AMSGrad([{"params": params()}, {"params": params(), "betas": (0.9, 1.5)}])


def test_sparse_gradient_is_refused_before_anything_changes():
    dense = torch.nn.Parameter(torch.ones(3))
    sparse = torch.nn.Parameter(torch.ones(3))
    optimizer = amsgrad.AMSGrad([dense, sparse], lr=0.1)
    dense.grad = torch.ones(3)
    sparse.grad = torch.sparse_coo_tensor([[0]], [1.0], (3,), check_invariants=True)
    with pytest.raises(RuntimeError, match=r"AMSGrad does not support sparse gradients .*shape \(3,\)"):
        optimizer.step()
    assert torch.equal(dense.detach(), torch.ones(3))
    assert not optimizer.state


def test_param_group_must_be_a_dict():
    optimizer = amsgrad.AMSGrad(params())
    with pytest.raises(TypeError, match=r"param_group must be a dict, got list"):
        optimizer.add_param_group([torch.nn.Parameter(torch.ones(1))])
