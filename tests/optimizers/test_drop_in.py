"""The optimizers as a drop-in for torch.optim: the README's mapping, checkpoints in both directions,
switching a loaded Adam run to AMSGrad, and the state-dict round trip and load hooks."""

from __future__ import annotations

import copy
import pickle
import re
import warnings
from pathlib import Path

import pytest
import torch

import amsgrad
from amsgrad import kernels

from .helpers import assert_same_run, clone_params, make_params, run_steps

README = Path(__file__).resolve().parents[2] / "README.md"


def mapping_rows() -> list[tuple[str, str]]:
    """The (torch, amsgrad) expressions of the README's table "The same numbers as `torch.optim`"."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### The same numbers as `torch.optim`"):]
    table = section[section.index("| torch | amsgrad |"):].split("\n\n")[0]
    rows = []
    for line in table.splitlines()[2:]:
        cells = re.findall(r"`([^`]+)`", line)
        assert len(cells) == 2, line
        rows.append((cells[0], cells[1]))
    return rows


ROWS = mapping_rows()


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()


def train(model, optimizer, steps) -> None:
    for step in steps:
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(16, 5, generator=generator, dtype=torch.float64)
        optimizer.zero_grad()
        (model(x).sin().sum() + (model(x) ** 2).mean()).backward()
        optimizer.step()


def assert_close_optimizers(model_a, opt_a, model_b, opt_b, atol=1e-12) -> None:
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)
        state_a, state_b = opt_a.state[a], opt_b.state[b]
        assert set(state_a) == set(state_b)
        for key in state_a:
            torch.testing.assert_close(state_a[key].double(), state_b[key].double(), atol=atol, rtol=0)


def test_the_readme_has_the_mapping_table():
    assert len(ROWS) >= 10 and all(row[0].startswith("torch.optim.") for row in ROWS)


@pytest.mark.parametrize("theirs, ours", ROWS, ids=[f"row{index + 1}" for index in range(len(ROWS))])
def test_each_row_of_the_readmes_mapping_gives_torchs_numbers(theirs, ours):
    model_theirs, model_ours = make_model(), make_model()
    namespace = {"torch": torch, "amsgrad": amsgrad, "lr": 1e-2, "λ": 0.1}
    opt_theirs = eval(theirs, {**namespace, "p": list(model_theirs.parameters())})
    opt_ours = eval(ours, {**namespace, "p": list(model_ours.parameters())})
    train(model_theirs, opt_theirs, range(30))
    train(model_ours, opt_ours, range(30))
    assert_close_optimizers(model_ours, opt_ours, model_theirs, opt_theirs)
    for group_ours, group_theirs in zip(opt_ours.param_groups, opt_theirs.param_groups):
        assert group_ours["decoupled_weight_decay"] == group_theirs["decoupled_weight_decay"] or \
            group_ours["weight_decay"] == group_theirs["weight_decay"] == 0.0


# ------------------------------------------------------------ loading torch's state dicts
def _torch_run(amsgrad_flag: bool = False, steps: int = 5, **kwargs):
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=amsgrad_flag, **kwargs)
    train(model, optimizer, range(steps))
    return model, optimizer


def _load_quietly(optimizer, state_dict) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer.load_state_dict(state_dict)
    return [str(warning.message) for warning in caught if issubclass(warning.category, UserWarning)]


def test_a_torch_group_gets_torchs_meaning_for_each_missing_setting():
    _, writer = _torch_run(amsgrad_flag=True, weight_decay=0.05, decoupled_weight_decay=True)
    reader = amsgrad.AMSGrad(make_model().parameters(), lr=0.5, eps=1e-16, max_of="corrected", bias_correction=False,
                             nonfinite="skip", weight_decay=amsgrad.WeightDecay(0.2, absolute=True))
    _load_quietly(reader, writer.state_dict())
    group = reader.param_groups[0]
    # what torch saved wins
    assert (group["lr"], group["eps"], group["amsgrad"], group["weight_decay"]) == (1e-2, 1e-8, True, 0.05)
    assert group["decoupled_weight_decay"] is True
    # what torch lacks gets torch's meaning where it changes the math
    assert group["optimized_update"] is False and group["bias_correction"] is True
    assert group["max_of"] == "raw" and group["absolute_weight_decay"] is False
    assert group["skipped_steps"] == 0
    # and the constructor's value where it does not
    assert group["nonfinite"] == "skip"


def test_without_a_maximum_max_of_keeps_the_constructors_choice_for_enable_amsgrad():
    _, writer = _torch_run(amsgrad_flag=False)
    reader = amsgrad.AMSGrad(make_model().parameters(), max_of="corrected")
    _load_quietly(reader, writer.state_dict())
    assert reader.param_groups[0]["amsgrad"] is False and reader.param_groups[0]["max_of"] == "corrected"


@pytest.mark.parametrize("path", ["readable", "foreach", "default", "capturable"])
@pytest.mark.parametrize("torch_amsgrad", [False, True])
def test_a_loaded_torch_checkpoint_continues_torchs_run(torch_amsgrad, path):
    """AMSGrad() with the library's defaults: the loaded groups keep torch's update and amsgrad flag."""
    overrides = {"readable": dict(foreach=False), "foreach": dict(foreach=True), "default": {},
                 "capturable": dict(capturable=True)}[path]
    model_torch, writer = _torch_run(torch_amsgrad)
    checkpoint = copy.deepcopy({"model": model_torch.state_dict(), "optimizer": writer.state_dict()})
    model = make_model(seed=3)
    model.load_state_dict(checkpoint["model"])
    reader = amsgrad.AMSGrad(model.parameters(), **overrides)
    _load_quietly(reader, checkpoint["optimizer"])
    train(model_torch, writer, range(5, 15))
    train(model, reader, range(5, 15))
    assert_close_optimizers(model, reader, model_torch, writer)


def test_loading_warns_where_amsgrad_or_the_eps_form_changes_and_names_the_call():
    _, writer = _torch_run(amsgrad_flag=False)
    messages = _load_quietly(amsgrad.AMSGrad(make_model().parameters()), writer.state_dict())
    assert len(messages) == 2
    amsgrad_message = next(m for m in messages if "amsgrad=False" in m)
    eps_message = next(m for m in messages if "optimized_update=False" in m)
    assert amsgrad_message.startswith("AMSGrad.load_state_dict: param group 0 was saved with amsgrad=False")
    assert "call optimizer.enable_amsgrad()" in amsgrad_message
    assert eps_message.startswith("AMSGrad.load_state_dict: param group 0 was saved in torch's update form")
    assert "call optimizer.use_optimized_update()" in eps_message

    # Built to match the checkpoint: nothing to say.
    assert _load_quietly(amsgrad.AMSGrad(make_model().parameters(), amsgrad=False, eps=1e-8, optimized_update=False),
                         writer.state_dict()) == []
    # An Adam loading an AMSGrad state says it will not use the maximum.
    _, writer_amsgrad = _torch_run(amsgrad_flag=True)
    messages = _load_quietly(amsgrad.Adam(make_model().parameters(), eps=1e-8, optimized_update=False),
                             writer_amsgrad.state_dict())
    assert len(messages) == 1 and "amsgrad=True, but Adam keeps no running maximum" in messages[0]


def test_one_warning_names_every_group_it_concerns():
    model = make_model()
    params = list(model.parameters())
    writer = torch.optim.Adam([{"params": params[:2]}, {"params": params[2:3]}, {"params": params[3:]}])
    reader = amsgrad.AMSGrad([{"params": params[:2]}, {"params": params[2:3], "amsgrad": False},
                              {"params": params[3:]}], eps=1e-8, optimized_update=False)
    messages = _load_quietly(reader, writer.state_dict())
    assert len(messages) == 1
    assert messages[0].startswith("AMSGrad.load_state_dict: param groups 0, 2 were saved with amsgrad=False")


# ------------------------------------------------------------ switching: enable_amsgrad, use_optimized_update
PATHS = {"readable": dict(foreach=False), "foreach": dict(foreach=True), "default": {},
         "torch-kernel": dict(fused=True), "capturable": dict(capturable=True)}


@pytest.mark.parametrize("path", list(PATHS))
def test_enable_amsgrad_continues_as_torchs_amsgrad_from_the_loaded_v(path, monkeypatch):
    if path == "torch-kernel":
        monkeypatch.setattr(kernels, "CPU_FUSED_BACKENDS", ("torch",))
    model_torch, writer = _torch_run(amsgrad_flag=False)
    saved = copy.deepcopy(writer.state_dict())
    # The reference: torch's AMSGrad continuing from a maximum that starts at v.
    as_amsgrad = copy.deepcopy(saved)
    for state in as_amsgrad["state"].values():
        state["max_exp_avg_sq"] = state["exp_avg_sq"].clone()
    for group in as_amsgrad["param_groups"]:
        group["amsgrad"] = True
    reference_model = make_model(seed=3)
    reference_model.load_state_dict(model_torch.state_dict())
    reference = torch.optim.Adam(reference_model.parameters(), amsgrad=True)
    reference.load_state_dict(as_amsgrad)

    model = make_model(seed=4)
    model.load_state_dict(model_torch.state_dict())
    ours = amsgrad.AMSGrad(model.parameters(), **PATHS[path])
    _load_quietly(ours, saved)
    assert ours.enable_amsgrad() == [0] and ours.enable_amsgrad() == []
    assert ours.param_groups[0]["amsgrad"] is True
    for param in model.parameters():
        assert torch.equal(ours.state[param]["max_exp_avg_sq"], ours.state[param]["exp_avg_sq"])
    train(reference_model, reference, range(5, 15))
    train(model, ours, range(5, 15))
    assert_close_optimizers(model, ours, reference_model, reference)


def test_enable_amsgrad_with_a_corrected_maximum_starts_from_the_corrected_v():
    params = make_params()
    optimizer = amsgrad.AMSGrad(params, amsgrad=False, max_of="corrected", betas=(0.9, 0.99))
    run_steps(optimizer, params, range(3))
    assert all("max_exp_avg_sq" not in optimizer.state[p] for p in params)
    optimizer.enable_amsgrad()
    for param in params:
        state = optimizer.state[param]
        expected = state["exp_avg_sq"] / (1 - 0.99 ** float(state["step"]))
        assert torch.equal(state["max_exp_avg_sq"], expected)
    # ... and continues as an AMSGrad that had that maximum all along, on the fast path and the readable one
    readable_params = clone_params(params)
    readable = amsgrad.AMSGrad(readable_params, max_of="corrected", betas=(0.9, 0.99), foreach=False)
    readable.load_state_dict(optimizer.state_dict())
    run_steps(optimizer, params, range(3, 8))
    run_steps(readable, readable_params, range(3, 8))
    assert_same_run(optimizer, params, readable, readable_params, exact=False, atol=1e-12)


def test_enable_amsgrad_replaces_a_stale_maximum_and_leaves_amsgrad_groups_alone():
    a, b = make_params(shapes=[(4,)]), make_params(seed=1, shapes=[(4,)])
    optimizer = amsgrad.AMSGrad([{"params": a}, {"params": b, "amsgrad": False}])
    run_steps(optimizer, a + b, range(3))
    kept = optimizer.state[a[0]]["max_exp_avg_sq"].clone()
    optimizer.state[b[0]]["max_exp_avg_sq"] = torch.full((4,), 1e9, dtype=torch.float64)  # stale
    assert optimizer.enable_amsgrad() == [1]
    assert torch.equal(optimizer.state[a[0]]["max_exp_avg_sq"], kept)
    assert torch.equal(optimizer.state[b[0]]["max_exp_avg_sq"], optimizer.state[b[0]]["exp_avg_sq"])


@pytest.mark.parametrize("path", list(PATHS))
def test_use_optimized_update_switches_torch_form_groups(path, monkeypatch):
    if path == "torch-kernel":
        monkeypatch.setattr(kernels, "CPU_FUSED_BACKENDS", ("torch",))
    model_torch, writer = _torch_run(amsgrad_flag=True)
    saved = copy.deepcopy(writer.state_dict())
    model = make_model(seed=4)
    model.load_state_dict(model_torch.state_dict())
    ours = amsgrad.AMSGrad(model.parameters(), **PATHS[path])
    _load_quietly(ours, saved)
    assert ours.use_optimized_update() == [0] and ours.use_optimized_update() == []
    group = ours.param_groups[0]
    assert group["optimized_update"] is True and group["eps"] == 1e-8  # ε̂ = ε: the number is kept
    # It continues as an optimizer built in the optimized form with that ε̂, from the same state.
    reference_model = make_model(seed=5)
    reference_model.load_state_dict(model_torch.state_dict())
    reference = amsgrad.AMSGrad(reference_model.parameters(), eps=1e-8, foreach=False, fused=False)
    reference.load_state_dict(ours.state_dict())
    train(reference_model, reference, range(5, 15))
    train(model, ours, range(5, 15))
    assert_close_optimizers(model, ours, reference_model, reference)


def test_use_optimized_update_with_an_eps_sets_it_for_the_switched_groups_only():
    a, b = make_params(shapes=[(3,)]), make_params(seed=1, shapes=[(3,)])
    optimizer = amsgrad.Adam([{"params": a, "optimized_update": False, "eps": 1e-8}, {"params": b, "eps": 1e-12}])
    assert optimizer.use_optimized_update(eps=1e-16) == [0]
    assert [g["eps"] for g in optimizer.param_groups] == [1e-16, 1e-12]
    with pytest.raises(ValueError, match=r"Invalid eps: -1\.0 \(expected a finite number >= 0\)"):
        optimizer.use_optimized_update(eps=-1.0)


# ------------------------------------------------------------ a step saved as a plain number
@pytest.mark.parametrize("path", ["readable", "foreach", "default", "torch-kernel", "capturable"])
@pytest.mark.parametrize("kind", [int, float])
def test_a_plain_number_step_loads_and_runs_on_every_path(kind, path, monkeypatch):
    if path == "torch-kernel":
        monkeypatch.setattr(kernels, "CPU_FUSED_BACKENDS", ("torch",))
    overrides = {"torch-kernel": dict(fused=True)}.get(path, PATHS.get(path, {}))
    params = make_params(dtype=torch.float32)
    reference = amsgrad.AMSGrad(params, foreach=False)
    run_steps(reference, params, range(3))
    saved = copy.deepcopy(reference.state_dict())
    for state in saved["state"].values():
        state["step"] = kind(float(state["step"]))
    loaded_params = clone_params(params)
    loaded = amsgrad.AMSGrad(loaded_params, **overrides)
    loaded.load_state_dict(saved)
    for param in loaded_params:
        step = loaded.state[param]["step"]
        assert isinstance(step, torch.Tensor) and step.dtype == torch.float32 and float(step) == 3.0
    run_steps(reference, params, range(3, 6))
    run_steps(loaded, loaded_params, range(3, 6))
    assert_same_run(reference, params, loaded, loaded_params, exact=False, atol=1e-5)


def test_a_step_that_is_neither_number_nor_tensor_is_refused():
    params = make_params()
    optimizer = amsgrad.AMSGrad(params)
    run_steps(optimizer, params, range(1))
    saved = optimizer.state_dict()
    saved["state"][0]["step"] = "3"
    target = amsgrad.AMSGrad(clone_params(params))
    with pytest.raises(TypeError, match=r"parameter 0: step must be a number or a tensor, got '3' of type str"):
        target.load_state_dict(saved)
    assert not target.state


# ------------------------------------------------------------ round trips
def _state_dicts_equal(a: dict, b: dict) -> bool:
    if a["param_groups"] != b["param_groups"] or a["state"].keys() != b["state"].keys():
        return False
    for index, state in a["state"].items():
        other = b["state"][index]
        if state.keys() != other.keys():
            return False
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                if not (torch.equal(value, other[key]) and value.dtype == other[key].dtype):
                    return False
            elif value != other[key]:
                return False
    return True


def _configs():
    from .configs import CONFIGS

    return CONFIGS


@pytest.mark.parametrize("config", _configs(), ids=repr)
def test_state_dict_round_trips_unchanged_also_after_deepcopy_and_pickle(config):
    params = make_params()
    optimizer = config.make(params)
    run_steps(optimizer, params, range(3))
    saved = optimizer.state_dict()
    reloaded = config.make(clone_params(params))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a row built otherwise than the defaults: the saved settings win
        reloaded.load_state_dict(copy.deepcopy(saved))
    assert _state_dicts_equal(reloaded.state_dict(), saved)
    optimizer.load_state_dict(optimizer.state_dict())
    assert _state_dicts_equal(optimizer.state_dict(), saved)
    for twin in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        assert _state_dicts_equal(twin.state_dict(), saved)
        twin.load_state_dict(twin.state_dict())
        assert _state_dicts_equal(twin.state_dict(), saved)
    assert all("differentiable" in group and "capturable" in group for group in saved["param_groups"])


# ------------------------------------------------------------ load hooks
def test_load_hooks_run_as_in_torch_optim_and_post_hooks_see_the_final_state():
    params = make_params(dtype=torch.bfloat16)
    source = amsgrad.AMSGrad(params, state_dtype=torch.float32)
    run_steps(source, params, range(2))
    saved = source.state_dict()
    for state in saved["state"].values():
        state["step"] = int(state["step"])  # a plain number, converted by the loader
    calls, seen = [], {}
    target_params = clone_params(params)
    target = amsgrad.AMSGrad(target_params)

    def pre_hook(optimizer, state_dict):
        calls.append("pre")
        state_dict = dict(state_dict)
        state_dict["param_groups"] = [{**group, "lr": 0.25} for group in state_dict["param_groups"]]
        return state_dict  # a replacement dict: what gets loaded

    def post_hook(optimizer):
        calls.append("post")
        state = optimizer.state[target_params[0]]
        seen.update(step=state["step"], dtype=state["exp_avg"].dtype,
                    shares=state["exp_avg"].data_ptr() == saved["state"][0]["exp_avg"].data_ptr())
        state["exp_avg"] = torch.full_like(state["exp_avg"], 7.0)  # a hook's change stays

    target.register_load_state_dict_pre_hook(pre_hook)
    target.register_load_state_dict_post_hook(post_hook)
    target.register_load_state_dict_post_hook(lambda optimizer: calls.append("post, prepended"), prepend=True)
    target.load_state_dict(saved)
    assert calls == ["pre", "post, prepended", "post"]
    assert isinstance(seen["step"], torch.Tensor) and float(seen["step"]) == 2.0
    assert seen["dtype"] == torch.float32 and not seen["shares"]  # restored to the group's state_dtype, a copy
    assert target.param_groups[0]["lr"] == 0.25
    state = target.state[target_params[0]]
    assert state["exp_avg"].dtype == torch.float32 and bool((state["exp_avg"] == 7.0).all())


def test_a_loaded_group_with_a_bad_setting_is_refused_before_anything_changes():
    params = make_params()
    optimizer = amsgrad.AMSGrad(params)
    run_steps(optimizer, params, range(2))
    saved = optimizer.state_dict()
    saved["param_groups"][0]["betas"] = (0.9, 1.5)
    target = amsgrad.AMSGrad(clone_params(params), lr=0.3)
    post = []
    target.register_load_state_dict_post_hook(lambda optimizer: post.append(1))
    with pytest.raises(ValueError, match=r"param group 0 of the loaded state dict: Invalid betas\[1\]: 1\.5"):
        target.load_state_dict(saved)
    assert not target.state and target.param_groups[0]["lr"] == 0.3 and not post


def test_a_torch_optimizer_loads_our_state_dict_and_back():
    model_ours = make_model()
    ours = amsgrad.AMSGrad(model_ours.parameters(), eps=1e-8, optimized_update=False)
    train(model_ours, ours, range(3))
    model_theirs = make_model()
    theirs = torch.optim.Adam(model_theirs.parameters(), amsgrad=True)
    theirs.load_state_dict(ours.state_dict())
    back = amsgrad.AMSGrad(make_model().parameters())
    messages = _load_quietly(back, theirs.state_dict())
    assert not any("amsgrad" in message for message in messages)  # ours saved amsgrad=True; torch keeps it
    assert back.param_groups[0]["optimized_update"] is False  # our key travelled through torch's dict
