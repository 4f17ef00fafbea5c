"""The paper's models: shapes, sizes, and the fast LRN equal to torch's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from amsgrad.experiments.realdata.models import LocalResponseNorm, build_model, parameter_count


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("name", ["logreg", "mlp", "cifarnet"])
def test_ten_logits_for_any_input(name, shape):
    model = build_model(name, shape)
    assert model(torch.zeros(3, *shape)).shape == (3, 10)


def test_sizes_from_the_paper():
    assert parameter_count(build_model("logreg", (1, 28, 28))) == 784 * 10 + 10
    assert parameter_count(build_model("mlp", (1, 28, 28))) == 784 * 100 + 100 + 100 * 10 + 10
    for k in (6, 5):
        convs = (3 * 64 * k * k + 64) + (64 * 64 * k * k + 64)
        dense = (8 * 8 * 64 * 384 + 384) + (384 * 192 + 192) + (192 * 10 + 10)
        assert parameter_count(build_model("cifarnet", (3, 32, 32), kernel_size=k)) == convs + dense


@pytest.mark.parametrize("kernel", [5, 6])
def test_same_padding_as_tensorflow(kernel):
    """TensorFlow's "SAME": the output keeps the size; an even kernel pads 2 before, 3 after."""
    torch.manual_seed(0)
    conv = build_model("cifarnet", (1, 12, 12), kernel_size=kernel)[0]
    weight, bias = [p for p in conv.parameters()]
    x = torch.randn(2, 1, 12, 12)
    before, after = (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2
    expected = F.conv2d(F.pad(x, (before, after, before, after)), weight, bias)
    assert conv(x).shape == (2, 64, 12, 12)
    torch.testing.assert_close(conv(x), expected)


def test_dropout_only_in_training():
    model = build_model("cifarnet", (1, 28, 28)).eval()
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.equal(a, model(x))


@pytest.mark.parametrize("channels, size", [(64, 9), (7, 4), (5, 1)])
def test_local_response_norm_equals_torch_in_float64(channels, size):
    torch.manual_seed(0)
    x = torch.randn(3, channels, 5, 4, dtype=torch.float64, requires_grad=True)
    ours = LocalResponseNorm(channels, size, alpha=0.3, beta=0.75, k=1.5).double()
    theirs = torch.nn.LocalResponseNorm(size, alpha=0.3, beta=0.75, k=1.5)
    a, b = ours(x), theirs(x)
    torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    grad = torch.randn_like(a)
    (ga,) = torch.autograd.grad(a, x, grad)
    (gb,) = torch.autograd.grad(b, x, grad)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-14)


def test_unknown_model_and_bad_kernel():
    with pytest.raises(ValueError, match="unknown model 'resnet'; choose from logreg, mlp, cifarnet"):
        build_model("resnet", (1, 28, 28))
    with pytest.raises(ValueError, match="kernel_size must be a positive integer, got 0"):
        build_model("cifarnet", (1, 28, 28), kernel_size=0)
