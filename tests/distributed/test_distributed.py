"""SPEC section 8 on CPU with gloo ranks (tests/tools/distributed_ranks.py); each run is bounded by a timeout, so
a hang (unequal collectives, unequal steps) fails instead of stalling CI."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from tests.tools.distributed_ranks import run_ranks

pytestmark = [
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
    pytest.mark.slow,
]


@pytest.mark.parametrize("world", [2, 3])
def test_global_select_equals_single_process_select_on_the_concatenated_batch(tmp_path, world):
    results = run_ranks("global_equals_single_process", world, tmp_path)
    assert all(r["checked"] == results[0]["checked"] > 0 for r in results)
    assert all(r["history"] == results[0]["history"] for r in results)  # one state on every rank
    assert results[0]["keep"] != results[1]["keep"]  # local policies: each rank its own draws


def test_mismatched_batch_sizes_raise_on_every_rank_under_validate(tmp_path):
    messages = run_ranks("mismatched_batch_sizes", 2, tmp_path, timeout=120)
    assert all("same batch size" in m and "[5, 6]" in m for m in messages), messages


def test_ddp_training_with_unequal_selectivity_finishes_with_equal_steps(tmp_path):
    results = run_ranks("ddp_training", 2, tmp_path)
    assert results[0]["steps"] == results[1]["steps"] > 0
    assert results[0]["selected"] > results[1]["selected"]  # rank 0's random labels stay hard
    assert all(r["gradient_checked"] >= 1 for r in results)  # a partial final step matched the mean gradient
    assert all(r["host_waits"] == 0 for r in results)


def test_resume_mid_epoch_under_ddp_selects_and_steps_as_the_uninterrupted_run(tmp_path):
    results = run_ranks("resume_mid_epoch", 2, tmp_path)
    assert results[0]["steps"] == results[1]["steps"] > 0


def test_distributed_paths_never_sync(tmp_path):
    results = run_ranks("distributed_paths_never_sync", 2, tmp_path)
    assert results[0]["found"] == results[1]["found"]


def test_a_hang_fails_within_the_time_limit(tmp_path):
    """Negative control: unequal collectives hang rank 0; run_ranks kills it and fails instead of stalling."""
    with pytest.raises(AssertionError, match="a hang"):
        run_ranks("unequal_collectives", 2, tmp_path, timeout=20)


def test_collective_tensors_are_released_before_the_group_goes(tmp_path):
    """The guard against torch's gloo teardown deadlock (sbkernels.distributed.release_collective_tensors)."""
    for result in run_ranks("collective_tensors_released", 2, tmp_path, timeout=120):
        assert result == {"finished released": True, "held by a work": True}


def test_the_torchrun_example_trains_with_equal_steps():
    """examples/ddp_train.py as a user runs it: torchrun, 2 CPU ranks, gloo."""
    import subprocess
    import sys
    from pathlib import Path

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "examples.ddp_train", "--epochs", "2"]  # fmt: skip
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "optimizer steps equal on every rank: True" in done.stdout, done.stdout
