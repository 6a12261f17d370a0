"""Every hot-path API runs under the CPU-side CUDA-sync detector, and the detector catches each class.

The detector (tests/tools/sync_detector.py) flags what ``torch.cuda.set_sync_debug_mode("error")`` would flag
on a GPU: host reads, scalar writes into device tensors, host data copied to the device, blocking copies
and waits. The first half of this file plants one instance of each class and checks that it is caught
(negative controls); the second half runs every hot-path API inside the detector, on the reference and
the Triton (interpreter) backends, after a warm-up call outside it.
"""

from __future__ import annotations

import pytest
import torch

import sbkernels
from sbkernels import SelectionPool, gather_rows, new_cursor, policies
from tests.helpers import LateReadbacks, kernel_devices
from tests.tools.sync_detector import SyncDetector, mark_host, note_wait

POLICIES = {
    "sb": lambda **kw: sbkernels.SB(beta=1.0, **kw),
    "keep": lambda **kw: sbkernels.Keep(0.5, **kw),
    "importance": lambda **kw: sbkernels.Importance(9, **kw),
    "gradmatch": lambda **kw: sbkernels.GradMatch(5, steps=4, **kw),
}

N, C = 37, 11


def _device_tensors():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(N, C, generator=gen), torch.randint(0, C, (N,), generator=gen)


# --------------------------------------------------------------------------------- negative controls
def _cuda_synchronize() -> None:
    """torch.cuda.synchronize(); on a CPU-only torch the detector records the call before it raises."""
    try:
        torch.cuda.synchronize()
    except (AssertionError, RuntimeError):
        assert not torch.cuda.is_available()


PLANTED = {
    "item": ("host read", lambda x, t: x[0, 0].item()),
    "int()": ("host read", lambda x, t: int(t[0])),
    "float()": ("host read", lambda x, t: float(x.sum())),
    "bool()": ("host read", lambda x, t: bool(x[0, 0] > 0)),
    "if tensor": ("host read", lambda x, t: 1 if (t > 3).any() else 0),
    "tolist": ("host read", lambda x, t: t.tolist()),
    "numpy": ("host read", lambda x, t: x.numpy()),
    ".cpu()": ("host read", lambda x, t: x.cpu()),
    "nonzero": ("host read", lambda x, t: torch.nonzero(t)),
    "boolean mask index": ("host read", lambda x, t: x[t > 3]),
    "masked_select": ("host read", lambda x, t: x.masked_select(x > 0)),
    "unique": ("host read", lambda x, t: torch.unique(t)),
    "torch.equal": ("host read", lambda x, t: torch.equal(x, x)),
    "scalar setitem": ("scalar write", lambda x, t: t.__setitem__(0, 5)),
    "torch.tensor(device=)": ("host data to device", lambda x, t: torch.tensor([1.0, 2.0], device=x.device)),
    "list index": ("host data to device", lambda x, t: x[[0, 2]]),
    "blocking copy to host": ("blocking copy", lambda x, t: mark_host(torch.empty(C)).copy_(x[0])),
    "cuda synchronize": (
        "wait",
        lambda x, t: torch.cuda.synchronize() if torch.cuda.is_available() else note_wait("s"),
    ),
    "event wait": ("wait", lambda x, t: note_wait("Event.synchronize")),
}


@pytest.mark.parametrize("name", list(PLANTED))
def test_the_detector_catches_each_planted_sync(name):
    kind, planted = PLANTED[name]
    x, t = _device_tensors()
    with SyncDetector() as detector:
        x.mul(2.0)  # harmless work around it
        planted(x, t)
    assert kind in detector.kinds(), f"{name}: caught {detector.violations}"


def test_the_detector_passes_device_side_equivalents():
    """The fixes the findings call for are not flagged: device-side fills, in-place device arithmetic,
    static-shape compaction, a non-blocking copy into pinned (host) memory, scalars in ops."""
    x, t = _device_tensors()
    meta = torch.zeros(8, dtype=torch.int64)
    host = mark_host(torch.empty(8, dtype=torch.int64))
    with SyncDetector() as detector:
        meta.narrow(0, 2, 1).fill_(0)
        meta[2].add_(1)
        meta[3] += t.sum()
        torch.where(x > 0, 1.0, 0.0).cumsum(0)
        torch.full((), N, dtype=torch.int32)
        host.copy_(meta, non_blocking=True)
        int(host[0])  # reading host memory is free
    detector.assert_clean()


def test_the_detector_looks_inside_registered_ops():
    """A custom op is one call to a dispatch mode: the detector must run the op's own Python too."""
    x, t = _device_tensors()
    state = sbkernels.SelectorState(16)

    def through_the_dispatcher():  # as torch.compile calls it; eager calls run the body (library.call)
        args = (x, t, None, None, state.history, state.meta, 2.0, 0.0, 0, -100, 0.0, "reference")
        return torch.ops.sbkernels.select_sb(*args)

    with SyncDetector() as detector:
        through_the_dispatcher()
    assert "select_sb" in detector.custom_ops
    detector.assert_clean()

    from sbkernels.ops import _registry as library

    body = library._implementations["select_sb"]

    def planted(*args, **kwargs):
        out = body(*args, **kwargs)
        int(out[1])  # a host read hidden inside the op
        return out

    library._implementations["select_sb"] = planted
    try:
        with SyncDetector() as detector:
            through_the_dispatcher()
    finally:
        library._implementations["select_sb"] = body
    assert "host read" in detector.kinds()


def test_allowed_waits_are_not_reported():
    with SyncDetector(allowed_waits=1) as detector:
        note_wait("documented")
    detector.assert_clean()
    assert detector.waits == 1


# ----------------------------------------------------------------------------------- the hot paths
BACKENDS = ["reference", "native", *(["triton"] if "cpu" in kernel_devices() else [])]

CALLS = {
    "select": lambda x, t, s, b: sbkernels.select(x, t, s, beta=2.0, floor=0.05, prime=4, backend=b),
    "select label smoothing": lambda x, t, s, b: sbkernels.select(x, t, s, label_smoothing=0.1, backend=b),
    "select_losses": lambda x, t, s, b: sbkernels.select_losses(x[:, 0].abs(), s, beta=1.5, backend=b),
    "keep": lambda x, t, s, b: policies.select_keep(x, t, s, keep=0.4, backend=b),
    "keep losses": lambda x, t, s, b: policies.select_keep(x[:, 0], None, s, keep=0.4, backend=b),
    "uniform rate": lambda x, t, s, b: policies.select_uniform(x, t, s, rate=0.3, backend=b),
    "uniform k": lambda x, t, s, b: policies.select_uniform(x, t, s, k=9, backend=b),
    "importance": lambda x, t, s, b: policies.select_importance(x, t, s, k=9, backend=b),
    "gradmatch": lambda x, t, s, b: policies.select_gradmatch(x, t, s, 5, x[:, :7] * 2, steps=4, backend=b),
    "select_losses valid": lambda x, t, s, b: sbkernels.select_losses(x[:, 0].abs(), s, valid=t >= 0, backend=b),
}

# Language models: (B, T, V) logits (a strided slice) and labels with an all-ignored sequence.
LM_CALLS = {
    "sequence_losses": lambda x, h, w, y, b: sbkernels.sequence_losses(x, y, backend=b),
    "linear_sequence_losses": lambda x, h, w, y, b: sbkernels.linear_sequence_losses(
        h, w, y, tile_bytes=120, backend=b
    ),
    "SB on sequences": lambda x, h, w, y, b: sbkernels.SB(backend=b, history_size=8)(x, y),
    "Keep on sequences": lambda x, h, w, y, b: sbkernels.Keep(0.5, backend=b)(x, y),
    "Uniform(k) on sequences": lambda x, h, w, y, b: sbkernels.Uniform(k=2, backend=b)(x, y),
}


def _lm_tensors():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 9, C, generator=gen)[:, 1:]  # (4, 8, C), not mergeable over (B, T)
    hidden, weight = torch.randn(4, 8, 6, generator=gen), torch.randn(C, 6, generator=gen)
    labels = torch.randint(0, C, (4, 8), generator=gen)
    labels[2, 1:] = -100  # no valid token after the shift
    return logits, hidden, weight, labels


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(LM_CALLS))
def test_language_model_paths_never_sync(name, backend):
    args = (*_lm_tensors(), backend)
    LM_CALLS[name](*args)  # warm-up outside the detector
    with SyncDetector() as detector:
        LM_CALLS[name](*args)
    detector.assert_clean()
    assert detector.ops_seen > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CALLS))
def test_selection_policies_never_sync(name, backend):
    x, t = _device_tensors()
    t[3] = -100
    state = sbkernels.SelectorState(64, seed=3)
    CALLS[name](x, t, state, backend)  # warm-up outside the detector
    with SyncDetector() as detector:
        for _ in range(2):
            sel = CALLS[name](x, t, state, backend)
    detector.assert_clean()
    assert detector.ops_seen > 0, "the detector saw no op"
    assert sel.indices.shape == (N,)


def test_gather_rows_never_syncs():
    x, t = _device_tensors()
    out_x, out_t = torch.empty(64, C), torch.empty(64, dtype=torch.int64)
    cursor = new_cursor("cpu")
    indices = torch.arange(N)
    count = torch.full((), 5, dtype=torch.int32)
    with SyncDetector() as detector:
        gather_rows([x, t], indices, count, [out_x, out_t], cursor)
    detector.assert_clean()
    assert detector.custom_ops == ["gather_rows"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_push_and_ready_batches_never_sync_on_the_asynchronous_path(backend):
    x, t = _device_tensors()
    state = sbkernels.SelectorState(64, seed=1)
    pool = SelectionPool(8, readback=LateReadbacks(max_polls=1, seed=2))
    pool.push(sbkernels.select(x, t, state, backend=backend), x, t)  # allocates the buffers
    taken = 0
    with SyncDetector() as detector:
        for _ in range(6):
            sel = sbkernels.select(x, t, state, backend=backend)
            pool.push(sel, x, t)
            taken += sum(bx.shape[0] for bx, _ in pool.ready_batches())
    detector.assert_clean()
    assert pool.host_waits == 0
    assert taken > 0, "no batch came out: the asynchronous path was not exercised"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy", ["sb", "keep", "importance", "gradmatch"])
def test_selective_backprop_observe_and_ready_batches_never_sync(backend, policy):
    x, t = _device_tensors()
    sb = sbkernels.SelectiveBackprop(
        8, POLICIES[policy](backend=backend), schedule=sbkernels.Schedule(interrupt=3),
        readback=LateReadbacks(max_polls=1, seed=3),
    )  # fmt: skip
    sb.observe(x, t, x, t)
    taken = 0
    with SyncDetector() as detector:
        for _ in range(5):  # interrupt=3: steps 3 is a full-batch step
            sb.observe(x, t, x, t)
            taken += sum(b.data[0].shape[0] for b in sb.ready_batches())
    detector.assert_clean()
    assert taken > 0


def _lm_batch(length: int, seed: int):
    """A collator's output: dynamic padding, so each batch has its own length."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, C, (4, length), generator=gen)
    labels = input_ids.clone()
    labels[:, length - 2 :] = -100
    mask = (labels != -100).long()
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scoring", ["logits", "hidden states"])
def test_selective_backprop_on_lm_batches_never_syncs(backend, scoring):
    """observe with (B, T, V) logits or hidden states and an LM head, on batches of different lengths: the
    pool re-pads every field to the longest length it holds, and nothing waits for the device."""
    gen = torch.Generator().manual_seed(7)
    head = torch.randn(C, 6, generator=gen)
    sb = sbkernels.SelectiveBackprop(
        3, sbkernels.SB(beta=1.0, history_size=16, backend=backend), readback=LateReadbacks(max_polls=1, seed=3),
        pad_values={"input_ids": 0},
    )  # fmt: skip

    def inputs(length: int, seed: int):  # made outside the detector: the test's own writes are not the API's
        return _lm_batch(length, seed), torch.randn(4, length, 6, generator=gen)

    def observe(batch, hidden):
        if scoring == "logits":
            return sb.observe(hidden @ head.T, batch["labels"], batch)
        return sb.observe(hidden, batch["labels"], batch, lm_head=head)

    observe(*inputs(9, 0))  # records the batch's fields
    steps = [inputs(length, seed) for seed, length in enumerate([7, 12, 9, 15, 5, 11], start=1)]
    widths = []
    with SyncDetector() as detector:
        for batch, hidden in steps:
            observe(batch, hidden)
            for ready in sb.ready_batches():
                assert ready.data["input_ids"].shape == ready.data["labels"].shape
                widths.append(ready.data["labels"].shape[1])
    detector.assert_clean()
    assert widths and max(widths) > 9, f"no re-padded batch came out ({widths}): the path was not exercised"


@pytest.mark.parametrize("backend", BACKENDS)
def test_stale_sb_epochs_never_sync(backend):
    """Stale-SB's cache writes and reads (ids out of range included: counted on the device) in both epochs."""
    x, t = _device_tensors()
    ids = torch.arange(N) - 1  # one id out of range: the spare slot and the device-side count
    sb = sbkernels.SelectiveBackprop(
        8, POLICIES["sb"](backend=backend), stale=sbkernels.StaleSB(every=2, num_samples=N),
        readback=LateReadbacks(max_polls=1, seed=3),
    )  # fmt: skip
    sb.observe(x, t, x, t, sample_ids=ids)
    taken = 0
    with SyncDetector() as detector:
        sb.observe(x, t, x, t, sample_ids=ids)  # fresh epoch: scores and stores
        sb.start_epoch(1)  # stale epoch: selects from the cache, no scoring pass
        for _ in range(3):
            sb.observe(None, None, x, t, sample_ids=ids)
            taken += sum(b.data[0].shape[0] for b in sb.ready_batches())
    detector.assert_clean()
    assert taken > 0
    with pytest.raises(ValueError, match="sample id"):
        sb.check()
