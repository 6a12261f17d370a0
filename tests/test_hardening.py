"""Hardening (SPEC section 11): wrong results on valid input, hostile state, owned batches, threads, edge values.

The malformed direct op calls are in test_fuzz.py; this file covers what the public API does with valid but
unusual input and with state that no run could have produced.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sbkernels
from sbkernels import SB, Keep, SelectionPool, SelectiveBackprop, SelectorState, StaleSB
from sbkernels.kernels import interpreting
from sbkernels.slots import META_BAD_TARGETS, META_PUSHED, META_STEP
from tests.helpers import held_by_another_thread

# --- the sorted-history percentile on more than one thread -------------------------------------------------------


def _states(history_size: int, warm: torch.Tensor) -> tuple[SelectorState, SelectorState]:
    states = SelectorState(history_size, seed=3), SelectorState(history_size, seed=3)
    for state in states:
        sbkernels.select_losses(warm, state, backend="reference")
    return states


@pytest.mark.parametrize("n", [385, 1000, 4099])  # R = 4: n > 128 * log2(4) takes the sorted path
def test_sorted_history_path_at_small_sizes_equals_the_reference(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    native_state, reference_state = _states(4, torch.tensor([0.5, 0.5, 0.2, 0.9]))  # duplicates in the snapshot
    losses = torch.rand(n, generator=gen)
    losses[::7] = 0.5  # ties with the history: #{h < loss} must not count them
    got = sbkernels.select_losses(losses, native_state, beta=2.0, backend="native")
    want = sbkernels.select_losses(losses, reference_state, beta=2.0, backend="reference")
    assert torch.equal(got.prob, want.prob)
    assert torch.equal(got.indices, want.indices)
    assert torch.equal(native_state.history, reference_state.history)


def test_sorted_history_with_a_nan_written_by_hand_counts_it_nowhere() -> None:
    """NaN never enters a history through the ops; written by hand, the sort stays inside its buffer."""
    native_state, reference_state = _states(8, torch.rand(8))
    for state in (native_state, reference_state):
        state.history[3] = float("nan")
    losses = torch.rand(3000)
    got = sbkernels.select_losses(losses, native_state, backend="native")
    want = sbkernels.select_losses(losses, reference_state, backend="reference")
    assert torch.equal(got.prob, want.prob)


@pytest.mark.parametrize(("n", "history_size", "from_logits"), [(300_000, 1024, False), (400_000, 64, True)])
def test_sorted_history_path_on_two_threads_equals_the_reference(n: int, history_size: int, from_logits: bool) -> None:
    """The issue's sizes: with the snapshot sorted into a worker-invisible buffer half the rows got prob = floor."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(1)
        native_state, reference_state = _states(history_size, torch.rand(history_size, generator=gen))
        if from_logits:  # the native losses, so that both sides rank identical values
            logits, targets = torch.randn(n, 4, generator=gen), torch.randint(0, 4, (n,), generator=gen)
            losses = sbkernels.select(logits, targets, SelectorState(1), backend="native").loss
        else:
            losses = torch.rand(n, generator=gen)
        got = sbkernels.select_losses(losses, native_state, backend="native")
        want = sbkernels.select_losses(losses, reference_state, backend="reference")
    finally:
        torch.set_num_threads(threads)
    assert int(got.count) == int(want.count)
    assert torch.equal(got.prob, want.prob)
    assert torch.equal(got.indices, want.indices)


# --- hostile state ---------------------------------------------------------------------------------------------


def _saved_state(**changes) -> dict:
    state = SelectorState(16, seed=1)
    sbkernels.select_losses(torch.rand(10), state)
    saved = state.state_dict()
    for key, change in changes.items():
        change(saved[key])
    return saved


@pytest.mark.parametrize(
    ("corruption", "message"),
    [
        ({"meta": lambda m: m.__setitem__(META_PUSHED, -5)}, "pushed"),
        ({"meta": lambda m: m.__setitem__(META_PUSHED, 2**63 - 3)}, "pushed"),
        ({"meta": lambda m: m.__setitem__(META_STEP, -1)}, "step"),
        ({"meta": lambda m: m.__setitem__(META_BAD_TARGETS, -2)}, "bad_targets"),
        ({"history": lambda h: h.__setitem__(0, float("nan"))}, "NaN"),
        ({"history": lambda h: h.__setitem__(5, float("inf"))}, "infinite"),
    ],
)
def test_selector_state_refuses_values_no_run_produces(corruption: dict, message: str) -> None:
    state = SelectorState(16, seed=1)
    before = state.state_dict()
    with pytest.raises(ValueError, match=message):
        state.load_state_dict(_saved_state(**corruption))
    assert torch.equal(state.meta, before["meta"]) and torch.equal(state.history, before["history"])  # unchanged


@pytest.mark.parametrize(
    "saved",
    [
        {"version": 1, "history": torch.zeros(16, dtype=torch.float64), "meta": torch.zeros(8, dtype=torch.int64)},
        {"version": 1, "history": torch.zeros(16), "meta": torch.zeros(8, dtype=torch.int32)},
        {"version": 1, "history": [0.0] * 16, "meta": torch.zeros(8, dtype=torch.int64)},
        {"version": 2, "history": torch.zeros(16), "meta": torch.zeros(8, dtype=torch.int64)},
        "not a dict",
    ],
)
def test_selector_state_refuses_malformed_state_dicts(saved) -> None:
    with pytest.raises(ValueError):
        SelectorState(16).load_state_dict(saved)


def test_a_refused_checkpoint_never_reaches_a_kernel() -> None:
    """The issue's heap overflow: a negative `pushed` loaded, then a native call. Now refused at load."""
    policy = SB(history_size=16)
    policy(torch.rand(10))
    saved = policy.state_dict()
    saved["state"]["meta"][META_PUSHED] = -(10**6)
    with pytest.raises(ValueError, match="pushed"):
        policy.load_state_dict(saved)
    policy(torch.rand(10))  # the state it kept is still usable
    assert int(policy.state.pushed) == 20


def _run(sb: SelectiveBackprop, batches: int = 4) -> None:
    for i in range(batches):
        x = torch.randn(16, 3, generator=torch.Generator().manual_seed(i))
        sb.observe(torch.rand(16), None, x, sample_ids=torch.arange(16 * i, 16 * i + 16))


@pytest.mark.parametrize(
    ("key", "corrupt", "message"),
    [
        ("step", lambda s: -1, "step"),
        ("counts", lambda s: {"observed": 1}, "counts"),
        ("spec", lambda s: {**s, "size": 0}, "spec"),
        ("spec", lambda s: {**s, "with_ids": False}, "tensors"),
        ("pool", lambda s: {**s, "rows_out": -3}, "rows_out"),
        ("pool", lambda s: {**s, "rows": [s["rows"][0], s["rows"][1][:1]]}, "same rows"),
        ("pool", lambda s: {**s, "batch_size": 5}, "batch_size"),
        ("policy", lambda s: {"state": {"history": "x"}}, "SelectorState"),
    ],
)
def test_selective_backprop_refuses_corrupted_checkpoints(key: str, corrupt, message: str) -> None:
    sb = SelectiveBackprop(8, SB(history_size=32))
    _run(sb)
    saved = sb.state_dict()
    saved[key] = corrupt(saved[key])
    fresh = SelectiveBackprop(8, SB(history_size=32))
    with pytest.raises(ValueError, match=message):
        fresh.load_state_dict(saved)


def test_stale_sb_refuses_a_cache_of_another_size() -> None:
    stale = StaleSB(every=2, num_samples=10)
    with pytest.raises(ValueError, match="num_samples"):
        stale.load_state_dict({"cache": torch.zeros(11)})


# --- owned backward batches ------------------------------------------------------------------------------------


def test_gradient_accumulation_pattern_trains_every_row_exactly_once() -> None:
    """Take every ready batch first (as HF Trainer's gradient accumulation does), use them after."""
    sb = SelectiveBackprop(8, Keep(0.75))
    taken = []
    for i in range(12):
        x = torch.arange(16 * i, 16 * i + 16, dtype=torch.float32)[:, None].repeat(1, 3)
        sb.observe(torch.rand(16), None, x, sample_ids=torch.arange(16 * i, 16 * i + 16))
        if i % 4 == 3:
            taken.extend(list(sb.ready_batches()))  # k batches held before any is used
    taken.extend(sb.flush())
    ids = torch.cat([b.sample_ids for b in taken])
    rows = torch.cat([b.data[0][:, 0] for b in taken])
    assert torch.equal(rows.long(), ids)  # each batch still holds the rows it was handed out with
    assert ids.unique().numel() == ids.numel() == sb.counts["backward"]  # none twice, none lost
    assert ids.numel() == 12 * int(0.75 * 16)


def test_a_kept_batch_is_not_a_view_of_the_pool() -> None:
    pool = SelectionPool(4)
    x = torch.arange(12.0)[:, None]
    sel = sbkernels.select_uniform(torch.rand(12), None, SelectorState(4), rate=1.0)
    pool.push(sel, x)
    first, second, _ = list(pool.ready_batches())
    assert first[0].untyped_storage().data_ptr() != second[0].untyped_storage().data_ptr()
    assert torch.equal(first[0][:, 0], torch.arange(4.0)) and torch.equal(second[0][:, 0], torch.arange(4.0, 8.0))


# --- threads ----------------------------------------------------------------------------------------------------


def test_a_pool_used_from_two_threads_at_once_raises() -> None:
    """Deterministic overlap: another thread holds the pool inside a call while this one pushes."""
    pool = SelectionPool(4)
    sel = sbkernels.select_uniform(torch.rand(6), None, SelectorState(4), rate=1.0)
    pool.push(sel, torch.randn(6, 2))
    with held_by_another_thread(pool._exclusive):
        with pytest.raises(RuntimeError, match="another thread"):
            pool.push(sel, torch.randn(6, 2))
        with pytest.raises(RuntimeError, match="another thread"):
            list(pool.ready_batches())
    assert len(list(pool.ready_batches())) == 1  # the refused calls changed nothing: 6 rows held, one batch
    assert pool.flush()[0].shape[0] == 2


# --- smaller items ----------------------------------------------------------------------------------------------


def test_stale_sb_ids_out_of_range_touch_no_other_sample() -> None:
    stale = StaleSB(every=2, num_samples=5)
    stale.store(torch.arange(5), torch.arange(5.0))
    stale.store(torch.tensor([-1, 5, 2]), torch.tensor([9.0, 9.0, 7.0]))
    assert torch.equal(stale.cache, torch.tensor([0.0, 1.0, 7.0, 3.0, 4.0]))
    cached = stale.cached(torch.tensor([4, -1, 99]))
    assert cached[0] == 4.0 and torch.isnan(cached[1:]).all()  # NaN: never selected, counted non-finite
    with pytest.raises(ValueError, match="4 sample id"):
        stale.check()
    stale.check()  # reported once


@pytest.mark.parametrize("steps", [0, -1, 10**6])
def test_gradmatch_steps_out_of_range_are_refused(steps: int) -> None:
    with pytest.raises(ValueError, match="steps"):
        sbkernels.GradMatch(k=2, steps=steps)
    with pytest.raises(ValueError, match="steps"):
        sbkernels.select_gradmatch(torch.randn(6, 3), torch.randint(0, 3, (6,)), SelectorState(4), 2, steps=steps)


@pytest.mark.parametrize("backend", ["reference", "native", "triton"])
def test_plus_inf_non_target_logit_gives_nan_as_f_cross_entropy(backend: str) -> None:
    if backend == "triton" and not interpreting():
        pytest.skip("the Triton backend on CPU needs TRITON_INTERPRET=1")
    logits = torch.randn(4, 5)
    logits[1, 3] = float("inf")
    targets = torch.tensor([0, 0, 1, 2])
    want = F.cross_entropy(logits, targets, reduction="none")
    got = sbkernels.select(logits, targets, SelectorState(8), backend=backend)
    assert torch.isnan(want[1]) and torch.isnan(got.loss[1])
    torch.testing.assert_close(got.loss[[0, 2, 3]], want[[0, 2, 3]])


@pytest.mark.parametrize("backend", ["reference", "native", "triton"])
def test_label_smoothing_overflow_is_plus_inf_never_finite_or_minus_inf(backend: str) -> None:
    """Logits near the float32 maximum: the smoothing term's sum overflows; F.cross_entropy gives +inf."""
    if backend == "triton" and not interpreting():
        pytest.skip("the Triton backend on CPU needs TRITON_INTERPRET=1")
    logits = torch.full((2, 64), 3.0e38)
    logits[:, 0] = 3.3e38
    targets = torch.tensor([0, 1])
    want = F.cross_entropy(logits, targets, reduction="none", label_smoothing=0.1)
    state = SelectorState(8)
    got = sbkernels.select(logits, targets, state, label_smoothing=0.1, backend=backend)
    assert torch.equal(want, torch.full((2,), float("inf")))
    assert torch.equal(got.loss, want)
    assert int(got.count) == 0 and int(state.pushed) == 0 and int(state.nonfinite_count) == 2
