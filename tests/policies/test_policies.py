"""The peer policies: the row-stats kernel against the reference, and each policy's selection distribution
against its definition (statistically, on fixed seeds)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

import sbkernels
from sbkernels import reference
from sbkernels.kernels.row_stats import launch_row_stats
from sbkernels.ops import _sampling as sampling
from sbkernels.slots import META_SEED, META_STEP
from tests.helpers import kernel_devices, random_logits


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize(
    ("n", "num_classes", "dtype"),
    [(1, 2, torch.float32), (77, 10, torch.bfloat16), (300, 1000, torch.float16), (5, 9000, torch.float32)],
)
def test_row_stats_kernel_matches_reference(device, n, num_classes, dtype):
    gen = torch.Generator().manual_seed(n)
    logits = random_logits(n, num_classes, dtype, "cpu", gen)
    targets = torch.randint(0, num_classes, (n,), generator=gen)
    targets[::5] = -100
    meta = sbkernels.SelectorState(4, seed=n * 7919).meta
    meta[2] = 12345
    loss, score, u = launch_row_stats(
        logits=logits.to(device), targets=targets.to(device), losses=None, meta=meta.to(device), ignore_index=-100
    )
    want_loss, want_score, want_u = reference.row_stats(logits, targets, None, meta)
    assert torch.equal(u.cpu(), want_u)
    tol = 4e-6 * (1 + float(logits.float().abs().max()))
    torch.testing.assert_close(loss.cpu(), want_loss, rtol=4e-6, atol=tol)
    torch.testing.assert_close(score.cpu(), want_score, rtol=1e-5, atol=1e-6)
    # Against the definition in float64.
    p = torch.softmax(logits.double(), 1)
    onehot = torch.nn.functional.one_hot(targets.clamp_min(0), num_classes).double()
    exact = torch.where(targets == -100, 0.0, (p - onehot).norm(dim=1))
    torch.testing.assert_close(score.cpu().double(), exact, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", kernel_devices())
def test_policies_kernel_and_reference_select_the_same_rows(device):
    gen = torch.Generator().manual_seed(2)
    states = {b: sbkernels.SelectorState(32, seed=5, device=d) for b, d in (("triton", device), ("reference", "cpu"))}
    for _ in range(3):
        logits = random_logits(120, 10, torch.float32, "cpu", gen)
        targets = torch.randint(0, 10, (120,), generator=gen)
        targets[7] = -100
        out = {}
        meta_before = states["reference"].meta.clone()
        meta_before[META_STEP] += 3  # importance is the fourth call of the round
        for backend, state in states.items():
            d = state.device
            lg, t = logits.to(d), targets.to(d)
            out[backend] = [
                sbkernels.select_keep(lg, t, state, 0.3, backend=backend),
                sbkernels.select_uniform(lg, t, state, k=40, backend=backend),
                sbkernels.select_uniform(lg, t, state, rate=0.25, backend=backend),
                sbkernels.select_importance(lg, t, state, 50, backend=backend),
                sbkernels.select_keep(lg[:, 0].contiguous().abs(), None, state, 0.5, backend=backend),
            ]
        for i, (got, want) in enumerate(zip(out["triton"], out["reference"], strict=True)):
            if i == 3:
                assert_same_draws_up_to_boundary_ulps(got, want, meta_before)
                if device == "cuda":
                    continue
            assert torch.equal(got.indices.cpu(), want.indices) and int(got.count) == int(want.count)
        torch.testing.assert_close(out["triton"][3].weight.cpu(), out["reference"][3].weight, rtol=1e-5, atol=0)
    assert torch.equal(states["triton"].meta.cpu(), states["reference"].meta)


def assert_same_draws_up_to_boundary_ulps(got, want, meta_before) -> None:
    """Importance sampling on two devices: scores (and their cumulative sums) differ in the last bits, so a
    draw that lands within rounding of a CDF boundary may take the neighbouring row. Every other draw
    must agree, and the draw count must too."""
    k = int(want.count)
    assert int(got.count) == k
    u = reference.philox_uniform(meta_before[META_SEED], meta_before[META_STEP], k).double()
    cdf = torch.cumsum(want.prob.double(), 0)
    position = u * cdf[-1]
    near = ((position[:, None] - cdf[None, :]).abs() <= 1e-5 * cdf[-1]).any(dim=1)
    mismatched = Counter(got.indices[:k].cpu().tolist()) - Counter(want.indices[:k].tolist())
    assert sum(mismatched.values()) <= int(near.sum()), (mismatched, int(near.sum()))


def test_keep_selects_exactly_k_with_rank_weights():
    state = sbkernels.SelectorState(4, seed=1)
    n, keep, trials = 10, 0.1, 6000  # k = 1: row i is drawn with probability w_i / sum(w)
    losses = torch.tensor([5.0, 1.0, 9.0, 3.0, 7.0, 0.5, 2.0, 8.0, 4.0, 6.0])
    counts = torch.zeros(n)
    for _ in range(trials):
        sel = sbkernels.select_keep(losses, None, state, keep)
        assert int(sel.count) == 1
        counts[sel.indices[0]] += 1
    rank = torch.argsort(torch.argsort(losses)).double()
    w = ((rank + 0.5) / n) ** (1 / keep - 1)
    expected = w / w.sum()
    for i in range(n):
        sigma = math.sqrt(expected[i] * (1 - expected[i]) / trials)
        assert abs(counts[i] / trials - expected[i]) <= 5 * sigma + 1e-9, i
    for keep in (0.25, 0.5, 0.77, 1.0):
        sel = sbkernels.select_keep(torch.rand(37), None, state, keep)
        rows = sel.indices[: int(sel.count)]
        assert int(sel.count) == int(keep * 37) and torch.all(rows[1:] > rows[:-1])


def test_uniform_rate_and_k():
    state = sbkernels.SelectorState(64, seed=2)
    sel = sbkernels.select_uniform(torch.rand(20000), None, state, rate=0.3)
    freq = int(sel.count) / 20000
    assert abs(freq - 0.3) < 5 * math.sqrt(0.3 * 0.7 / 20000)
    inclusion = torch.zeros(50)
    for _ in range(2000):
        sel = sbkernels.select_uniform(torch.rand(50), None, state, k=10)
        assert int(sel.count) == 10
        inclusion[sel.indices[:10]] += 1
    p = 10 / 50
    assert torch.all((inclusion / 2000 - p).abs() <= 5 * math.sqrt(p * (1 - p) / 2000))


def test_importance_draws_proportionally_and_weights_unbias_the_mean():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(12, 5, generator=gen) * 2
    targets = torch.randint(0, 5, (12,), generator=gen)
    score = reference.importance_score(logits, targets).double()
    q = score / score.sum()
    state = sbkernels.SelectorState(4, seed=3)
    k, trials = 6, 3000
    draws = torch.zeros(12)
    estimates = []
    loss = reference.cross_entropy(logits, targets)[0].double()
    for _ in range(trials):
        sel = sbkernels.select_importance(logits, targets, state, k)
        rows = sel.indices[:k]
        assert int(sel.count) == k and torch.all(rows[1:] >= rows[:-1])
        draws += torch.bincount(rows, minlength=12)
        estimates.append(float((sel.weight[rows].double() * loss[rows]).mean()))
    freq = draws / (k * trials)
    sigma = torch.sqrt(q * (1 - q) / (k * trials))
    assert torch.all((freq - q).abs() <= 5 * sigma + 1e-9)
    torch.testing.assert_close(sel.weight.double(), 1 / (12 * q), rtol=1e-5, atol=0)
    mean, spread = torch.tensor(estimates).mean(), torch.tensor(estimates).std() / math.sqrt(trials)
    assert abs(float(mean) - float(loss.mean())) <= 5 * float(spread)


def test_sampling_edge_cases():
    u = torch.rand(6)
    indices, count = sampling.sample_without_replacement(torch.tensor([0.0, 1.0, 0.0, 2.0, 0.0, 0.0]), u, 4)
    assert int(count) == 2 and indices[:2].tolist() == [1, 3]  # fewer usable rows than k
    q = sampling.proportional_distribution(torch.zeros(4), torch.tensor([True, False, True, True]))
    torch.testing.assert_close(q, torch.tensor([1 / 3, 0.0, 1 / 3, 1 / 3]))  # all scores 0: uniform over valid rows
    idx, count = sampling.sample_proportional(q, u, 3)
    assert int(count) == 3 and set(idx[:3].tolist()) <= {0, 2, 3}
    q = sampling.proportional_distribution(torch.ones(3), torch.zeros(3, dtype=torch.bool))
    idx, count = sampling.sample_proportional(q, u, 2)
    assert int(count) == 0 and idx.tolist() == [-1, -1, -1]


def test_policy_argument_errors():
    state = sbkernels.SelectorState(4)
    with pytest.raises(ValueError, match="keep"):
        sbkernels.select_keep(torch.rand(5), None, state, 0.0)
    with pytest.raises(ValueError, match="exactly one of rate or k"):
        sbkernels.select_uniform(torch.rand(5), None, state)
    with pytest.raises(ValueError, match="k must be"):
        sbkernels.select_uniform(torch.rand(5), None, state, k=6)
    with pytest.raises(ValueError, match="rate"):
        sbkernels.select_uniform(torch.rand(5), None, state, rate=1.5)
