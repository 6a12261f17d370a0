"""Public API: argument errors before any launch, device-side target checks, torch.compile, opcheck."""

from __future__ import annotations

import pytest
import torch

import sbkernels
from tests.helpers import backend_devices, kernel_devices

PAIRS = backend_devices()
IDS = [f"{b}-{d}" for b, d in PAIRS]


def good_inputs(device="cpu", n=6, num_classes=4):
    return torch.randn(n, num_classes, device=device), torch.randint(0, num_classes, (n,), device=device)


BAD_SELECT_CALLS = [
    ("logits must be 2-D", lambda lg, t: (lg[0], t), {}),
    ("at least one row", lambda lg, t: (lg[:0], t[:0]), {}),
    ("at least 2 classes", lambda lg, t: (lg[:, :1], t), {}),
    ("logits dtype", lambda lg, t: (lg.double(), t), {}),
    ("unit stride", lambda lg, t: (lg.t().contiguous().t(), t), {}),
    ("targets must have shape", lambda lg, t: (lg, t[:-1]), {}),
    ("targets dtype", lambda lg, t: (lg, t.float()), {}),
    ("beta", lambda lg, t: (lg, t), {"beta": 0.0}),
    ("beta", lambda lg, t: (lg, t), {"beta": float("nan")}),
    ("floor", lambda lg, t: (lg, t), {"floor": 1.5}),
    ("floor", lambda lg, t: (lg, t), {"floor": -0.1}),
    ("prime", lambda lg, t: (lg, t), {"prime": -1}),
    ("label_smoothing", lambda lg, t: (lg, t), {"label_smoothing": 1.0}),
    ("backend", lambda lg, t: (lg, t), {"backend": "cuda"}),
]


@pytest.mark.parametrize(("message", "mutate", "kwargs"), BAD_SELECT_CALLS, ids=[m for m, _, _ in BAD_SELECT_CALLS])
def test_bad_select_arguments_raise_before_any_launch(message, mutate, kwargs):
    state = sbkernels.SelectorState(8)
    before = state.state_dict()
    logits, targets = good_inputs()
    if message == "unit stride":
        logits = torch.randn(4, 6).t()  # (6, 4) with stride(1) == 6
    with pytest.raises(ValueError, match=message):
        sbkernels.select(*mutate(logits, targets), state, **kwargs)
    assert torch.equal(state.meta, before["meta"]) and torch.equal(state.history, before["history"])


def test_bad_losses_and_state_arguments():
    state = sbkernels.SelectorState(4)
    with pytest.raises(ValueError, match="losses must be 1-D"):
        sbkernels.select_losses(torch.zeros(2, 2), state)
    with pytest.raises(ValueError, match="losses dtype"):
        sbkernels.select_losses(torch.zeros(3, dtype=torch.int64), state)
    with pytest.raises(TypeError, match="SelectorState"):
        sbkernels.select_losses(torch.zeros(3), object())
    for size in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="history_size"):
            sbkernels.SelectorState(size)
    with pytest.raises(ValueError, match="seed"):
        sbkernels.SelectorState(4, seed=2**63)
    assert int(state.step) == 0


IGNORE_INDEX_CALLS = {
    "select": lambda x, t, y, h, w, i: sbkernels.select(x, t, sbkernels.SelectorState(8), ignore_index=i),
    "select_keep": lambda x, t, y, h, w, i: sbkernels.select_keep(
        x, t, sbkernels.SelectorState(8), 0.5, ignore_index=i
    ),
    "Uniform": lambda x, t, y, h, w, i: sbkernels.Uniform(k=2, ignore_index=i)(x, t),
    "SB on sequences": lambda x, t, y, h, w, i: sbkernels.SB(ignore_index=i)(h @ w.T, y),
    "sequence_losses": lambda x, t, y, h, w, i: sbkernels.sequence_losses(h @ w.T, y, ignore_index=i),
    "linear_sequence_losses": lambda x, t, y, h, w, i: sbkernels.linear_sequence_losses(h, w, y, ignore_index=i),
}


@pytest.mark.parametrize("bad", [1.5, 2**70, True, "-100"])
@pytest.mark.parametrize("name", list(IGNORE_INDEX_CALLS))
def test_a_bad_ignore_index_is_refused_by_name(name, bad):
    """Every public path checks ignore_index (the ops layer does it for all of them): a float or a value
    beyond int64 used to reach the C++ argument parser, whose error did not say what to pass."""
    x, t = torch.randn(6, 5), torch.randint(0, 5, (6,))
    h, w, y = torch.randn(2, 4, 3), torch.randn(5, 3), torch.randint(0, 5, (2, 4))
    with pytest.raises(ValueError, match="ignore_index must be an int64"):
        IGNORE_INDEX_CALLS[name](x, t, y, h, w, bad)
    IGNORE_INDEX_CALLS[name](x, t, y, h, w, -(2**63))  # any int64 is a valid target value to skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device type")
def test_state_on_another_device_is_rejected():
    state = sbkernels.SelectorState(4, device="cuda")
    with pytest.raises(ValueError, match="state lives on"):
        sbkernels.select(*good_inputs("cpu"), state)


@pytest.mark.parametrize(("backend", "device"), PAIRS, ids=IDS)
def test_out_of_range_targets_are_counted_on_device_and_raised_by_check(backend, device):
    state = sbkernels.SelectorState(8, device=device)
    logits = torch.randn(5, 4, device=device)
    targets = torch.tensor([0, 4, -1, 3, -100], device=device)
    sel = sbkernels.select(logits, targets, state, floor=1.0, backend=backend)
    assert sel.indices[: int(sel.count)].tolist() == [0, 3]
    assert torch.isnan(sel.loss[1]) and torch.isnan(sel.loss[2])
    assert int(state.bad_target_count) == 2 and int(state.pushed) == 2
    with pytest.raises(ValueError, match="2 row"):
        state.check()
    state.check()  # reported once, then cleared
    with pytest.raises(ValueError, match="outside"):
        sbkernels.select(logits, targets, state, backend=backend, validate=True)


def test_backend_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        sbkernels.select(*good_inputs(), sbkernels.SelectorState(4), backend="triton")


def test_backend_environment_variable(monkeypatch):
    monkeypatch.setenv("SBKERNELS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="backend"):
        sbkernels.select(*good_inputs(), sbkernels.SelectorState(4))


def test_torch_compile_fullgraph_matches_eager():
    logits, targets = good_inputs(n=37, num_classes=11)

    def step(lg, t, state):
        sel = sbkernels.select(lg, t, state, beta=2.0, floor=0.01)
        return sel.indices, sel.count, sel.loss * 2

    eager_state, compiled_state = sbkernels.SelectorState(16, seed=4), sbkernels.SelectorState(16, seed=4)
    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    for _ in range(3):
        want = step(logits, targets, eager_state)
        got = compiled(logits, targets, compiled_state)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        torch.testing.assert_close(got[2], want[2])
    assert torch.equal(compiled_state.meta, eager_state.meta)
    # Inductor fuses the logsumexp differently: losses (and so the history) agree to float32 rounding.
    torch.testing.assert_close(compiled_state.history, eager_state.history)


def test_torch_compile_fullgraph_runs_every_native_policy():
    """The batch-level policies on the native CPU path (one C++ op each) under torch.compile(fullgraph=True):
    the same rows and counters as eager. (gradmatch's OMP is torch ops whose Inductor compile takes minutes
    on a cold cache; its native residuals op is opchecked.)"""
    logits, targets = good_inputs(n=41, num_classes=13)

    def step(lg, t, state):
        keep = sbkernels.select_keep(lg, t, state, 0.4)
        uniform = sbkernels.select_uniform(lg, t, state, k=9)
        importance = sbkernels.select_importance(lg, t, state, 7)
        return [x for sel in (keep, uniform, importance) for x in (sel.indices, sel.count)]

    eager_state, compiled_state = sbkernels.SelectorState(16, seed=2), sbkernels.SelectorState(16, seed=2)
    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    for _ in range(2):
        want = step(logits, targets, eager_state)
        got = compiled(logits, targets, compiled_state)
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)
    assert torch.equal(compiled_state.meta, eager_state.meta)


# AOTDispatcher cannot trace an interpreted kernel, so the interpreter path skips that one check; with a
# GPU the full opcheck runs on CUDA tensors with compiled Triton (tests/kernels/test_gpu.py).
INTERPRETER_OPCHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")
OPCHECK_CASES = [("reference", "cpu", "ALL"), ("native", "cpu", "ALL")]
if "cpu" in kernel_devices():
    OPCHECK_CASES.append(("triton", "cpu", INTERPRETER_OPCHECKS))
if torch.cuda.is_available():
    OPCHECK_CASES += [("triton", "cuda", "ALL"), ("reference", "cuda", "ALL")]


@pytest.mark.parametrize(("backend", "device", "checks"), OPCHECK_CASES, ids=[f"{b}-{d}" for b, d, _ in OPCHECK_CASES])
def test_opcheck_every_policy_op(backend, device, checks):
    logits, targets = good_inputs(device, n=9, num_classes=5)
    losses = torch.rand(9, device=device)
    flags = torch.tensor([0, 1, 2, 0, 0, 0, 1, 0, 0], dtype=torch.int8, device=device)
    state = sbkernels.SelectorState(4, device=device)
    h, m = state.history, state.meta
    ops = torch.ops.sbkernels
    calls = [
        (ops.select_sb.default, (logits, targets, None, None, h, m, 2.0, 0.0, 0, -100, 0.0, backend)),
        (ops.select_sb.default, (None, None, losses, flags, h, m, 1.0, 0.1, 0, -100, 0.0, backend)),
        (ops.uniform.default, (logits, targets, None, None, h, m, 0.3, -1, 0, -100, backend)),
        (ops.uniform.default, (None, None, losses, None, h, m, -1.0, 4, 9, -100, backend)),
        (ops.uniform.default, (None, None, losses, flags, h, m, -1.0, 4, 9, -100, backend)),
        (ops.keep.default, (logits, targets, None, None, m, 0.5, 0, -100, backend)),
        (ops.keep.default, (None, None, losses, flags, m, 0.5, 0, -100, backend)),
        (ops.importance.default, (logits, targets, m, 4, 0, -100, backend)),
        (ops.row_losses.default, (logits, targets, None, -100, 0.1, backend)),
        (ops.gradmatch.default, (logits, targets, None, m, 3, 5, -100, backend)),
    ]
    for op, args in calls:
        torch.library.opcheck(op, args, test_utils=checks)
