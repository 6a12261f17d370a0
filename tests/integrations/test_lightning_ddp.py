"""SelectiveBackpropModule under Lightning ``strategy="ddp"`` with 2 CPU processes (gloo), launched as a user
launches it (examples/lightning_ddp.py: an MLP on digits, accumulation 2), under a hard time limit that
kills the whole process group: before #28 this configuration hung forever (the ranks selected alone, so
their numbers of backward passes differed and DDP's all-reduces stopped matching), and Lightning caught
the SIGTERM of a timeout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import sbkernels

if os.environ.get("CI"):
    import lightning  # noqa: F401  (CI installs it: a missing extra must fail, not skip)
else:
    pytest.importorskip("lightning")

from tests.tools.process_group_timeout import Hung, run_killed_on_timeout

ROOT = Path(__file__).resolve().parents[2]


def ddp_run(tmp_path: Path, policy: str, *extra: str, timeout: float = 240) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "examples.lightning_ddp", "--policy", policy, "--record", str(tmp_path), *extra]
    run_killed_on_timeout(command, timeout, ROOT, env)
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def selections_equal_one_process(ranks: list[dict]) -> bool:
    """SPEC section 8: every selection equals one process's SB on the ranks' logits concatenated in rank order
    (the example's SB(beta=2, history 256, seed 2), with a state of its own)."""
    policy = sbkernels.SB(beta=2.0, history_size=256, seed=2)
    assert len(ranks[0]["selections"]) == len(ranks[1]["selections"]) > 10
    for calls in zip(*(rank["selections"] for rank in ranks), strict=True):
        n = calls[0]["logits"].shape[0]
        selection = policy(torch.cat([c["logits"] for c in calls]), torch.cat([c["targets"] for c in calls]))
        chosen = selection.indices[: int(selection.count)]
        for rank, call in enumerate(calls):
            if not torch.equal(chosen[(chosen >= rank * n) & (chosen < (rank + 1) * n)] - rank * n, call["local"]):
                return False
    return True


@pytest.mark.parametrize(("policy", "strategy"), [("sb", "ddp"), ("importance", "ddp"), ("sb", "fsdp2")])
def test_ddp_finishes_with_equal_steps_and_every_row_trained_at_most_once(tmp_path, policy, strategy):
    """Global selection from the strategy's group: equal optimizer steps and backward passes on both ranks,
    identical parameters, and (SB) no row trained twice across ranks in an epoch (a rank's empty share of a
    final step trains a filler row with weight 0, not recorded). Importance carries weights != 1 under DDP."""
    ranks = ddp_run(tmp_path, policy, "--strategy", strategy)
    if policy == "sb":
        assert selections_equal_one_process(ranks)
    assert ranks[0]["global_step"] == ranks[1]["global_step"] > 0
    assert ranks[0]["backward_passes"] == ranks[1]["backward_passes"]
    for p, q in zip(ranks[0]["parameters"], ranks[1]["parameters"], strict=True):
        assert torch.equal(p, q)
    for epoch in (0, 1):
        ids = ranks[0]["trained"].get(epoch, []) + ranks[1]["trained"].get(epoch, [])
        assert ids and set(ids) <= set(range(600))
        if policy == "sb":  # Importance draws with replacement (SPEC section 5): a row may come twice
            assert len(ids) == len(set(ids)), f"epoch {epoch}: a row was trained twice"


def test_per_rank_selection_hangs_and_the_time_limit_kills_it(tmp_path):
    """Negative control: without the process group each rank selects alone, as before #28. The run hangs
    (or dies on unmatched collectives); either way the test does not stall: the group is killed."""
    with pytest.raises((Hung, AssertionError)):
        ddp_run(tmp_path, "per_rank", timeout=60)
    assert not (tmp_path / "rank0.pt").exists() or not (tmp_path / "rank1.pt").exists()


def test_a_run_resumed_from_an_epoch_end_checkpoint_trains_every_ranks_rows(tmp_path):
    """The checkpoint holds every rank's selection state (gathered on all ranks: Lightning writes rank 0's
    file); resumed after epoch 1 of 2, each rank trains the uninterrupted run's epoch-2 rows."""
    full = ddp_run(tmp_path / "full", "sb", "--checkpoints", str(tmp_path / "ckpt"))
    first_epoch = sorted((tmp_path / "ckpt").glob("epoch=0-*.ckpt"))
    assert len(first_epoch) == 1
    saved = torch.load(first_epoch[0], weights_only=False)["selective_backprop"]
    assert len(saved["ranks"]) == 2
    resumed = ddp_run(tmp_path / "resumed", "sb", "--resume", str(first_epoch[0]))
    for rank in (0, 1):
        assert resumed[rank]["trained"] == {1: full[rank]["trained"][1]}
        for p, q in zip(full[rank]["parameters"], resumed[rank]["parameters"], strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_lightnings_fsdp_strategy_refuses_the_cpu_with_a_clear_error(tmp_path):
    """Lightning's FSDPStrategy (FSDP1) runs on GPUs only and says so; benchmarks/gpu_run.sh runs it there.
    On CPU, FSDP2 (fully_shard) is tested above."""
    with pytest.raises(AssertionError, match="requires a GPU accelerator"):
        ddp_run(tmp_path, "sb", "--strategy", "fsdp", timeout=120)


@pytest.mark.parametrize("policy", ["sb", "importance"])
def test_one_sgd_step_on_two_ranks_follows_the_weighted_gradient_of_the_rows_handed_out(tmp_path, policy):
    """One optimizer step (2 backward batches per rank, accumulation 2): the parameters move by
    -lr * mean over ranks of sum over batches of grad((weight * loss).sum()) / 2, from the rows and weights
    each rank was handed; the unweighted mean gradient is the control."""
    ranks = ddp_run(tmp_path, policy, "--max-steps", "1", "--lr", "0.5")
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    for p, q in zip(net.parameters(), ranks[0]["initial"], strict=True):
        p.data.copy_(q)
    weighted = [torch.zeros_like(p) for p in net.parameters()]
    plain = [torch.zeros_like(p) for p in net.parameters()]
    for rank in ranks:
        assert len(rank["first_step"]) == 2
        for x, y, weight in rank["first_step"]:
            losses = torch.nn.functional.cross_entropy(net(x), y, reduction="none")
            grads = torch.autograd.grad((weight * losses).sum() / 2 / 2, list(net.parameters()), retain_graph=True)
            means = torch.autograd.grad(losses.mean() / 2 / 2, list(net.parameters()))
            weighted = [a + g for a, g in zip(weighted, grads, strict=True)]
            plain = [a + g for a, g in zip(plain, means, strict=True)]
    moved = [q - p for p, q in zip(ranks[0]["parameters"], ranks[0]["initial"], strict=True)]
    for step, grad in zip(moved, weighted, strict=True):
        torch.testing.assert_close(step, 0.5 * grad, rtol=1e-4, atol=1e-6)
    if policy == "importance":
        assert any(not torch.allclose(s, 0.5 * g, rtol=1e-3, atol=1e-5) for s, g in zip(moved, plain, strict=True))


def test_a_run_resumed_mid_epoch_trains_every_ranks_rows(tmp_path):
    """A checkpoint every 2 optimizer steps, taken mid-epoch: both ranks' selection state, positions and
    waiting gradients are in it; resumed, each rank trains the rest of the uninterrupted run's rows (the
    module replays the DistributedSampler's order from its saved position) and ends with its parameters."""
    full = ddp_run(tmp_path / "full", "sb", "--checkpoints", str(tmp_path / "ckpt"), "--every-n-steps", "2")
    middle = [
        path
        for path in sorted((tmp_path / "ckpt").glob("*.ckpt"))
        if 0 < torch.load(path, weights_only=False)["selective_backprop"]["ranks"][0]["position"]["batches"]
    ]
    assert middle, "no mid-epoch checkpoint"
    path = middle[0]
    epoch = torch.load(path, weights_only=False)["selective_backprop"]["ranks"][0]["position"]["epoch"]
    resumed = ddp_run(tmp_path / "resumed", "sb", "--resume", str(path))
    for rank in (0, 1):
        rest = resumed[rank]["trained"]
        assert rest[epoch] == full[rank]["trained"][epoch][len(full[rank]["trained"][epoch]) - len(rest[epoch]) :]
        assert {e: ids for e, ids in rest.items() if e != epoch} == {
            e: ids for e, ids in full[rank]["trained"].items() if e > epoch
        }
        for p, q in zip(full[rank]["parameters"], resumed[rank]["parameters"], strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
