"""DDP, FSDP2, ZeroRedundancyOptimizer and distributed checkpoints, in 2-process gloo jobs.

Each test starts its own job on 127.0.0.1 (a free port; see ``launch.py``); the ranks run
``workers.py`` and save what they computed, and the assertions are made here. The model is
small and float64, so "equal within the reduction order's rounding" can be tight.
"""

from __future__ import annotations

import sys

import pytest
import torch

from .launch import REPO, launch, run_scenario

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")

# Reductions over 2 ranks add the same numbers in another order: a few ulps per step in float64.
TOLERANCE = 1e-12


def load(path):
    return torch.load(path, weights_only=False)


def assert_close_runs(got: dict, want: dict, tolerance: float = TOLERANCE) -> None:
    assert got["params"].keys() == want["params"].keys()
    for name in want["params"]:
        torch.testing.assert_close(got["params"][name], want["params"][name], rtol=0, atol=tolerance,
                                   msg=lambda m: f"{name}: {m}")
    assert got["state"].keys() == want["state"].keys()
    for name, entries in want["state"].items():
        assert got["state"][name].keys() == entries.keys()
        for key, value in entries.items():
            torch.testing.assert_close(got["state"][name][key], value, rtol=0, atol=tolerance,
                                       msg=lambda m: f"{name} {key}: {m}")


def assert_identical_runs(got: dict, want: dict) -> None:
    assert got["params"].keys() == want["params"].keys() and got["state"].keys() == want["state"].keys()
    for name in want["params"]:
        assert torch.equal(got["params"][name], want["params"][name]), name
    for name, entries in want["state"].items():
        for key, value in entries.items():
            assert torch.equal(got["state"][name][key], value), (name, key)


def test_ddp_equals_one_process_on_the_combined_batches(tmp_path):
    run_scenario("ddp", tmp_path)
    ranks = [load(tmp_path / f"ddp-rank{rank}.pt") for rank in range(2)]
    reference = ranks[0]["reference"]
    for result in ranks:
        assert_close_runs(result, reference)
        # One rank's input held an inf; after the all-reduce every rank skipped that step.
        assert result["skipped_steps"] == 1 and reference["skipped_steps"] == 0
        assert all(float(entries["step"]) == 7 for entries in result["state"].values())


def test_fsdp2_dtensor_parameters_equal_the_unsharded_run_on_every_path(tmp_path):
    run_scenario("fsdp", tmp_path)
    ranks = [load(tmp_path / f"fsdp-rank{rank}.pt") for rank in range(2)]
    reference = ranks[0]["reference"]
    for result in ranks:
        for path in ("default", "readable", "foreach"):
            run = result[path]
            assert run["type"] == "DTensor" and run["state_type"] == "DTensor", path
            # rank 0 alone put an inf in its shard: both ranks agreed to skip, nothing moved.
            assert_identical_runs(run["after_skip"], run["before"])
            assert run["after_skip"]["skipped_steps"] == 1, path
            assert_close_runs(run["final"], reference)
    for path in ("default", "readable", "foreach"):
        assert_identical_runs(ranks[0][path]["final"], ranks[1][path]["final"])


def test_zero_redundancy_optimizer_trains_and_its_consolidated_state_round_trips(tmp_path):
    run_scenario("zero", tmp_path)
    ranks = [load(tmp_path / f"zero-rank{rank}.pt") for rank in range(2)]
    reference = ranks[0]["reference"]
    for result in ranks:
        assert result["params"].keys() == reference["params"].keys()
        for name, value in reference["params"].items():
            torch.testing.assert_close(result["params"][name], value, rtol=0, atol=TOLERANCE)
        # Loaded into a fresh ZeroRedundancyOptimizer, the run continues bit for bit.
        for name, value in result["params"].items():
            assert torch.equal(result["resumed_params"][name], value), name
        for ours, theirs in zip(result["local_state"], result["resumed_local_state"]):
            assert ours.keys() == theirs.keys()
            assert all(torch.equal(ours[key], theirs[key]) for key in ours)
        assert result["resumed_lr"] == 0.05  # the settings came from the state dict

    # The consolidated state is the single-process optimizer's, in torch's layout.
    consolidated, at_6 = ranks[0]["consolidated"], ranks[0]["reference_at_6"]
    assert len(consolidated["state"]) == 4 and consolidated["param_groups"][0]["lr"] == 0.05
    for index, name in enumerate(at_6["params"]):
        for key, value in at_6["state"][name].items():
            torch.testing.assert_close(consolidated["state"][index][key], value, rtol=0, atol=TOLERANCE)


def test_int8_state_under_ddp_and_zero_redundancy_optimizer(tmp_path):
    run_scenario("lowmem", tmp_path)
    ranks = [load(tmp_path / f"lowmem-rank{rank}.pt") for rank in range(2)]
    # DDP: every rank holds the same parameters and the same codes, bit for bit.
    assert_identical_runs(ranks[1]["ddp"], ranks[0]["ddp"])
    codes = ranks[0]["ddp"]["state"]["module.0.weight"]
    assert codes["exp_avg_codes"].dtype == torch.uint8 and "exp_avg" not in codes
    # And close to one process on the combined batches (the all-reduce's order can move a code).
    reference = ranks[0]["reference"]
    for name, value in reference["params"].items():
        torch.testing.assert_close(ranks[0]["ddp"]["params"]["module." + name], value, rtol=0, atol=1e-3)
    # ZeRO: each rank's partition is compressed; the consolidated dict resumes bit for bit.
    for result in ranks:
        assert "exp_avg_codes" in result["zero_local_keys"]
        for name, value in result["zero_params"].items():
            assert torch.equal(result["zero_resumed_params"][name], value), name
    assert ranks[0]["zero_params"].keys() == ranks[1]["zero_params"].keys()
    for name in ranks[0]["zero_params"]:
        assert torch.equal(ranks[0]["zero_params"][name], ranks[1]["zero_params"][name]), name


def test_distributed_checkpoint_under_fsdp2_resumes_bit_identically(tmp_path):
    run_scenario("dcp_save", tmp_path)
    run_scenario("dcp_load", tmp_path)
    for rank in range(2):
        uninterrupted = load(tmp_path / f"dcp-uninterrupted-rank{rank}.pt")
        resumed = load(tmp_path / f"dcp-resumed-rank{rank}.pt")
        assert_identical_runs(resumed, uninterrupted)
        assert all(float(entries["step"]) == 10 for entries in resumed["state"].values())


def test_the_training_at_scale_example_runs_on_two_processes(tmp_path):
    command = [sys.executable, str(REPO / "examples" / "train_at_scale.py"), "--steps", "6",
               "--checkpoint-dir", str(tmp_path / "checkpoint")]
    first = launch(command)
    assert "saved checkpoint" in first[0]
    resumed = launch(command + ["--resume"])
    assert "resumed from step 6" in resumed[0] and "loss" in resumed[0]
