"""The three models of the paper's Section 5, as its text describes them.

Reddi, Kale & Kumar (ICLR 2018), Section 5:

* ``logreg``: logistic regression, a linear map from the flattened image to 10 logits
  (784 → 10 on MNIST), trained with the step size α_t = α/√t;
* ``mlp``: one fully connected hidden layer of 100 ReLU units, constant α;
* ``cifarnet``: two convolutional layers of 64 channels with 6×6 kernels, 2×2 max-pooling
  and local response normalisation between them, then fully connected layers of 384 and
  192 units with dropout 0.5 between them, constant α. The layer order is TF-slim's CIFARNET
  (conv, pool, LRN, conv, LRN, pool, fc 384, dropout, fc 192, logits), whose kernels are
  5×5: ``kernel_size=5`` gives that network, the paper's 6×6 is the default. Convolutions
  pad to keep the size ("SAME"); LRN is TensorFlow's ``lrn(depth_radius=4, bias=1,
  alpha=0.001/9, beta=0.75)`` as slim uses it, i.e. :class:`torch.nn.LocalResponseNorm`
  with size 9 and α = 0.001.

The weights start from PyTorch's default initialisation (the paper does not give one).
Any input shape works: on 1×28×28 images CIFARNET's feature map is 7×7 instead of 8×8.

>>> model = build_model("cifarnet", (3, 32, 32))
>>> import torch; model(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 10])
>>> parameter_count(build_model("logreg", (1, 28, 28)))
7850
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .protocol import BETA2S, MODELS, ModelInfo

__all__ = ["BETA2S", "MODELS", "ModelInfo", "LocalResponseNorm", "build_model", "parameter_count"]


CLASSES = 10


class LocalResponseNorm(nn.Module):
    r"""Local response normalisation across channels, computed as one 1×1 convolution.

    .. math:: b_c = a_c \Big/ \Big(k + \frac{α}{n} \sum_{c' = c - \lfloor n/2 \rfloor}^{c + \lfloor (n-1)/2 \rfloor} a_{c'}^2\Big)^{β}

    the same function as :class:`torch.nn.LocalResponseNorm` (``size`` = n; tested equal,
    values and gradients, in float64). Torch sums the window with a 3-d average pool over
    zero-padded squares; here the window sum is a convolution of the squares with a fixed
    banded 0/1 matrix, which runs on the convolution kernels and takes a fraction of the
    time on CIFARNET's feature maps.
    """

    def __init__(self, channels: int, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        c = torch.arange(channels)
        offset = c[None, :] - c[:, None]  # c' - c
        band = ((offset >= -(size // 2)) & (offset <= (size - 1) // 2)).float()
        self.register_buffer("band", band[:, :, None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = F.conv2d(x * x, self.band.to(x.dtype))
        return x * window.mul(self.alpha / self.size).add(self.k).pow(-self.beta)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


def _same_conv(channels_in: int, channels_out: int, kernel_size: int) -> nn.Module:
    """A convolution padded to keep the size, as TensorFlow's "SAME" (an even kernel pads
    one more on the bottom and right)."""
    before = (kernel_size - 1) // 2
    after = kernel_size - 1 - before
    if before == after:
        return nn.Conv2d(channels_in, channels_out, kernel_size, padding=before)
    return nn.Sequential(nn.ZeroPad2d((before, after, before, after)), nn.Conv2d(channels_in, channels_out, kernel_size))


def build_model(name: str, shape: tuple[int, int, int], kernel_size: int = 6) -> nn.Module:
    """The model ``name`` for images of ``shape`` = (channels, height, width), 10 classes."""
    channels, height, width = shape
    features = channels * height * width
    if name == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(features, CLASSES))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(features, 100), nn.ReLU(), nn.Linear(100, CLASSES))
    if name == "cifarnet":
        if not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive integer, got {kernel_size!r}")
        after = (height // 2 // 2) * (width // 2 // 2)
        # max-pooling and ReLU commute, so pool first: the ReLU then sees a quarter of the values
        return nn.Sequential(
            _same_conv(channels, 64, kernel_size),
            nn.MaxPool2d(2, 2),
            nn.ReLU(inplace=True),
            LocalResponseNorm(64, 9, alpha=0.001, beta=0.75, k=1.0),
            _same_conv(64, 64, kernel_size),
            nn.ReLU(inplace=True),
            LocalResponseNorm(64, 9, alpha=0.001, beta=0.75, k=1.0),
            nn.MaxPool2d(2, 2),
            nn.Flatten(),
            nn.Linear(64 * after, 384),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(384, 192),
            nn.ReLU(inplace=True),
            nn.Linear(192, CLASSES),
        )
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
