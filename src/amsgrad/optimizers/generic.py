"""The template every optimizer in the package is built on."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from operator import attrgetter
from typing import Any, Callable, Iterable

import torch

from .. import kernels
from . import nonfinite
from ._validation import check_betas, check_bool, check_lr, check_non_negative, check_optional_bool
from .weight_decay import WeightDecay

__all__ = ["GenericAdaptiveOptimizer"]

ParamState = dict[str, Any]
ParamGroup = dict[str, Any]


class GenericAdaptiveOptimizer(torch.optim.Optimizer):
    r"""A ``torch.optim.Optimizer`` whose update is written per parameter, in two hooks.

    A subclass says how to create a parameter's state (:meth:`init_state`) and how to update
    one parameter from its gradient (:meth:`step_param`). This class does the rest, once for
    every optimizer built on it:

    * ``step(closure)`` evaluates the closure with gradients enabled and returns its loss;
    * parameters whose ``.grad`` is ``None`` are skipped; sparse gradients are refused before
      anything is modified;
    * ``maximize=True`` hands ``-g`` to the hooks (``.grad`` is never modified in place);
    * complex parameters are updated as their real view (``torch.view_as_real``), so a complex
      number is two independent real coordinates, as in ``torch.optim``;
    * every setting is validated, in the constructor and in :meth:`add_param_group`, with an
      error that names the argument, the value and the accepted range;
    * every setting is checked again before each step, and every refusal (sparse gradient,
      invalid setting, ``nonfinite="raise"``, an impossible ``fused=True``) comes before
      anything is modified;
    * ``differentiable=True`` (per group, as in ``torch.optim``) runs the hooks with autograd
      recording, so the step can be differentiated;
    * param groups loaded from an older or foreign ``state_dict`` (``torch.optim.Adam``'s, say)
      get any missing setting with its meaning in ``torch.optim`` (see :meth:`load_state_dict`),
      and :meth:`implementations` (and the ``repr``) tell which implementation runs each group.

    The hooks are the readable reference of each optimizer's math; a subclass is a few lines.
    This is the design of labml_nn's annotated optimizers, with the settings kept in the param
    groups (not on the instance) so that they survive ``state_dict()``/``load_state_dict()``.

    Args:
        params: an iterable of tensors or of param-group dicts.
        defaults: the settings of every param group (copied, never modified).
        lr: the learning rate α, a number ``>= 0`` or a one-element tensor.
        betas: (β1, β2), each in ``[0, 1)``.
        eps: ε, a number ``>= 0``.

    Example — RMSProp (Tieleman & Hinton, 2012) in two hooks,
    :math:`v_t = β_2 v_{t-1} + (1-β_2) g_t^2,\; θ_t = θ_{t-1} - α g_t / (\sqrt{v_t} + ε)`,
    which is ``torch.optim.RMSprop`` exactly:

        >>> import torch
        >>> from amsgrad import GenericAdaptiveOptimizer
        >>> class RMSProp(GenericAdaptiveOptimizer):
        ...     def __init__(self, params, lr=1e-2, beta=0.99, eps=1e-8):
        ...         super().__init__(params, {}, lr=lr, betas=(0.0, beta), eps=eps)
        ...     def init_state(self, state, group, param):
        ...         state["square_avg"] = torch.zeros_like(param)
        ...     def step_param(self, state, group, grad, param):
        ...         _, beta = group["betas"]
        ...         v = state["square_avg"].mul_(beta).addcmul_(grad, grad, value=1 - beta)
        ...         param.addcdiv_(grad, v.sqrt().add_(group["eps"]), value=-group["lr"])
        >>> w1 = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> w2 = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> ours, theirs = RMSProp([w1]), torch.optim.RMSprop([w2], lr=1e-2, alpha=0.99, eps=1e-8)
        >>> for _ in range(50):
        ...     for w, opt in ((w1, ours), (w2, theirs)):
        ...         opt.zero_grad()
        ...         (w ** 2).sum().backward()
        ...         _ = opt.step()
        >>> torch.equal(w1, w2)
        True
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[ParamGroup],
        defaults: dict[str, Any],
        lr: float | torch.Tensor,
        betas: tuple[float, float],
        eps: float,
    ):
        defaults = dict(defaults)
        defaults.update(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps)
        defaults.setdefault("maximize", False)
        defaults.setdefault("nonfinite", "propagate")
        defaults.setdefault("skipped_steps", 0)
        defaults.setdefault("differentiable", False)
        defaults.update(WeightDecay.coerce(defaults.pop("weight_decay", None)).defaults())
        self.validate_group(defaults)
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ hooks
    def init_state(self, state: ParamState, group: ParamGroup, param: torch.Tensor) -> None:
        """Fill the empty ``state`` of ``param`` (called before its first update)."""
        raise NotImplementedError

    def step_param(self, state: ParamState, group: ParamGroup, grad: torch.Tensor, param: torch.Tensor) -> None:
        """Update ``param`` in place from ``grad`` (never modify ``grad``: it may be ``.grad``)."""
        raise NotImplementedError

    # ------------------------------------------------------------- validation
    def validate_group(self, group: ParamGroup) -> None:
        """Check every setting of ``group``, raising ``TypeError``/``ValueError`` on the first bad one.

        This is the one place where settings are checked: for the constructor's defaults, for
        :meth:`add_param_group`, for the groups of a state dict being loaded, and before every
        step (a group changed since, by a scheduler or by hand, is refused before anything is
        modified). Subclasses that add settings extend this and call ``super()``; the callers
        prefix the message with the group's index.
        """
        read = not group.get("capturable", False)  # a capturable step reads no tensor on the host
        check_lr("lr", group["lr"], read)
        check_betas("betas", group["betas"], read)
        check_non_negative("eps", group["eps"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_bool("decoupled_weight_decay", group["decoupled_weight_decay"])
        check_bool("absolute_weight_decay", group["absolute_weight_decay"])
        if group["absolute_weight_decay"] and not group["decoupled_weight_decay"]:
            raise ValueError(
                "Invalid absolute_weight_decay: True with decoupled_weight_decay=False (absolute decay θ(1 - λ) "
                "is a decoupled decay; set decoupled_weight_decay=True, or absolute_weight_decay=False for L2)"
            )
        check_bool("maximize", group["maximize"])
        check_bool("differentiable", group.get("differentiable", False))
        nonfinite.check_group(group)
        for key in ("foreach", "fused"):
            if key in group:
                check_optional_bool(key, group[key])

    def add_param_group(self, param_group: ParamGroup) -> None:
        """Add a group; its settings are checked before the optimizer changes at all.

        A plain number for ``weight_decay`` in the dict is coupled L2, as in ``torch.optim.Adam``,
        whatever the constructor's mode; a :class:`~amsgrad.WeightDecay`, or torch's key
        ``decoupled_weight_decay`` written in the dict, gives the mode (see
        :meth:`amsgrad.WeightDecay.group_entries`).
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        try:
            group.update(WeightDecay.group_entries(group))
            if isinstance(group.get("betas"), list):
                group["betas"] = tuple(group["betas"])
            self.validate_group({**self.defaults, **group})
        except (TypeError, ValueError) as error:
            raise type(error)(f"param group {len(self.param_groups)}: {error}") from None
        super().add_param_group(group)

    # -------------------------------------------------------- loading a state
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict, as ``torch.optim`` does: the saved settings of each group win.

        In order: the ``register_load_state_dict_pre_hook`` hooks run first, on a shallow copy;
        then each saved group is completed and checked, before anything changes (a bad group is a
        ``TypeError``/``ValueError`` naming it); then the state is loaded and finished; then the
        ``register_load_state_dict_post_hook`` hooks run and see the final state.

        * Completing a group: a setting that the saved group lacks (a ``torch.optim.Adam``
          state dict has none of this library's keys) gets what its absence means in
          ``torch.optim``, where it changes the math (``optimized_update=False``: torch's ε in
          torch's form; ``bias_correction=True``; the maximum of raw :math:`v_t`; no absolute
          decay; ...), and the constructor's value otherwise (``nonfinite``, ``state_dtype``,
          ``foreach``, ``fused``, ``capturable``, ...). See :meth:`_complete_loaded_group`.
        * Finishing the state: the optimizer never shares tensors with ``state_dict``
          (``torch.optim`` adopts each saved tensor that already has the parameter's dtype and
          device, so that an optimizer loaded from another's live ``state_dict()``, or two loaded
          from one dict, would advance the same moments and step counters: those are copied);
          state tensors keep the dtype :meth:`_state_dtype` asks for (``torch.optim`` casts every
          floating state tensor but ``step`` to the parameter's dtype, which would round a float32
          state of a bfloat16 parameter: such tensors are converted again, from the dict's own
          tensors); a ``step`` saved as a plain number becomes a step tensor.
        * A ``UserWarning`` names each group whose loaded settings change how it runs relative
          to what the optimizer was built with (``amsgrad``, the ε form), and the method to call.
        """
        state_dict = state_dict.copy()  # shallow, as torch.optim
        for hook in list(self._optimizer_load_state_dict_pre_hooks.values()):
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        built = [{key: value for key, value in group.items() if key != "params"} for group in self.param_groups]
        completed = []
        for index, (saved, current) in enumerate(zip(saved_groups, self.param_groups)):
            group = self._complete_loaded_group(dict(saved), current)
            try:
                self.validate_group(group)
            except (TypeError, ValueError) as error:
                raise type(error)(f"param group {index} of the loaded state dict: {error}") from None
            completed.append(group)
        state_dict = {**state_dict, "param_groups": completed}
        self._check_loaded_state(state_dict.get("state", {}))

        given = {id(value) for state in state_dict.get("state", {}).values() for value in state.values()}
        post_hooks = self._optimizer_load_state_dict_post_hooks
        pre_hooks = self._optimizer_load_state_dict_pre_hooks
        # torch.optim's loader would run the hooks again, and the post-hooks before our finishing.
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        try:
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks = pre_hooks
            self._optimizer_load_state_dict_post_hooks = post_hooks
        self._restore_state_dtypes(state_dict)
        for state in self.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and id(value) in given:
                    state[key] = value.clone()
        self._finish_loaded_state()
        self._warn_about_loaded_settings(built)
        for hook in list(post_hooks.values()):
            hook(self)

    def _complete_loaded_group(self, saved: ParamGroup, current: ParamGroup) -> ParamGroup:
        """Fill in what ``saved`` (a group of a state dict being loaded) lacks.

        Subclasses set the meaning of their own absent settings, then call ``super()``. Here:
        no ``maximize``, no skipped steps, no absolute decay (``torch.optim`` has none of these);
        anything else absent keeps the value of the group it replaces (``current``).
        """
        saved.setdefault("maximize", False)
        saved.setdefault("skipped_steps", 0)
        saved.setdefault("absolute_weight_decay", False)
        for key, value in current.items():
            if key != "params":
                saved.setdefault(key, value)
        return saved

    def _check_loaded_state(self, state: dict[Any, dict[str, Any]]) -> None:
        """Refuse a saved state that cannot be loaded, before anything changes (nothing to check here)."""

    def _finish_loaded_state(self) -> None:
        """What a subclass does to the loaded state before the post-hooks run (step tensors, say)."""

    def _warn_about_loaded_settings(self, built: list[ParamGroup]) -> None:
        """Warn where a loaded group runs otherwise than the group it replaced (``built``)."""
        changes: dict[str, list[int]] = {}
        for index, (before, group) in enumerate(zip(built, self.param_groups)):
            for message in self._loaded_setting_changes(before, group):
                changes.setdefault(message, []).append(index)
        for message, indices in changes.items():
            if len(indices) == 1:
                which = f"param group {indices[0]}"
            else:  # the sentences start with "was"
                which = f"param groups {', '.join(map(str, indices))}"
                message = "were" + message[3:] if message.startswith("was ") else message
            warnings.warn(f"{type(self).__name__}.load_state_dict: {which} {message}", UserWarning, stacklevel=3)

    def _loaded_setting_changes(self, before: ParamGroup, after: ParamGroup) -> list[str]:
        """The rest of a sentence ("was saved with ...; call ...") per setting whose loaded value changes
        how a group runs (none here)."""
        return []

    def _state_dtype(self, group: ParamGroup, param: torch.Tensor) -> torch.dtype:
        """The dtype of ``param``'s state tensors: the parameter's own, as in ``torch.optim``."""
        return param.dtype

    def _restore_state_dtypes(self, state_dict: dict[str, Any]) -> None:
        """Undo ``torch.optim``'s cast to the parameter's dtype where the state is kept wider."""
        saved_ids = [saved_id for group in state_dict["param_groups"] for saved_id in group["params"]]
        owners = [(group, param) for group in self.param_groups for param in group["params"]]
        for saved_id, (group, param) in zip(saved_ids, owners):
            saved = state_dict["state"].get(saved_id)
            dtype = self._state_dtype(group, param)
            if saved is None or dtype == param.dtype:
                continue
            state = self.state[param]
            for key, value in saved.items():
                if key != "step" and isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
                    state[key] = value.to(device=param.device, dtype=dtype, copy=True)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for non-finite gradients (``nonfinite="skip"``), saved in the param groups."""
        return max((group.get("skipped_steps", 0) for group in self.param_groups), default=0)

    # ------------------------------------------------------------------- step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one update of every parameter that has a gradient.

        Everything that could refuse the step (a sparse gradient, a setting that is invalid or
        cannot be honoured, ``nonfinite="raise"``) is checked for every group before any
        parameter, state or step counter changes.

        Args:
            closure: re-evaluates the model and returns the loss; called with grad enabled.

        Returns:
            The closure's loss, or ``None`` without a closure.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # torch.no_grad() as a block, not a decorator: one frame less for dynamo to run per compiled step.
        if torch.compiler.is_compiling():
            plans = _prepare_outside_the_graph(self)
            with torch.no_grad():
                for plan in plans:
                    plan.run()
            return loss
        with torch.no_grad():
            for plan in self._prepare_step(compiling=False):
                plan.run()
        return loss

    def _prepare_step(self, compiling: bool) -> list[Any]:
        """Check and plan every group's step, then store the states it creates; ``[]`` to skip it."""
        batches = [(group, self._gather(group)) for group in self.param_groups]
        plans = []
        for index, (group, (params, grads)) in enumerate(batches):
            if params:
                try:
                    self.validate_group(group)
                except (TypeError, ValueError) as error:
                    raise type(error)(f"param group {index}: {error}") from None
                plans.append(self._plan_group(group, params, grads, compiling=compiling))
        if nonfinite.screen_gradients(self.param_groups, batches, type(self).__name__):
            return []  # a non-finite gradient in a group with nonfinite="skip"
        for plan in plans:
            plan.commit()
        return plans

    def _plan_group(self, group: ParamGroup, params: list[torch.Tensor], grads: list[torch.Tensor | None], *,
                    compiling: bool = False, report: bool = False) -> Any:
        """How ``group`` steps ``params``: here always the readable loop (see :mod:`amsgrad.kernels`)."""
        return kernels.ReadablePlan(self, group, params, grads)

    def implementations(self, compiled: bool = False) -> list[dict[str, int]]:
        """Which implementation runs each param group's step, and on how many of its tensors.

        One dict per group, ``{name: number of tensors}``, with the names of
        :mod:`amsgrad.kernels`: ``"C kernel"``, ``"torch fused"``, ``"multi-tensor"``,
        ``"readable"`` (and ``"refused"`` for tensors that ``fused=True`` cannot run, where a
        step raises). It counts every parameter of the group, with its current state and
        gradient (a parameter without either is counted as its first step would run it), and
        allocates nothing. ``compiled=True``: what a step traced by :func:`torch.compile` runs.
        The optimizer's ``repr`` shows the same, per group.

        Example:
            >>> import torch, amsgrad
            >>> opt = amsgrad.AMSGrad([torch.nn.Parameter(torch.ones(3))], foreach=False)
            >>> opt.implementations()
            [{'readable': 1}]
        """
        # (A non-leaf parameter, differentiable=True, runs the readable path: its .grad, which torch
        # warns about reading, does not matter.)
        return [self._plan_group(group, list(group["params"]),
                                 [param.grad if param.is_leaf else None for param in group["params"]],
                                 compiling=compiled, report=True).implementations()
                for group in self.param_groups]

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for index, (group, counts) in enumerate(zip(self.param_groups, self.implementations())):
            lines.append(f"Parameter Group {index}")
            lines.append(f"    implementation: {describe_implementations(counts)}")
            lines.extend(f"    {key}: {group[key]}" for key in sorted(group) if key != "params")
        return "\n".join(lines) + "\n)"

    def _gather(self, group: ParamGroup) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The group's parameters that have gradients, with the gradients; refuse sparse ones."""
        # Comprehensions, not a loop with appends: this runs once per tensor per step.
        params = [param for param in group["params"] if param.grad is not None]
        grads = [param.grad for param in params]
        if any(map(_is_sparse, grads)):
            param = next(param for param, grad in zip(params, grads) if grad.is_sparse)
            raise RuntimeError(
                f"{type(self).__name__} does not support sparse gradients (got one for a parameter "
                f"of shape {tuple(param.shape)}); use torch.optim.SparseAdam, or a dense gradient"
            )
        return params, grads

    def _readable_step(self, group: ParamGroup, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """The readable path: one :meth:`step_param` call per parameter."""
        for param, grad in zip(params, grads):
            state = self.state[param]
            if not state:
                self.init_state(state, group, param)
            if group["maximize"]:
                grad = -grad
            if torch.is_complex(param):
                self._step_complex(state, group, grad, param)
            else:
                self.step_param(state, group, grad, param)

    def _step_complex(self, state: ParamState, group: ParamGroup, grad: torch.Tensor, param: torch.Tensor) -> None:
        """Run :meth:`step_param` on real views, so that the complex state is updated in place."""
        real_param = torch.view_as_real(param)
        views = {key: torch.view_as_real(value) for key, value in state.items() if _is_complex_tensor(value)}
        local = {**state, **views}
        self.step_param(local, group, torch.view_as_real(grad), real_param)
        # Entries the hook added or replaced (rather than updated in place) go back as complex.
        for key, value in local.items():
            if key in views and value is views[key]:
                continue
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.shape == real_param.shape:
                value = torch.view_as_complex(value)
            state[key] = value


@torch.compiler.disable
def _prepare_outside_the_graph(optimizer: GenericAdaptiveOptimizer) -> list[Any]:
    """Under :func:`torch.compile`: plan in eager Python (no guards on settings, no recompilations),
    run there what cannot be traced, and hand back the plans that the graph runs."""
    traced = []
    with torch.no_grad():
        for plan in optimizer._prepare_step(compiling=True):
            if plan.traceable:
                traced.append(plan)
            else:
                plan.run()
    return traced


def describe_implementations(counts: dict[str, int]) -> str:
    """``"C kernel (3 tensors), multi-tensor (1 tensor)"``: one group of
    :meth:`GenericAdaptiveOptimizer.implementations`, as the ``repr`` shows it."""
    if not counts:
        return "none (no parameters)"
    return ", ".join(f"{name} ({count} tensor{'s' if count != 1 else ''})" for name, count in counts.items())


_is_sparse = attrgetter("is_sparse")


def _is_complex_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_complex()
