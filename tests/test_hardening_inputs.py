"""Hardening, round two (#27): input a user can produce that gave a wrong result, lost a field or failed
unclearly. Each test is the case as it was found; the framework cases are in tests/integrations, the
malformed direct op calls in the fuzz table (tests/tools/fuzz_cases.py)."""

from __future__ import annotations

import threading

import pytest
import torch

import sbkernels
from sbkernels import SB, Keep, SelectiveBackprop, SelectorState, Uniform
from sbkernels.slots import META_STEP
from tests.helpers import held_by_another_thread

# --- valid= with language-model logits (item 4) ------------------------------------------------------------------

SEQUENCE_POLICIES = {
    "sb": lambda: SB(beta=1.0, history_size=16),
    "keep": lambda: Keep(0.5, history_size=16),
    "uniform_rate": lambda: Uniform(rate=0.7, history_size=16),
    "uniform_k": lambda: Uniform(k=2, history_size=16),
}


def _lm_batch(seed: int = 0, batch: int = 6, length: int = 5, vocab: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, vocab, generator=gen), torch.randint(0, vocab, (batch, length), generator=gen)


@pytest.mark.parametrize("name", sorted(SEQUENCE_POLICIES))
def test_valid_masks_sequences_of_lm_logits_as_ignored_labels_would(name: str) -> None:
    """``valid=`` on (B, T, V) logits was dropped: an all-False mask still selected sequences. A sequence left
    out by ``valid`` must be selected exactly as one whose labels are all ignore_index."""
    logits, labels = _lm_batch()
    valid = torch.tensor([True, False, True, True, False, True])
    got = SEQUENCE_POLICIES[name]()(logits, labels, valid=valid)
    want = SEQUENCE_POLICIES[name]()(logits, labels.masked_fill(~valid[:, None], -100))
    assert torch.equal(got.indices[: int(got.count)], want.indices[: int(want.count)])
    assert not set(got.indices[: int(got.count)].tolist()) & {1, 4}
    nothing = SEQUENCE_POLICIES[name]()(logits, labels, valid=torch.zeros(6, dtype=torch.bool))
    assert int(nothing.count) == 0


@pytest.mark.parametrize("valid", [torch.ones(5, dtype=torch.bool), torch.ones(6), "all"])
def test_a_malformed_valid_with_lm_logits_is_refused_by_name(valid) -> None:
    logits, labels = _lm_batch()
    with pytest.raises(ValueError, match=r"valid must be a bool tensor of shape \(6,\)"):
        SB()(logits, labels, valid=valid)


@pytest.mark.parametrize("name", ["importance", "gradmatch"])
def test_policies_that_score_logits_refuse_lm_logits_with_the_alternative(name: str) -> None:
    policy = sbkernels.Importance(k=2) if name == "importance" else sbkernels.GradMatch(k=2)
    logits, labels = _lm_batch()
    with pytest.raises(ValueError, match="use SB, Uniform or Keep"):
        policy(logits, labels, valid=torch.ones(6, dtype=torch.bool))


# --- dict batches: fields that appear later, repeated names (items 5, 9) ------------------------------------------


def _dict_batch(n: int = 4, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.arange(n * 3).view(n, 3), "labels": torch.arange(n), **extra}


def test_a_field_first_seen_after_the_first_batch_is_refused_by_name() -> None:
    """``token_type_ids`` appearing in the second batch was silently left out of every backward batch."""
    sb = SelectiveBackprop(2, SB())
    sb.observe(torch.rand(4), None, _dict_batch())
    with pytest.raises(ValueError, match=r"fields \['token_type_ids'\] that the first batch did not have"):
        sb.observe(torch.rand(4), None, _dict_batch(token_type_ids=torch.zeros(4, 3, dtype=torch.int64)))


def test_named_fields_leave_the_others_out_on_purpose() -> None:
    """Control: with ``fields=`` the caller chose what travels, so a later extra field is no error."""
    sb = SelectiveBackprop(2, Uniform(rate=1.0), fields=("input_ids", "labels"))
    sb.observe(torch.rand(4), None, _dict_batch())
    sb.observe(torch.rand(4), None, _dict_batch(token_type_ids=torch.zeros(4, 3, dtype=torch.int64)))
    assert all(set(batch.data) == {"input_ids", "labels"} for batch in sb.flush())


def test_fields_named_twice_are_refused() -> None:
    sb = SelectiveBackprop(2, SB(), fields=("input_ids", "labels", "input_ids"))
    with pytest.raises(ValueError, match=r"fields names \['input_ids'\] more than once"):
        sb.observe(torch.rand(4), None, _dict_batch())


def _saved_run() -> dict:
    sb = SelectiveBackprop(8, Uniform(rate=1.0))
    sb.observe(torch.rand(4), None, _dict_batch())  # 4 rows stay in the pool
    return sb.state_dict()


def test_a_checkpoint_whose_spec_repeats_a_field_is_refused() -> None:
    """A repeated name made unflatten overwrite a field: input_ids came back holding the labels."""
    saved = _saved_run()
    saved["spec"]["keys"] = ["labels", "labels"]
    with pytest.raises(ValueError, match="malformed batch spec"):
        SelectiveBackprop(8, Uniform(rate=1.0)).load_state_dict(saved)


def test_a_checkpoint_with_pool_rows_and_no_spec_is_refused() -> None:
    """Accepted before, then flush() failed with a bare AssertionError."""
    saved = _saved_run()
    saved["spec"] = None
    with pytest.raises(ValueError, match="the pool holds rows but there is no batch spec"):
        SelectiveBackprop(8, Uniform(rate=1.0)).load_state_dict(saved)


# --- a refused observe leaves the state as it was (item 7) ---------------------------------------------------------


def _snapshot(sb: SelectiveBackprop) -> tuple:
    state = sb.state
    assert state is not None
    return state.history.clone(), state.meta.clone(), sb.step, dict(sb.counts)


@pytest.mark.parametrize(
    "bad_batch",
    [
        lambda x, y: (x, y[:3]),  # a tensor with the wrong row count
        lambda x, y: (x, y.float()),  # another dtype than the pool holds
        lambda x, y: (x[:, :2], y),  # another row shape
    ],
    ids=["rows", "dtype", "shape"],
)
def test_a_refused_observe_leaves_the_selection_state_alone(bad_batch) -> None:
    """The policy ran before the pool checked the batch: on a refused push the losses were in the history
    and the step had advanced, with no row pooled. The next observe then drew other rows."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, generator=gen), torch.randint(0, 3, (4,), generator=gen)
    sb, control = SelectiveBackprop(2, SB(history_size=8)), SelectiveBackprop(2, SB(history_size=8))
    for run in (sb, control):
        run.observe(x, y, x, y)
    before = _snapshot(sb)
    with pytest.raises(ValueError):
        sb.observe(x * 2, y, *bad_batch(x, y))
    after = _snapshot(sb)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert before[2:] == after[2:]
    assert torch.equal(sb.observe(x, y, x, y).indices, control.observe(x, y, x, y).indices)


def test_a_refused_first_observe_records_no_batch_layout() -> None:
    sb = SelectiveBackprop(2, SB(), pad_values={"input_ids": 0.5})
    with pytest.raises(ValueError, match="pad value"):
        sb.observe(torch.rand(4), None, _dict_batch())
    assert sb.spec is None
    assert sb.state is None or int(sb.state.meta[META_STEP]) == 0


# --- pad values the field's dtype cannot hold (item 11) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("pad", "dtype"), [(7.5, torch.int64), (2**40, torch.int32), (-1, torch.uint8), (2, torch.bool), ("0", torch.int64)]
)
def test_a_pad_value_the_field_cannot_hold_is_refused(pad, dtype) -> None:
    """7.5 for an int64 field was truncated to 7 when the pool re-padded."""
    sb = SelectiveBackprop(2, Uniform(rate=1.0), pad_values={"input_ids": pad})
    batch = {"input_ids": torch.zeros(4, 3, dtype=dtype), "labels": torch.zeros(4, 3, dtype=torch.int64)}
    with pytest.raises(ValueError, match="pad value of input_ids"):
        sb.observe(torch.rand(4), None, batch)


@pytest.mark.parametrize(
    ("pad", "dtype"), [(7, torch.int64), (7.0, torch.int64), (0.5, torch.float16), (1, torch.bool)]
)
def test_pad_values_the_field_holds_pad_it(pad, dtype) -> None:
    """Control: values the dtype holds exactly are used as given."""
    sb = SelectiveBackprop(4, Uniform(rate=1.0), pad_values={"input_ids": pad})
    for width in (3, 5):  # one backward batch of both pushes' rows: the first two re-padded to 5
        batch = {"input_ids": torch.zeros(2, width, dtype=dtype), "labels": torch.zeros(2, width, dtype=torch.int64)}
        sb.observe(torch.rand(2), None, batch)
    padded = next(batch.data["input_ids"] for batch in sb.flush())
    assert padded.shape == (4, 5) and torch.equal(padded[:2, 3:], torch.full((2, 2), pad, dtype=dtype))


# --- two threads on one SelectorState (item 10) ---------------------------------------------------------------------


def test_a_second_thread_on_a_state_in_use_is_refused() -> None:
    """Through the functional ops two threads shared one state with no error, and some calls drew with
    the same Philox step. Deterministic form: a call made while another thread holds the state raises."""
    state = SelectorState(16)
    with held_by_another_thread(state.exclusive):
        for call in (
            lambda: sbkernels.select_losses(torch.rand(4), state),
            lambda: sbkernels.select(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), state),
            lambda: sbkernels.select_keep(torch.rand(4), None, state, 0.5),
            lambda: sbkernels.select_uniform(torch.rand(4), None, state, rate=0.5),
            lambda: sbkernels.select_importance(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), state, 2),
            lambda: sbkernels.select_gradmatch(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), state, 2),
        ):
            with pytest.raises(RuntimeError, match=r"SelectorState.* another thread"):
                call()
    assert int(state.meta[META_STEP]) == 0
    sbkernels.select_losses(torch.rand(4), state)  # free again
    assert int(state.meta[META_STEP]) == 1


def test_threads_sharing_a_state_never_draw_with_the_same_step() -> None:
    """Stress form of the issue's run (4 threads, reference backend): every call that returns took its own
    step, so the steps taken equal the calls that returned."""
    state, returned, lock = SelectorState(64), [0], threading.Lock()

    def work() -> None:
        for _ in range(100):
            try:
                sbkernels.select_losses(torch.rand(64), state, backend="reference")
            except RuntimeError:
                continue
            with lock:
                returned[0] += 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert int(state.meta[META_STEP]) == returned[0] > 0


def test_a_copied_state_has_a_guard_of_its_own() -> None:
    import copy

    state = SelectorState(8)
    with state.exclusive("test"):
        twin = copy.deepcopy(state)
        sbkernels.select_losses(torch.rand(4), twin)  # the copy is not held
    assert int(twin.meta[META_STEP]) == 1


# --- language-model ops on meta tensors (item 12) --------------------------------------------------------------------


def test_lm_ops_on_meta_tensors_give_shapes() -> None:
    """``linear_sequence_losses`` on meta tensors failed in the autocast query ("unknown device type for
    autocast"); devices without kernels of their own run the reference, which gives the shapes."""
    hidden, weight = torch.empty(2, 3, 4, device="meta"), torch.empty(5, 4, device="meta")
    labels = torch.empty(2, 3, dtype=torch.int64, device="meta")
    assert sbkernels.linear_sequence_losses(hidden, weight, labels).shape == (2,)
    assert sbkernels.sequence_losses(torch.empty(2, 3, 5, device="meta"), labels).shape == (2,)


def test_lm_ops_with_one_tensor_on_meta_name_the_devices() -> None:
    hidden, weight = torch.randn(2, 3, 4), torch.randn(5, 4, device="meta")
    with pytest.raises(ValueError, match="weight is on meta but hidden is on cpu"):
        sbkernels.linear_sequence_losses(hidden, weight, torch.zeros(2, 3, dtype=torch.int64))


def test_a_checkpoint_of_another_kind_of_run_is_refused() -> None:
    """A Stale-SB run's loss cache, or a process group's step decisions, silently dropped on load before."""
    stale = SelectiveBackprop(2, SB(), stale=sbkernels.StaleSB(2, num_samples=8))
    stale.observe(torch.rand(4), None, torch.arange(4), sample_ids=torch.arange(4))
    with pytest.raises(ValueError, match="saved by a run with Stale-SB"):
        SelectiveBackprop(2, SB()).load_state_dict(stale.state_dict())
    plain = SelectiveBackprop(2, SB())
    plain.observe(torch.rand(4), None, torch.arange(4))
    with pytest.raises(ValueError, match="saved without Stale-SB"):
        SelectiveBackprop(2, SB(), stale=sbkernels.StaleSB(2, num_samples=8)).load_state_dict(plain.state_dict())
