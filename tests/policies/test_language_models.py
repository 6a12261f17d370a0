"""Whole-sequence selection for language models (SPEC section 9): the policies, ``select_losses(valid=)``,
``SelectiveBackprop.observe`` with (B, T, V) logits or hidden states, and the history-size warning."""

from __future__ import annotations

import warnings

import pytest
import torch

import sbkernels
from sbkernels import SB, GradMatch, Importance, Keep, Uniform, ops
from tests.helpers import kernel_devices

BACKENDS = ["reference", "native", *(["triton"] if "cpu" in kernel_devices() else [])]
POLICIES = {  # name: (factory, pushes its losses into the history)
    "sb": (lambda backend: SB(beta=1.0, backend=backend), True),
    "uniform-rate": (lambda backend: Uniform(rate=0.6, backend=backend), True),
    "uniform-k": (lambda backend: Uniform(k=3, backend=backend), False),
    "keep": (lambda backend: Keep(0.5, backend=backend), False),
}
V = 13


def lm_batch(seed: int, batch: int = 6, length: int = 9):
    """Labels with an all-ignored sequence (row 2) and an out-of-range label (row 4)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, V, generator=gen) * 2
    labels = torch.randint(0, V, (batch, length), generator=gen)
    labels[0, 5:] = -100
    labels[2, 1:] = -100
    labels[4, 3] = V + 2
    return logits, labels


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(POLICIES))
def test_policies_select_whole_sequences_under_the_contract(name, backend):
    factory, pushes = POLICIES[name]
    policy = factory(backend)
    for call in range(3):
        logits, labels = lm_batch(call)
        before = policy.state.meta.clone() if policy.state is not None else None
        sel = policy(logits, labels)
        state = policy.state
        want, _ = ops.sequence_losses(logits=logits, labels=labels, backend="reference")
        chosen = sel.indices[: int(sel.count)].tolist()
        assert 2 not in chosen and 4 not in chosen, chosen  # ignored and bad sequences are never selected
        assert sel.prob[[2, 4]].tolist() == [0.0, 0.0]
        torch.testing.assert_close(sel.loss[[0, 1, 3, 5]], want[[0, 1, 3, 5]], rtol=0, atol=1e-5)
        assert sel.loss[2] == 0 and torch.isnan(sel.loss[4])
        assert int(state.step) == call + 1
        assert int(state.bad_target_count) == call + 1  # one bad sequence per call
        if before is not None:
            pushed = int(state.pushed) - int(before[sbkernels.slots.META_PUSHED])
            assert pushed == (4 if pushes else 0)  # the four valid sequences


@pytest.mark.parametrize("policy", [Importance(k=2), GradMatch(k=2)])
def test_policies_that_need_per_row_logits_refuse_sequences_clearly(policy):
    logits, labels = lm_batch(0)
    with pytest.raises(ValueError, match="for per-row or per-sequence losses use SB, Uniform or Keep"):
        policy(logits, labels)


@pytest.mark.parametrize("backend", BACKENDS)
def test_select_losses_valid_mask_excludes_rows_from_selection_and_history(backend):
    losses = torch.tensor([0.3, 5.0, 0.2, 7.0, 0.1, 4.0])
    valid = torch.tensor([True, False, True, False, True, True])
    state = sbkernels.SelectorState(8)
    sel = sbkernels.select_losses(losses, state, beta=0.01, valid=valid, backend=backend)
    assert set(sel.indices[: int(sel.count)].tolist()) <= {0, 2, 4, 5}
    assert sel.prob[~valid].eq(0).all()
    assert int(state.pushed) == 4 and torch.equal(state.history[:4], losses[valid])
    keep = sbkernels.select_keep(losses, None, sbkernels.SelectorState(8), keep=1.0, valid=valid, backend=backend)
    assert sorted(keep.indices[: int(keep.count)].tolist()) == [0, 2, 4, 5]


def test_valid_mask_is_checked():
    with pytest.raises(ValueError, match=r"valid must be a bool tensor of shape \(3,\)"):
        sbkernels.select_losses(torch.rand(3), sbkernels.SelectorState(4), valid=torch.ones(3))
    with pytest.raises(ValueError, match="valid= marks rows of given losses"):
        SB()(torch.randn(3, 4), torch.tensor([0, 1, 2]), valid=torch.ones(3, dtype=torch.bool))


def test_history_shorter_than_one_call_warns_once_at_the_callers_line():
    state = sbkernels.SelectorState(4)
    with pytest.warns(UserWarning, match="history_size=4 is smaller than the 10 rows of one call") as record:
        sbkernels.select_losses(torch.rand(10), state)
    assert record[0].filename == __file__  # points at the user's call, not into sbkernels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sbkernels.select_losses(torch.rand(10), state)  # once per state
        sbkernels.select_losses(torch.rand(3), sbkernels.SelectorState(4))  # fits: no warning


@pytest.mark.parametrize("backend", BACKENDS)
def test_observe_takes_lm_logits_or_hidden_states_and_selects_the_same_sequences(backend):
    """The logits form and the hidden-state form (lm_head=) give the same losses, hence the same rows."""
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, V)
    runs = {"logits": sbkernels.SelectiveBackprop(4, SB(backend=backend, seed=3)),
            "hidden": sbkernels.SelectiveBackprop(4, SB(backend=backend, seed=3))}  # fmt: skip
    for step in range(4):
        hidden = torch.randn(6, 9, 8, generator=gen)
        labels = torch.randint(0, V, (6, 9), generator=gen)
        labels[step % 6, 1:] = -100
        ids = torch.arange(6) + 6 * step
        with torch.no_grad():
            a = runs["logits"].observe(head(hidden), labels, {"input_ids": labels, "labels": labels}, sample_ids=ids)
        b = runs["hidden"].observe(hidden, labels, {"input_ids": labels, "labels": labels}, sample_ids=ids,
                                   lm_head=head)  # fmt: skip
        torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=1e-5)
        assert torch.equal(a.indices, b.indices)
        assert step % 6 not in a.indices[: int(a.count)].tolist()
    rows = [b.sample_ids for b in runs["hidden"].flush()]
    assert rows and all(isinstance(b, torch.Tensor) for b in rows)


def test_observe_scores_sequences_when_the_schedule_is_off():
    """A full-batch step (schedule off) still records per-sequence losses (Stale-SB stores them)."""
    sb = sbkernels.SelectiveBackprop(
        4, SB(), schedule=sbkernels.Schedule(start=0.5, total_steps=10), stale=sbkernels.StaleSB(every=2, num_samples=6)
    )
    logits, labels = lm_batch(1)
    labels[4, 3] = 0
    sel = sb.observe(logits, labels, {"labels": labels}, sample_ids=torch.arange(6))
    assert int(sel.count) == 6
    want, _ = ops.sequence_losses(logits=logits, labels=labels, backend="reference")
    torch.testing.assert_close(sb.stale.cache, want, rtol=0, atol=1e-5)
