"""Weight decay as a strategy object, applied before the adaptive update."""

from __future__ import annotations

from typing import Any

import torch

from ._validation import check_bool, check_non_negative

__all__ = ["WeightDecay"]


class WeightDecay:
    r"""How an optimizer shrinks the parameters, with strength λ = ``weight_decay``.

    Three modes, chosen by the flags:

    ============================  ==========================================  ==================
    flags                         update, applied before the Adam step        also known as
    ============================  ==========================================  ==================
    ``weight_decouple=False``     :math:`g_t \leftarrow g_t + λθ_{t-1}`       L2, ``torch.optim.Adam``
    ``weight_decouple=True``      :math:`θ_{t-1} \leftarrow θ_{t-1}(1-α_tλ)`  AdamW (Loshchilov & Hutter, ICLR 2019)
    ``... , absolute=True``       :math:`θ_{t-1} \leftarrow θ_{t-1}(1-λ)`     decay independent of α_t
    ============================  ==========================================  ==================

    The object only describes the decay: optimizers copy its three settings into every param
    group (keys ``weight_decay``, ``decoupled_weight_decay``, ``absolute_weight_decay``), so they can
    differ per group and are saved by ``state_dict()``. ``decoupled_weight_decay`` is the key
    ``torch.optim.Adam``/``AdamW`` use for the same choice, so state dicts move between them.

    With λ = 0 every mode is a no-op and costs nothing.

    A plain number λ for ``weight_decay`` means coupled L2 *everywhere*, exactly as in
    ``torch.optim.Adam``: in the constructors and in a param-group dict, whatever the
    constructor's mode (see :meth:`group_entries`). So ``{"params": biases, "weight_decay": 0.0}``
    turns decay off for a group, and ``{"params": p, "weight_decay": 0.1}`` is L2 even beside a
    decoupled default. A :class:`WeightDecay` in a group dict gives its own mode, and so do
    torch's key ``decoupled_weight_decay`` (and ``absolute_weight_decay``) written in the dict.
    ``None`` means no decay (λ = 0, torch's default mode).

    Compared with others: ``torch.optim.Adam(weight_decay=λ)`` is coupled L2 and
    ``torch.optim.AdamW(weight_decay=λ)`` (or ``Adam(..., decoupled_weight_decay=True)``) is the
    decoupled mode (torch has no absolute mode); in an ``AdamW`` group dict a plain λ inherits
    AdamW's decoupled mode, which here is written ``WeightDecay(λ)`` (or the plain λ with
    ``"decoupled_weight_decay": True``). optax's ``adamw`` adds λθ to the *update* before it is
    scaled by α, which is the decoupled mode too.

    References:
        Ilya Loshchilov and Frank Hutter. *Decoupled Weight Decay Regularization*. ICLR 2019.
        arXiv:1711.05101.

    Args:
        weight_decay: λ, a finite number ``>= 0``.
        weight_decouple: decay the parameters directly (True) or add λθ to the gradient (False).
        absolute: with ``weight_decouple=True``, decay by λ instead of α_t·λ.

    Example:
        >>> import torch, amsgrad
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = amsgrad.AMSGrad([w], lr=0.1, weight_decay=amsgrad.WeightDecay(0.5))
        >>> w.grad = torch.zeros(3)
        >>> _ = opt.step()
        >>> w  # a zero gradient leaves only the decoupled decay: 1 - 0.1 * 0.5
        Parameter containing:
        tensor([0.9500, 0.9500, 0.9500], requires_grad=True)
    """

    def __init__(self, weight_decay: float = 0.0, weight_decouple: bool = True, absolute: bool = False):
        self.weight_decay = check_non_negative("weight_decay", weight_decay)
        check_bool("weight_decouple", weight_decouple)
        check_bool("absolute", absolute)
        if absolute and not weight_decouple:
            raise ValueError(
                "Invalid absolute: True with weight_decouple=False (absolute decay θ(1 - λ) is a "
                "decoupled decay; use weight_decouple=True, or absolute=False for L2)"
            )
        self.weight_decouple = weight_decouple
        self.absolute = absolute

    @classmethod
    def coerce(cls, value: Any) -> "WeightDecay":
        """``None`` means no decay (in torch's default, coupled, mode); a plain number λ means coupled
        L2, as in ``torch.optim.Adam``."""
        if value is None:
            return cls(0.0, weight_decouple=False)
        if isinstance(value, cls):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"weight_decay must be a WeightDecay, a number >= 0 (coupled L2) or None, got {value!r}"
            )
        return cls(value, weight_decouple=False)

    @classmethod
    def group_entries(cls, group: dict[str, Any]) -> dict[str, Any]:
        """The decay entries that a param-group dict given by the user sets (the rest it inherits).

        * no ``weight_decay`` key: only the mode keys written in the dict (``decoupled_weight_decay``,
          ``absolute_weight_decay``); λ and anything unwritten come from the constructor;
        * a :class:`WeightDecay`: its three entries (a mode key in the dict must agree with it);
        * a plain number λ (or None for 0): coupled L2, as in ``torch.optim.Adam``, unless the dict
          writes ``decoupled_weight_decay`` or ``absolute_weight_decay`` (absolute decay is decoupled).
        """
        modes = {key: group[key] for key in ("decoupled_weight_decay", "absolute_weight_decay") if key in group}
        if "weight_decay" not in group:
            return modes
        value = group["weight_decay"]
        if isinstance(value, cls):
            entries = value.defaults()
            for key, given in modes.items():
                if given != entries[key]:
                    raise ValueError(
                        f"Invalid {key}: {given!r} beside weight_decay={value!r}, which has {key}="
                        f"{entries[key]!r} (give the mode once: in the WeightDecay, or with a plain number)"
                    )
            return entries
        decay = cls.coerce(value)  # refuses what is neither a number nor None
        absolute = modes.get("absolute_weight_decay", False)
        return {
            "weight_decay": decay.weight_decay,
            "decoupled_weight_decay": modes.get("decoupled_weight_decay", absolute is True),
            "absolute_weight_decay": absolute,
        }

    def defaults(self) -> dict[str, Any]:
        """The param-group entries that carry this decay."""
        return {
            "weight_decay": self.weight_decay,
            "decoupled_weight_decay": self.weight_decouple,
            "absolute_weight_decay": self.absolute,
        }

    @staticmethod
    def apply(param: torch.Tensor, grad: torch.Tensor, group: dict[str, Any], lr: float) -> torch.Tensor:
        """Apply the group's decay: shrink ``param`` in place or return a new, decayed gradient.

        ``grad`` itself is never modified, since it is the caller's ``.grad``.
        """
        decay = group["weight_decay"]
        if decay == 0.0:
            return grad
        if group["decoupled_weight_decay"]:
            factor = 1.0 - decay if group.get("absolute_weight_decay", False) else 1.0 - lr * decay
            param.mul_(factor)
            return grad
        return grad.add(param, alpha=decay)

    def __repr__(self) -> str:
        return (
            f"WeightDecay(weight_decay={self.weight_decay}, weight_decouple={self.weight_decouple}, "
            f"absolute={self.absolute})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WeightDecay) and self.defaults() == other.defaults()
