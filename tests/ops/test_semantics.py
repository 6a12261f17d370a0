"""Hand-made cases of SPEC section 2, run on every backend: reference and Triton (interpreter or CUDA)."""

from __future__ import annotations

import pytest
import torch

import sbkernels
from tests.helpers import backend_devices

PAIRS = backend_devices()
IDS = [f"{b}-{d}" for b, d in PAIRS]


@pytest.fixture(params=PAIRS, ids=IDS)
def run(request):
    backend, device = request.param

    def select_losses(losses, state, **kw):
        return sbkernels.select_losses(
            torch.as_tensor(losses, dtype=torch.float32).to(device), state, backend=backend, **kw
        )

    def select(logits, targets, state, **kw):
        return sbkernels.select(logits.to(device), targets.to(device), state, backend=backend, **kw)

    run.device = device
    run.select_losses = select_losses
    run.select = select
    return run


def new_state(run, size, seed=0):
    return sbkernels.SelectorState(history_size=size, seed=seed, device=run.device)


def fill(run, state, values):
    """Push `values` into the history via a call (all finite, so all are pushed)."""
    run.select_losses(values, state)


def selected_rows(sel):
    return sel.indices[: int(sel.count)].tolist()


def test_empty_history_selects_every_valid_row(run):
    state = new_state(run, 8)
    sel = run.select_losses([0.5, 3.0, 0.0, 1e-8, 7.0], state)
    assert sel.prob.tolist() == [1.0] * 5
    assert selected_rows(sel) == [0, 1, 2, 3, 4]
    assert int(state.pushed) == 5 and int(state.step) == 1


def test_percentile_counts_strictly_smaller_history_values_ties_excluded(run):
    state = new_state(run, 4)
    fill(run, state, [1.0, 1.0, 2.0, 3.0])
    sel = run.select_losses([1.0, 2.0, 2.5, 3.5, 0.5], state)
    assert sel.prob.tolist() == [0.0, 0.5, 0.75, 1.0, 0.0]
    rows = selected_rows(sel)
    assert 0 not in rows and 4 not in rows and 3 in rows


def test_beta_is_applied_as_power_and_floor_as_minimum(run):
    state = new_state(run, 4)
    fill(run, state, [1.0, 2.0, 3.0, 4.0])
    sel = run.select_losses([2.5, 4.5, 0.0], state, beta=2.0, floor=0.1)
    assert sel.prob.tolist() == [0.25, 1.0, torch.tensor(0.1).item()]  # floor in float32


def test_floor_one_selects_every_valid_row(run):
    state = new_state(run, 4)
    fill(run, state, [5.0, 6.0, 7.0, 8.0])
    sel = run.select_losses([0.1, 0.2, float("nan"), 0.3], state, floor=1.0)
    assert selected_rows(sel) == [0, 1, 3]


def test_snapshot_excludes_the_current_calls_losses(run):
    state = new_state(run, 16)
    sel = run.select_losses([1.0, 2.0, 3.0], state)
    assert sel.prob.tolist() == [1.0, 1.0, 1.0]  # ranked against the empty snapshot, not each other


def test_ring_wraps_around_in_push_order(run):
    state = new_state(run, 4)
    fill(run, state, [10.0, 11.0, 12.0])
    fill(run, state, [13.0, 14.0, 15.0])
    # Loss k (0-based over all pushes) lives at history[k % 4]: 14 -> 0, 15 -> 1, 12 -> 2, 13 -> 3.
    assert state.history.tolist() == [14.0, 15.0, 12.0, 13.0]
    assert int(state.pushed) == 6


def test_more_rows_than_history_keeps_the_last_r(run):
    state = new_state(run, 3)
    fill(run, state, [1.0])
    fill(run, state, [float(v) for v in range(100, 110)])
    # pushed before = 1, so loss j is the (1 + j)-th push; j = 7, 8, 9 survive at slots 2, 0, 1.
    assert state.history.tolist() == [108.0, 109.0, 107.0]
    assert int(state.pushed) == 11


def test_prime_selects_everything_until_enough_losses_were_pushed(run):
    state = new_state(run, 64)
    fill(run, state, [float(v) for v in range(1, 11)])  # pushed = 10: every later loss 0.5 has pct 0
    low = [0.5] * 6
    assert selected_rows(run.select_losses(low, state, prime=20)) == list(range(6))  # pushed 10 < 20
    assert selected_rows(run.select_losses(low, state, prime=20)) == list(range(6))  # pushed 16 < 20
    sel = run.select_losses(low, state, prime=20)  # pushed 22 >= 20: back to the percentile rule
    assert sel.prob.tolist() == [0.0] * 6 and int(sel.count) == 0


def test_non_finite_losses_are_never_selected_nor_pushed_and_are_counted(run):
    state = new_state(run, 8)
    sel = run.select_losses([1.0, float("nan"), float("inf"), float("-inf"), 2.0], state, floor=1.0)
    assert selected_rows(sel) == [0, 4]
    assert sel.prob.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert int(state.pushed) == 2 and state.history[:2].tolist() == [1.0, 2.0]
    assert int(state.nonfinite_count) == 3


def test_every_row_ignored(run):
    state = new_state(run, 8)
    fill(run, state, [1.0, 2.0])
    before = state.history.clone()
    sel = run.select(torch.randn(6, 5), torch.full((6,), -100), state, floor=1.0)
    assert int(sel.count) == 0 and sel.indices.tolist() == [-1] * 6
    assert sel.loss.tolist() == [0.0] * 6 and sel.prob.tolist() == [0.0] * 6
    assert int(state.pushed) == 2 and int(state.step) == 2
    assert torch.equal(state.history, before)


def test_single_row(run):
    state = new_state(run, 2)
    sel = run.select(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([2]), state)
    assert sel.indices.tolist() == [0] and int(sel.count) == 1
    assert int(state.pushed) == 1
    assert state.history[0].item() == pytest.approx(sel.loss[0].item())


def test_step_advances_and_changes_the_draw(run):
    state = new_state(run, 1024, seed=7)
    fill(run, state, [float(v) for v in range(1000)])
    losses = torch.linspace(0, 1000, 512).tolist()
    picks = [tuple(selected_rows(run.select_losses(losses, state))) for _ in range(3)]
    assert int(state.step) == 4
    assert len(set(picks)) == 3


def test_custom_ignore_index_and_label_smoothing(run):
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    targets = torch.tensor([0, 5, 2])
    state = new_state(run, 8)
    sel = run.select(logits, targets, state, ignore_index=5, label_smoothing=0.2)
    want = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 2]), reduction="none", label_smoothing=0.2)
    assert sel.loss[0].item() == pytest.approx(want[0].item(), rel=1e-6)
    assert sel.loss[1].item() == 0.0
    assert sel.loss[2].item() == pytest.approx(want[2].item(), rel=1e-6)
    assert int(state.pushed) == 2
