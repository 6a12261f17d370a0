"""SPEC section 2, infinite logits: every path follows ``F.cross_entropy`` exactly.

A ``-inf`` non-target logit (a masked vocabulary entry) adds nothing and the loss stays finite when
eps = 0; a ``-inf`` target logit, or any ``-inf`` logit when eps > 0, gives +inf (never selected, never
pushed, counted). A column chunk that is ``-inf`` everywhere (C larger than one chunk of BLOCK_C = 4096
columns) must not turn the online softmax into NaN.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import sbkernels
from sbkernels import policies, reference
from tests.helpers import backend_devices

PAIRS = backend_devices()
IDS = [f"{b}-{d}" for b, d in PAIRS]
INF = float("inf")


def masked_rows() -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of C = 5000 (two chunks) with -inf in different places, and their targets."""
    c = 5000
    x = torch.randn(6, c, generator=torch.Generator().manual_seed(0)) * 3
    x[0, :4] = torch.tensor([0.0, 1.0, -INF, 2.0])  # the issue's case: a masked non-target entry
    x[1, :4096] = -INF  # the whole first chunk masked, the target in the second
    x[2, 4096:] = -INF  # the whole second chunk masked
    x[3, 7] = -INF  # the target itself masked: +inf
    x[4, ::2] = -INF  # every other entry masked
    x[5, :] = -INF  # everything masked: NaN, as F.cross_entropy gives
    targets = torch.tensor([1, 4500, 10, 7, 11, 3])
    return x, targets


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize(("backend", "device"), PAIRS, ids=IDS)
def test_losses_follow_cross_entropy_with_infinite_logits(backend, device, eps, dtype):
    x, t = masked_rows()
    x = x.to(dtype)
    want = F.cross_entropy(x.float(), t, reduction="none", label_smoothing=eps)
    state = sbkernels.SelectorState(16, device=device)
    sel = sbkernels.select(x.to(device), t.to(device), state, label_smoothing=eps, backend=backend)
    got = sel.loss.cpu()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), (got, want)
    assert torch.equal(torch.isposinf(got), torch.isposinf(want)), (got, want)
    finite = torch.isfinite(want)
    if eps == 0:
        assert finite[:3].all() and finite[4] and not finite[3]
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-4)
    # Non-finite rows are never selected nor pushed, and counted.
    chosen = sel.indices[: int(sel.count)].cpu().tolist()
    assert not set(chosen) & set(torch.nonzero(~finite).flatten().tolist())
    assert int(state.nonfinite_count) == int((~finite).sum())
    assert int(state.pushed) == int(finite.sum())


@pytest.mark.parametrize(("backend", "device"), PAIRS, ids=IDS)
def test_the_issue_example_is_finite(backend, device):
    x = torch.tensor([[0.0, 1.0, -INF, 2.0]])
    sel = sbkernels.select(x.to(device), torch.tensor([1]).to(device), sbkernels.SelectorState(4, device=device),
                           backend=backend)  # fmt: skip
    assert math.isclose(float(sel.loss[0]), 1.4076059644, rel_tol=1e-6)
    assert int(sel.count) == 1  # an empty history selects every valid row


@pytest.mark.parametrize(("backend", "device"), PAIRS, ids=IDS)
def test_row_stats_follow_the_reference_with_infinite_logits(backend, device):
    """keep / uniform-k / importance read losses and scores from the row-stats pass."""
    x, t = masked_rows()
    state = sbkernels.SelectorState(16, device=device)
    sel = policies.select_keep(x.to(device), t.to(device), state, keep=0.5, backend=backend)
    want = F.cross_entropy(x, t, reduction="none")
    finite = torch.isfinite(want)
    torch.testing.assert_close(sel.loss.cpu()[finite], want[finite], rtol=1e-5, atol=1e-4)
    assert torch.equal(torch.isfinite(sel.loss.cpu()), finite)
    q = policies.select_importance(x.to(device), t.to(device), state, 3, backend=backend).prob.cpu()
    score = torch.where(finite, reference.importance_score(x, t), 0.0)
    torch.testing.assert_close(q, score / score.sum(), rtol=1e-5, atol=1e-7)
