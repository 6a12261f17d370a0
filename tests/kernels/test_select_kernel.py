"""The fused Triton kernel against the PyTorch reference, on random odd-sized inputs.

The kernel's losses are checked against float64 cross-entropy; its selection, history and counters are
checked exactly against the reference run on those same losses (so rounding in the loss cannot hide or
fake a difference in the selection logic). Whole-number beta makes probabilities exact; fractional beta
goes through exp2/log2, whose last bit may differ between libraries, so there rows with u within float32
rounding of p may differ (SPEC section 2, step 4).
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

import sbkernels
from sbkernels import reference
from tests.helpers import assert_same_selection, kernel_devices, random_logits, uniforms

CLASS_COUNTS = [2, 3, 5, 10, 17, 100, 1000, 3001]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def draw_case(case: int) -> dict:
    rng = random.Random(case)
    return {
        "num_classes": rng.choice(CLASS_COUNTS),
        "dtype": rng.choice(DTYPES),
        "history_size": rng.choice([1, 2, 7, 64, 300, 1024]),
        "seed": rng.randrange(-(2**63), 2**63),
        "beta": rng.choice([1.0, 2.0, 3.0, 0.5, 1.7]),
        "floor": rng.choice([0.0, 0.0, 0.05, 0.3]),
        "prime": rng.choice([0, 0, 0, 50]),
        "label_smoothing": rng.choice([0.0, 0.0, 0.1]),
        "ignore_frac": rng.choice([0.0, 0.1, 0.5]),
        "strided_logits": rng.random() < 0.3,
        "int32_targets": rng.random() < 0.3,
        "strided_targets": rng.random() < 0.2,
        "rows": [rng.choice([1, 2, 3, rng.randrange(1, 700)]) for _ in range(3)],
    }


def make_inputs(c: dict, n: int, device: str, gen: torch.Generator):
    num_classes = c["num_classes"]
    if c["strided_logits"]:
        logits = random_logits(n, num_classes + 7, c["dtype"], device, gen)[:, 3 : 3 + num_classes]
    else:
        logits = random_logits(n, num_classes, c["dtype"], device, gen)
    targets = torch.randint(0, num_classes, (2 * n if c["strided_targets"] else n,), generator=gen)
    targets[torch.rand(targets.numel(), generator=gen) < c["ignore_frac"]] = -100
    if c["int32_targets"]:
        targets = targets.int()
    if c["strided_targets"]:
        targets = targets[::2]
    return logits, targets.to(device)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("case", range(40))
def test_kernel_matches_reference_over_consecutive_calls(case, device):
    c = draw_case(case)
    gen = torch.Generator().manual_seed(case)
    params = {k: c[k] for k in ("beta", "floor", "prime", "label_smoothing")}
    kernel_state = sbkernels.SelectorState(c["history_size"], seed=c["seed"], device=device)
    ref_state = sbkernels.SelectorState(c["history_size"], seed=c["seed"])
    exact = reference.integer_beta(c["beta"]) != 0

    for n in c["rows"]:
        logits, targets = make_inputs(c, n, device, gen)
        meta_before = kernel_state.meta.cpu().clone()
        got = sbkernels.select(logits, targets, kernel_state, backend="triton", **params)

        # Loss: float32 rounding of float64 cross-entropy (ignored rows 0).
        t = targets.long().cpu()
        want_loss = F.cross_entropy(
            logits.double().cpu(), t, reduction="none", ignore_index=-100, label_smoothing=c["label_smoothing"]
        )
        tol = 4e-6 * (1 + float(logits.double().abs().max()))
        torch.testing.assert_close(got.loss.cpu().double(), want_loss, rtol=4e-6, atol=tol)

        # Selection, history and counters: exactly the reference's on the kernel's losses.
        ignored = t == -100
        no_rows = torch.zeros_like(ignored)
        want = reference.select_sb(
            got.loss.cpu().clone(), ignored, no_rows, ref_state.history, ref_state.meta,
            c["beta"], c["floor"], c["prime"],
        )  # fmt: skip
        assert_same_selection(got, sbkernels.Selection(*want), uniforms(meta_before, n), exact)
        assert torch.equal(kernel_state.history.cpu(), ref_state.history)
        assert torch.equal(kernel_state.meta.cpu(), ref_state.meta)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("case", range(12))
def test_kernel_matches_reference_on_given_losses(case, device):
    """select_losses: identical inputs, so everything is exact (whole beta) end to end."""
    rng = random.Random(1000 + case)
    gen = torch.Generator().manual_seed(1000 + case)
    size = rng.choice([1, 5, 128, 2000])
    beta = rng.choice([1.0, 2.0, 3.0])
    floor, prime = rng.choice([0.0, 0.1]), rng.choice([0, 100])
    dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16, torch.float64])
    states = {
        b: sbkernels.SelectorState(size, seed=case, device=d) for b, d in (("triton", device), ("reference", "cpu"))
    }
    for _ in range(4):
        n = rng.randrange(1, 3000)
        losses = (torch.rand(n, generator=gen) * 5).to(dtype)
        losses[torch.rand(n, generator=gen) < 0.05] = float("nan")
        got = sbkernels.select_losses(losses.to(device), states["triton"], beta, floor, prime, backend="triton")
        want = sbkernels.select_losses(losses, states["reference"], beta, floor, prime, backend="reference")
        for field in ("indices", "count", "prob"):
            assert torch.equal(getattr(got, field).cpu(), getattr(want, field)), field
        torch.testing.assert_close(got.loss.cpu(), want.loss, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(states["triton"].history.cpu(), states["reference"].history)
        assert torch.equal(states["triton"].meta.cpu(), states["reference"].meta)


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_large_vocabulary(device):
    """C = 70,000 (several online-softmax chunks per row) in bf16, against float64."""
    gen = torch.Generator().manual_seed(5)
    logits = random_logits(3, 70_000, torch.bfloat16, device, gen)
    targets = torch.tensor([5, 69_999, -100], device=device)
    state = sbkernels.SelectorState(16, device=device)
    got = sbkernels.select(logits, targets, state, backend="triton", label_smoothing=0.05)
    want = F.cross_entropy(logits.double().cpu(), targets.cpu(), reduction="none", label_smoothing=0.05)
    torch.testing.assert_close(
        got.loss.cpu().double(), want, rtol=4e-6, atol=4e-6 * (1 + float(logits.double().abs().max()))
    )
    assert int(got.count) == 2 and got.indices.tolist() == [0, 1, -1]


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_writes_every_output_element(device):
    """Outputs come from torch.empty: check none is left unwritten (no NaN / garbage), over many programs."""
    gen = torch.Generator().manual_seed(9)
    state = sbkernels.SelectorState(50, device=device)
    for n in (1, 255, 257, 1031):
        logits = random_logits(n, 1000, torch.float32, device, gen)
        targets = torch.randint(0, 1000, (n,), generator=gen).to(device)
        sel = sbkernels.select(logits, targets, state, backend="triton", beta=2.0)
        count = int(sel.count)
        assert torch.isfinite(sel.loss).all() and ((sel.prob >= 0) & (sel.prob <= 1)).all()
        head, tail = sel.indices[:count], sel.indices[count:]
        assert torch.all(tail == -1)
        assert torch.all(head[1:] > head[:-1]) and (count == 0 or (0 <= int(head[0]) and int(head[-1]) < n))
