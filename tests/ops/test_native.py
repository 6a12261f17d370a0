"""The native CPU kernels (csrc/cpu/select_cpu.cpp) against the reference, on varied odd shapes.

Exact where the contract says exact: the Philox uniforms bit for bit, and, given the native kernel's own
losses, the reference's indices, count, probabilities (whole-number beta), history and counters. The
losses themselves agree to float32 rounding (the native exp is a polynomial, the reference torch's).
"""

from __future__ import annotations

import pytest
import torch

import sbkernels
from sbkernels import reference
from sbkernels._rows import integer_beta, target_masks
from sbkernels.ops import _sampling as sampling
from tests.helpers import ISAS, loss_tolerance, random_logits, random_targets

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def test_cpu_isa_op_reads_sets_and_refuses_unknown_sets():
    before = torch.ops.sbkernels.cpu_isa("")
    try:
        assert torch.ops.sbkernels.cpu_isa("default") == "default" == torch.ops.sbkernels.cpu_isa("")
        assert torch.ops.sbkernels.cpu_isa("best") in ISAS
        with pytest.raises(RuntimeError, match="unknown CPU instruction set"):
            torch.ops.sbkernels.cpu_isa("sse9")
    finally:
        torch.ops.sbkernels.cpu_isa(before)


@pytest.mark.parametrize("seed", [0, 1, -7, 2**40 + 3, -(2**62)])
def test_native_philox_is_triton_tl_rand_bit_for_bit(seed):
    state = sbkernels.SelectorState(4, seed=seed)
    for step in (0, 1, 12345, 2**31 + 5):
        state.meta[2] = step
        for offset in (0, 1000):
            _, _, u = torch.ops.sbkernels.row_stats_cpu(None, None, torch.zeros(257), state.meta, -100, 0.0, offset)
            want = reference.philox_uniform(state.meta[1], state.meta[2], 257, offset)
            assert torch.equal(u, want), (seed, step, offset)


CASES = [  # (N, C, dtype, beta, floor, prime, label smoothing, history size)
    (1, 2, torch.float32, 1.0, 0.0, 0, 0.0, 8),
    (37, 11, torch.float32, 2.0, 0.05, 0, 0.0, 16),
    (129, 1000, torch.bfloat16, 3.0, 0.0, 50, 0.1, 64),
    (300, 17, torch.float16, 1.5, 0.2, 0, 0.0, 100),
    (65, 4099, torch.float32, 1.0, 0.0, 0, 0.2, 1024),
    (513, 33, torch.bfloat16, 0.7, 0.01, 0, 0.0, 7),
]


@pytest.mark.parametrize("case", CASES, ids=[f"N{c[0]}-C{c[1]}-{str(c[2])[6:]}-b{c[3]}" for c in CASES])
def test_native_select_equals_the_reference_on_its_own_losses(case, cpu_isa):
    n, num_classes, dtype, beta, floor, prime, eps, size = case
    gen = torch.Generator().manual_seed(n * num_classes)
    native = sbkernels.SelectorState(size, seed=n)
    ref = sbkernels.SelectorState(size, seed=n)
    for call in range(4):  # consecutive calls, ring wraparound, N > R
        logits = random_logits(n, num_classes, dtype, "cpu", gen)
        targets = random_targets(n, num_classes, 0.1, gen)
        if n > 3:
            targets[1] = num_classes + 2  # out of range
            logits[2, (int(targets[2]) + 1) % num_classes] = float("-inf")  # masked entry: finite loss
            logits[3, 0] = float("nan")
        got = sbkernels.select(logits, targets, native, beta, floor, prime, label_smoothing=eps, backend="native")
        want_loss, _, _ = reference.cross_entropy(logits, targets, -100, eps)
        assert torch.equal(torch.isnan(got.loss), torch.isnan(want_loss))
        tol = loss_tolerance(logits.float().nan_to_num(0.0, 0.0, 0.0))
        torch.testing.assert_close(got.loss, want_loss, rtol=2e-6, atol=tol, equal_nan=True)
        _, ignored, bad = target_masks(targets, num_classes, -100)
        want = reference.select_sb(got.loss.clone(), ignored, bad, ref.history, ref.meta, beta, floor, prime)
        assert torch.equal(got.indices, want[0]) and int(got.count) == int(want[1]), call
        if integer_beta(beta):
            assert torch.equal(got.prob, want[3])
        else:
            torch.testing.assert_close(got.prob, want[3], rtol=2e-6, atol=0)
        assert torch.equal(native.history, ref.history) and torch.equal(native.meta, ref.meta), call


def test_native_select_on_losses_with_non_finite_values():
    losses = torch.tensor([0.5, float("nan"), 2.0, float("inf"), float("-inf"), 1.0, 3.0, 0.1] * 5)
    native, ref = sbkernels.SelectorState(16, seed=2), sbkernels.SelectorState(16, seed=2)
    for _ in range(3):
        got = sbkernels.select_losses(losses, native, beta=2.0, backend="native")
        want = sbkernels.select_losses(losses, ref, beta=2.0, backend="reference")
        assert torch.equal(got.indices, want.indices) and torch.equal(got.prob, want.prob)
    assert torch.equal(native.meta, ref.meta) and torch.equal(native.history, ref.history)


@pytest.mark.parametrize("dtype", DTYPES)
def test_native_row_stats_equal_the_reference(dtype, cpu_isa):
    gen = torch.Generator().manual_seed(3)
    logits = random_logits(77, 301, dtype, "cpu", gen)
    targets = torch.randint(0, 301, (77,), generator=gen)
    targets[::7] = -100
    targets[5] = -3
    meta = sbkernels.SelectorState(4, seed=9).meta
    loss, score, u = torch.ops.sbkernels.row_stats_cpu(logits, targets, None, meta, -100, 0.0, 0)
    want_loss, want_score, want_u = reference.row_stats(logits, targets, None, meta)
    assert torch.equal(u, want_u)
    torch.testing.assert_close(loss, want_loss, rtol=2e-6, atol=loss_tolerance(logits), equal_nan=True)
    torch.testing.assert_close(score, want_score, rtol=1e-5, atol=1e-6, equal_nan=True)


def assert_same_as_float32(got, want, exact: bool) -> None:
    assert torch.equal(got.isnan(), want.isnan())
    if exact:
        assert torch.equal(got.nan_to_num(), want.nan_to_num())
    else:
        torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_native_kernels_widen_every_16_bit_pattern(dtype, cpu_isa):
    """All 65536 bit patterns as logits, consecutive patterns (values of one binade) sharing a row: the 16-bit
    kernels' losses and scores equal the float32 kernels' on ``.float()`` of the same logits, inf and NaN
    included. Bit for bit for float16 (same lanes in the same order); to float32 rounding for bfloat16,
    whose pair loads put even and odd columns in different lanes, so its sums add in another order. (A wrong
    subnormal would only show where it moves a loss by a float32 ulp.)"""
    exact = dtype == torch.float16
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    patterns = bits.view(dtype)
    finite = patterns.float().isfinite()
    # Rows of 257 (a vector tail) mixing every pattern with finite neighbours, so most losses are finite.
    values = torch.where(finite, patterns, torch.zeros((), dtype=dtype))
    logits = torch.cat([values, patterns[~finite]]).reshape(-1)[: 255 * 257].reshape(255, 257)
    targets = torch.arange(255) % 257
    meta = sbkernels.SelectorState(4, seed=1).meta
    got = torch.ops.sbkernels.row_stats_cpu(logits, targets, None, meta, -100, 0.1, 0)
    want = torch.ops.sbkernels.row_stats_cpu(logits.float(), targets, None, meta, -100, 0.1, 0)
    for g, w in zip(got, want, strict=True):
        assert_same_as_float32(g, w, exact)
    assert bool(got[0].isfinite().any())
    tail = torch.cat([values, patterns[~finite]])[255 * 257 :]  # the rest, as one more batch
    rows = tail[: tail.numel() // 257 * 257].reshape(-1, 257)
    t = torch.zeros(rows.shape[0], dtype=torch.int64)
    got = torch.ops.sbkernels.row_stats_cpu(rows, t, None, meta, -100, 0.0, 0)[0]
    want = torch.ops.sbkernels.row_stats_cpu(rows.float(), t, None, meta, -100, 0.0, 0)[0]
    assert_same_as_float32(got, want, exact)


def test_native_kernels_agree_across_instruction_sets():
    """Every instruction set this CPU has gives the same selection on the same inputs (the losses to float32
    rounding: the lane count changes the order of the sums)."""
    gen = torch.Generator().manual_seed(11)
    logits = random_logits(203, 1001, torch.bfloat16, "cpu", gen)
    targets = torch.randint(0, 1001, (203,), generator=gen)
    before = torch.ops.sbkernels.cpu_isa("")
    results = {}
    try:
        for isa in ISAS:
            try:
                torch.ops.sbkernels.cpu_isa(isa)
            except RuntimeError:
                continue
            results[isa] = torch.ops.sbkernels.row_stats_cpu(logits, targets, None, sbkernels.SelectorState(4).meta,
                                                             -100, 0.0, 0)  # fmt: skip
    finally:
        torch.ops.sbkernels.cpu_isa(before)
    assert "default" in results
    base = results["default"]
    for isa, (loss, score, u) in results.items():
        torch.testing.assert_close(loss, base[0], rtol=1e-6, atol=1e-6, msg=isa)
        torch.testing.assert_close(score, base[1], rtol=1e-5, atol=1e-6, msg=isa)
        assert torch.equal(u, base[2]), isa


@pytest.mark.parametrize("dtype", DTYPES)
def test_native_residuals_equal_the_reference(dtype, cpu_isa):
    gen = torch.Generator().manual_seed(4)
    logits = random_logits(53, 333, dtype, "cpu", gen)
    targets = torch.randint(0, 333, (53,), generator=gen)
    targets[::5] = -100
    targets[3] = 400  # bad target: loss 0 and zero residuals, as ignored rows
    logits[6, (int(targets[6]) + 1) % 333] = float("-inf")
    r, loss = torch.ops.sbkernels.residuals_cpu(logits, targets, -100)
    want_r, want_loss = reference.residuals(logits, targets)
    torch.testing.assert_close(r, want_r, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss, want_loss, rtol=2e-6, atol=loss_tolerance(logits))
    assert not r[targets == -100].any() and not r[3].any()


def test_opcheck_native_ops():
    logits, targets = torch.randn(9, 5), torch.randint(0, 5, (9,))
    state = sbkernels.SelectorState(4)
    torch.library.opcheck(
        torch.ops.sbkernels.select_sb_cpu.default,
        (logits, targets, None, None, state.history, state.meta, 2.0, 0.0, 0, -100, 0.1, -1.0, 2),
    )
    torch.library.opcheck(torch.ops.sbkernels.row_stats_cpu.default, (logits, targets, None, state.meta, -100, 0.0, 3))
    torch.library.opcheck(torch.ops.sbkernels.residuals_cpu.default, (logits, targets, -100))
    for policy, param, k in (("keep", 0.5, 0), ("uniform", 0.0, 4), ("importance", 0.0, 4)):
        torch.library.opcheck(
            torch.ops.sbkernels.sample_rows_cpu.default, (logits, targets, None, state.meta, policy, param, k, -100, 0)
        )


SAMPLE_CASES = [(1, 3), (37, 11), (128, 10), (257, 1000), (1000, 7)]  # (N, C)


def reference_sampling(policy: str, loss, score, u, valid, param: float, k: int):
    """The reference's sampling (sbkernels.ops._sampling) on given row statistics: (indices, count, prob, weight)."""
    if policy == "keep":
        weight = sampling.keep_weights(loss, valid, param)
        indices, count = sampling.sample_without_replacement(weight, u, int(param * loss.numel()))
        return indices, count, weight / weight.sum().clamp_min(1e-30), None
    if policy == "uniform":
        indices, count = sampling.sample_without_replacement(valid.float(), u, k)
        n_valid = valid.sum().clamp_min(1)
        return indices, count, torch.where(valid, n_valid.clamp_max(k) / n_valid, 0.0), None
    q = sampling.proportional_distribution(score, valid)
    indices, count = sampling.sample_proportional(q, u, k)
    n_valid = valid.sum().clamp_min(1)
    return indices, count, q, torch.where(q > 0, 1.0 / (n_valid * q.clamp_min(1e-30)), torch.zeros_like(q))


@pytest.mark.parametrize("policy", ["keep", "uniform", "importance"])
@pytest.mark.parametrize("shape", SAMPLE_CASES, ids=[f"N{n}-C{c}" for n, c in SAMPLE_CASES])
def test_native_sampling_equals_the_reference_on_its_own_row_stats(policy, shape):
    """sample_rows_cpu (one C++ call) against sbkernels.ops._sampling run on the native kernel's own loss, score
    and uniforms: the same rows, probabilities, weights and counters, exactly, over consecutive calls."""
    n, num_classes = shape
    gen = torch.Generator().manual_seed(n + num_classes)
    state = sbkernels.SelectorState(4, seed=n)
    param, k = (0.3, 0) if policy == "keep" else (0.0, max(1, n // 3))
    for call in range(3):
        logits = random_logits(n, num_classes, torch.bfloat16, "cpu", gen)
        targets = random_targets(n, num_classes, 0.1, gen)
        targets = targets.int() if call == 1 else targets  # int32 targets are widened in scratch
        if n > 3:
            targets[1] = num_classes + 1  # bad target
            logits[2, 0] = float("nan")  # non-finite loss
        meta = state.meta.clone()
        loss, score, u = torch.ops.sbkernels.row_stats_cpu(logits, targets, None, meta, -100, 0.0, 0)
        _, ignored, bad = target_masks(targets, num_classes, -100)
        valid = ~ignored & ~bad & loss.isfinite()
        want = reference_sampling(policy, loss, score, u, valid, param, k)
        got = torch.ops.sbkernels.sample_rows_cpu(logits, targets, None, state.meta, policy, param, k, -100, 0)
        assert torch.equal(got[0], want[0]) and int(got[1]) == int(want[1]), policy
        assert torch.equal(got[2].nan_to_num(-1.0), loss.nan_to_num(-1.0))
        assert torch.equal(got[3], want[2]), policy
        if want[3] is not None:
            assert torch.equal(got[4], want[3])
        assert int(state.step) == int(meta[2]) + 1
        assert int(state.nonfinite_count) - int(meta[3]) == int((~ignored & ~bad & ~loss.isfinite()).sum())
        assert int(state.bad_target_count) - int(meta[4]) == int(bad.sum())


def allocated_bytes(call) -> tuple[int, int]:
    """(bytes the ATen allocator handed out during ``call()``, bytes of what it returned), after a warm-up
    call that lets the ops' per-thread scratch grow."""
    call()
    with torch.autograd.profiler.profile(profile_memory=True, use_kineto=False) as prof:
        out = call()
    allocated = sum(e.self_cpu_memory_usage for e in prof.function_events if e.self_cpu_memory_usage > 0)
    return allocated, sum(t.nbytes for t in out if isinstance(t, torch.Tensor))


def native_op_calls():
    """One call of every native op and input form, inputs built outside the call."""
    gen = torch.Generator().manual_seed(5)
    logits = random_logits(129, 37, torch.bfloat16, "cpu", gen)
    targets = torch.randint(0, 37, (129,), generator=gen)
    targets32, losses, flags = targets.int(), torch.rand(129, generator=gen), torch.zeros(129, dtype=torch.int8)
    state = sbkernels.SelectorState(64, seed=1)
    ops = torch.ops.sbkernels
    calls = {
        "select_sb logits": lambda: ops.select_sb_cpu(
            logits, targets, None, None, state.history, state.meta, 2.0, 0.0, 0, -100, 0.1, -1.0, 2),
        "select_sb int32 targets": lambda: ops.select_sb_cpu(
            logits, targets32, None, None, state.history, state.meta, 1.5, 0.0, 0, -100, 0.0, -1.0, 0),
        "select_sb losses and flags": lambda: ops.select_sb_cpu(
            None, None, losses, flags, state.history, state.meta, 2.0, 0.0, 0, -100, 0.0, -1.0, 2),
        "select_sb losses": lambda: ops.select_sb_cpu(
            None, None, losses, None, state.history, state.meta, 2.0, 0.0, 0, -100, 0.0, 0.5, 2),
        "row_stats": lambda: ops.row_stats_cpu(logits, targets32, None, state.meta, -100, 0.0, 0),
        "residuals": lambda: ops.residuals_cpu(logits, targets, -100),
    }  # fmt: skip
    for policy, param, k in (("keep", 0.5, 0), ("uniform", 0.0, 40), ("importance", 0.0, 40)):
        calls[policy] = lambda p=policy, a=param, b=k: ops.sample_rows_cpu(
            logits, targets, None, state.meta, p, a, b, -100, 0
        )
        calls[policy + " losses"] = lambda p=policy, a=param, b=k: ops.sample_rows_cpu(
            None, None, losses, state.meta, p, a, b, -100, 0
        )
    return calls


@pytest.mark.parametrize("name", list(native_op_calls()))
def test_native_ops_allocate_only_their_outputs(name):
    """Intermediates (flags, widened targets, scores, uniforms, keys, orders, sums) live in per-thread scratch
    (csrc/cpu/scratch_cpu.h): in steady state a call allocates exactly the bytes it returns."""
    allocated, returned = allocated_bytes(native_op_calls()[name])
    assert allocated == returned, f"{name}: {allocated - returned} bytes beyond the outputs"


def test_the_allocation_check_catches_a_temporary():
    """Negative control: one float32 temporary of 129 rows inside the call is caught."""
    select = native_op_calls()["select_sb logits"]
    allocated, returned = allocated_bytes(lambda: (torch.empty(129).fill_(0.0).sum(), *select()))
    assert allocated - returned == 129 * 4
