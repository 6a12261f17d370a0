"""The PyTorch reference against independent definitions: F.cross_entropy in float64 and Philox."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sbkernels import reference
from tests.helpers import random_logits

SHAPES = [(1, 2), (7, 3), (1000, 10), (333, 1000), (64, 4099), (5, 70000)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
def test_cross_entropy_matches_float64(shape, dtype, label_smoothing):
    gen = torch.Generator().manual_seed(hash((shape, str(dtype), label_smoothing)) % 2**31)
    n, num_classes = shape
    logits = random_logits(n, num_classes, dtype, "cpu", gen)
    targets = torch.randint(0, num_classes, (n,), generator=gen)
    targets[torch.rand(n, generator=gen) < 0.2] = -100
    loss, ignored, bad = reference.cross_entropy(logits, targets, -100, label_smoothing)

    want = F.cross_entropy(
        logits.double(), targets, reduction="none", ignore_index=-100, label_smoothing=label_smoothing
    )
    assert loss.dtype == torch.float32
    assert torch.equal(ignored, targets == -100) and not bad.any()
    tol = 4e-6 * (1 + float(logits.double().abs().max()) + math.log(num_classes))
    torch.testing.assert_close(loss.double(), want, rtol=4e-6, atol=tol)
    assert torch.all(loss[ignored] == 0)


def test_cross_entropy_flags_bad_targets_and_custom_ignore_index():
    logits = torch.randn(5, 4)
    targets = torch.tensor([0, 4, -1, 7, 3])
    loss, ignored, bad = reference.cross_entropy(logits, targets, ignore_index=7)
    assert bad.tolist() == [False, True, True, False, False]
    assert ignored.tolist() == [False, False, False, True, False]
    assert torch.isnan(loss[bad]).all() and loss[3] == 0


def test_philox_uniforms_are_uniform_and_step_dependent():
    seed, n = torch.tensor(1234), 200_000
    u0 = reference.philox_uniform(seed, torch.tensor(0), n)
    u1 = reference.philox_uniform(seed, torch.tensor(1), n)
    assert u0.dtype == torch.float32 and 0 <= float(u0.min()) and float(u0.max()) < 1
    # Kolmogorov-Smirnov distance of 200k uniforms stays far below 2.0 / sqrt(n) (p ~ 1e-3).
    ks = (torch.sort(u0.double()).values - torch.arange(1, n + 1, dtype=torch.float64) / n).abs().max()
    assert ks < 2.0 / math.sqrt(n)
    assert abs(float(u0.double().mean()) - 0.5) < 5 / math.sqrt(12 * n)
    assert float((u0 == u1).double().mean()) < 1e-3  # a new step gives a new stream
    corr = torch.corrcoef(torch.stack([u0[:-1].double(), u0[1:].double()]))[0, 1]
    assert abs(float(corr)) < 5 / math.sqrt(n)


def test_compact_preserves_order():
    selected = torch.rand(1001, generator=torch.Generator().manual_seed(0)) < 0.3
    indices, count = reference.compact(selected)
    want = torch.nonzero(selected).flatten()
    assert count.dtype == torch.int32 and int(count) == want.numel()
    assert torch.equal(indices[: int(count)], want)
    assert torch.all(indices[int(count) :] == -1)


@pytest.mark.parametrize("beta", [1.0, 2.0, 3.0, 0.5, 1.7])
def test_selection_probability(beta):
    pct = torch.linspace(0, 1, 101)
    p = reference.selection_probability(pct, beta, floor=0.05)
    torch.testing.assert_close(p.double(), (pct.double() ** beta).clamp_min(0.05), rtol=2e-6, atol=1e-7)
