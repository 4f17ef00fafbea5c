"""Argument checks shared by every optimizer in the package.

Each check raises ``TypeError`` for a value of the wrong type and ``ValueError`` for a value
out of range. Messages name the argument, the value received and what is accepted, so that a
person reading a traceback knows what to change without opening the source.

The checks run before every step too, so each starts with a test that accepts the common case
(a Python float in range, True or False) in a few comparisons.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

__all__ = [
    "check_bool",
    "check_choice",
    "check_lr",
    "check_betas",
    "check_decay",
    "check_non_negative",
    "check_optional_bool",
    "check_non_negative_int",
]


def _real_number(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise ``TypeError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    return float(value)


def check_non_negative(name: str, value: Any) -> float:
    """A finite real number ``>= 0`` (learning rates, ε, weight decay)."""
    if type(value) is float and 0.0 <= value < math.inf:
        return value
    number = _real_number(name, value)
    if not math.isfinite(number) or number < 0.0:
        raise ValueError(f"Invalid {name}: {value!r} (expected a finite number >= 0)")
    return number


def check_decay(name: str, value: Any) -> float:
    """A decay factor λ in ``(0, 1]`` (``beta1_decay``: 1 keeps β1 constant)."""
    if type(value) is float and 0.0 < value <= 1.0:
        return value
    number = _real_number(name, value)
    if not 0.0 < number <= 1.0:  # NaN fails too
        raise ValueError(f"Invalid {name}: {value!r} (expected a number in (0, 1]; 1 means no decay)")
    return number


def check_lr(name: str, value: Any, read_tensor: bool = True) -> None:
    """A learning rate: a finite number ``>= 0`` or a one-element floating-point tensor.

    A tensor's value is checked where reading it costs no synchronisation (on the CPU), unless
    ``read_tensor=False`` (a capturable group, whose step reads nothing on the host).
    """
    if type(value) is float and 0.0 <= value < math.inf:
        return
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Invalid {name}: a tensor with {value.numel()} elements (expected 1 element)")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        if value.device.type != "cpu" or not read_tensor:
            return
        number = float(value.detach())
        if not math.isfinite(number) or number < 0.0:
            raise ValueError(f"Invalid {name}: {number!r} (expected a finite number >= 0)")
        return
    check_non_negative(name, value)


def check_betas(name: str, value: Any, read_tensors: bool = True) -> None:
    """A pair ``(β1, β2)`` with each ``β`` in ``[0, 1)`` (a one-element tensor's value is checked on the CPU,
    unless ``read_tensors=False``)."""
    if type(value) is tuple and len(value) == 2:
        beta1, beta2 = value
        if type(beta1) is float and type(beta2) is float and 0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0:
            return
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or not hasattr(value, "__getitem__"):
        raise TypeError(f"{name} must be a pair (beta1, beta2), got {value!r}")
    if len(value) != 2:
        raise ValueError(f"Invalid {name}: {value!r} has {len(value)} values (expected 2: (beta1, beta2))")
    for index, beta in enumerate(value):
        if isinstance(beta, torch.Tensor) and beta.numel() == 1:
            if beta.device.type != "cpu" or not read_tensors:
                continue
            beta = float(beta.detach())
        number = _real_number(f"{name}[{index}]", beta)
        if not (0.0 <= number < 1.0):  # also false for NaN
            raise ValueError(f"Invalid {name}[{index}]: {beta!r} (expected 0 <= beta{index + 1} < 1)")


def check_bool(name: str, value: Any) -> None:
    if value is not True and value is not False:
        raise TypeError(f"{name} must be True or False, got {value!r}")


def check_optional_bool(name: str, value: Any) -> None:
    if value is not None and value is not True and value is not False:
        raise TypeError(f"{name} must be None, True or False, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        options = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"Invalid {name}: {value!r} (expected one of {options})")


def check_non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if value < 0:
        raise ValueError(f"Invalid {name}: {value!r} (expected an int >= 0)")
