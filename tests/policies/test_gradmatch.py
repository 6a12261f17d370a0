"""Gradient matching (seed 002) and subset selection (seed 003)."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.optimize import nnls

import sbkernels
from sbkernels import reference
from sbkernels.kernels.row_stats import launch_residual
from sbkernels.ops import _omp as omp
from sbkernels.subsets import (
    GradMatchSubsets,
    RandomPB,
    SubsetRecorder,
    SubsetReplayer,
    select_after_within_budget,
    weighted_batches,
)
from tests.helpers import kernel_devices


def random_problem(n: int, d: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    vectors = torch.randn(n, d, generator=gen, dtype=torch.float64)
    target = torch.randn(d, generator=gen, dtype=torch.float64)
    return vectors, target


def gram_form(vectors: torch.Tensor, target: torch.Tensor):
    return vectors @ vectors.T, vectors @ target, target @ target


@pytest.mark.parametrize("seed", range(8))
def test_omp_residual_never_increases_and_weights_are_nonnegative(seed):
    vectors, target = random_problem(30, 12, seed)
    picked, weights, history = omp.omp_nnls(*gram_form(vectors, target), k=10, steps=200)
    assert torch.all(weights >= 0)
    assert len(set(picked.tolist())) == 10
    assert torch.all(history[1:] <= history[:-1] + 1e-9 * float(target @ target))
    # The reported residual is the true one for the returned weights.
    true = ((weights @ vectors[picked]) - target).square().sum()
    torch.testing.assert_close(history[-1], true, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_omp_recovers_an_exact_nonnegative_combination(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    vectors = torch.randn(20, 60, generator=gen, dtype=torch.float64)
    support = torch.randperm(20, generator=gen)[:3]
    true_weights = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    target = true_weights @ vectors[support]
    picked, weights, history = omp.omp_nnls(*gram_form(vectors, target), k=3, steps=2000)
    assert set(picked.tolist()) == set(support.tolist())
    order = torch.argsort(picked)
    torch.testing.assert_close(weights[order], true_weights[torch.argsort(support)], rtol=1e-4, atol=1e-6)
    assert history[-1] <= 1e-8 * float(target @ target)


def exhaustive_optimum(vectors: torch.Tensor, target: torch.Tensor, k: int) -> float:
    a, b = vectors.numpy(), target.numpy()
    best = float(b @ b)
    for size in range(1, k + 1):
        for subset in itertools.combinations(range(len(a)), size):
            _, residual = nnls(a[list(subset)].T, b)
            best = min(best, residual**2)
    return best


def test_omp_against_the_exhaustive_optimum_on_tiny_problems(capsys):
    ratios = []
    for seed in range(60):
        n = 4 + seed % 7  # 4..10
        k = 1 + seed % 3  # 1..3
        vectors, target = random_problem(n, 6, 1000 + seed)
        _, _, history = omp.omp_nnls(*gram_form(vectors, target), k=k, steps=3000)
        optimum = exhaustive_optimum(vectors, target, k)
        assert float(history[-1]) >= optimum - 1e-7 * float(target @ target)  # nothing beats the optimum
        ratios.append((float(history[-1]) + 1e-12) / (optimum + 1e-12))
    ratios_t = torch.tensor(ratios)
    optimal = float((ratios_t <= 1 + 1e-4).double().mean())
    with capsys.disabled():
        print(
            f"\nOMP vs exhaustive NNLS optimum, 60 problems (n 4..10, k 1..3): optimal in {optimal:.0%}, "
            f"median ratio {ratios_t.median():.3f}, worst {ratios_t.max():.3f}"
        )
    assert optimal >= 0.5 and float(ratios_t.median()) <= 1.05


def test_factorized_inner_products_equal_autograd_per_example_gradients():
    from torch.func import grad, vmap

    gen = torch.Generator().manual_seed(5)
    n, hidden, num_classes = 9, 7, 4
    h = torch.randn(n, hidden, generator=gen, dtype=torch.float64)
    y = torch.randint(0, num_classes, (n,), generator=gen)
    weight = torch.randn(num_classes, hidden, generator=gen, dtype=torch.float64)
    bias = torch.randn(num_classes, generator=gen, dtype=torch.float64)

    def loss(params, h_i, y_i):
        w, b = params
        return torch.nn.functional.cross_entropy((h_i @ w.T + b)[None], y_i[None])

    gw, gb = vmap(grad(loss), in_dims=(None, 0, 0))((weight, bias), h, y)
    per_example = torch.cat([gw.flatten(1), gb], dim=1)
    logits = h @ weight.T + bias
    r, _ = reference.residuals(logits, y)
    torch.testing.assert_close(r.double(), gb, rtol=1e-6, atol=1e-7)  # float32 math in the reference
    r64 = torch.softmax(logits, 1) - torch.nn.functional.one_hot(y, num_classes).double()
    torch.testing.assert_close(omp.last_layer_gram(r64, h).double(), per_example @ per_example.T)
    torch.testing.assert_close(omp.last_layer_gram(r64).double(), gb @ gb.T)


@pytest.mark.parametrize("device", kernel_devices())
def test_residual_kernel_matches_reference(device):
    gen = torch.Generator().manual_seed(6)
    for n, num_classes in ((1, 2), (50, 10), (7, 5000)):
        logits = torch.randn(n, num_classes, generator=gen) * 3
        targets = torch.randint(0, num_classes, (n,), generator=gen)
        targets[0] = -100
        r, loss = launch_residual(logits=logits.to(device), targets=targets.to(device), ignore_index=-100)
        want_r, want_loss = reference.residuals(logits, targets)
        torch.testing.assert_close(r.cpu(), want_r, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loss.cpu(), want_loss, rtol=1e-5, atol=1e-5)
        assert torch.all(r[0] == 0)


def test_select_gradmatch_matches_the_batch_gradient_better_than_random_rows():
    gen = torch.Generator().manual_seed(7)
    n, k = 64, 8
    logits = torch.randn(n, 10, generator=gen) * 2
    targets = torch.randint(0, 10, (n,), generator=gen)
    features = torch.randn(n, 16, generator=gen)
    state = sbkernels.SelectorState(4)
    sel = sbkernels.select_gradmatch(logits, targets, state, k, features)
    rows = sel.indices[: int(sel.count)]
    assert 0 < int(sel.count) <= k and torch.all(sel.weight[rows] > 0) and int(state.step) == 1
    assert torch.all(sel.weight[sel.prob == 0] == 0)
    r, _ = reference.residuals(logits, targets)
    grads = torch.cat([(r[:, :, None] * features[:, None, :]).flatten(1), r], dim=1).double()
    full = grads.mean(0)
    matched = (sel.weight[rows].double() @ grads[rows]) / k
    random_rows = torch.randperm(n, generator=gen)[:k]
    random_error = (grads[random_rows].mean(0) - full).norm()
    assert (matched - full).norm() < 0.5 * random_error


def test_grad_match_subsets_record_and_replay(tmp_path):
    gen = torch.Generator().manual_seed(8)
    n = 300
    labels = torch.randint(0, 3, (n,), generator=gen)
    r = torch.softmax(torch.randn(n, 3, generator=gen), 1) - torch.nn.functional.one_hot(labels, 3).float()
    features = torch.randn(n, 5, generator=gen)
    recorder = SubsetRecorder(tmp_path / "rounds.pt")
    gm = GradMatchSubsets(n, fraction=0.1, select_every=2, warm_start_epochs=1, recorder=recorder)
    assert [e for e in range(6) if gm.needs_selection(e)] == [1, 3, 5]
    assert gm.subset_for(0) is None
    chosen = {}
    for epoch in (1, 3):
        chosen[epoch] = gm.select(epoch, r, labels, features)
        assert len(chosen[epoch].indices) <= round(0.1 * n) + 3 and torch.all(chosen[epoch].weights > 0)
        for c in range(3):  # per class: every class gets its share
            assert int((labels[chosen[epoch].indices] == c).sum()) >= 1
    replay = SubsetReplayer(tmp_path / "rounds.pt")
    assert replay.subset_for(0) is None
    for epoch, want in ((1, chosen[1]), (2, chosen[1]), (3, chosen[3]), (9, chosen[3])):
        got = replay.subset_for(epoch)
        assert torch.equal(got.indices, want.indices) and torch.equal(got.weights, want.weights)
    x = torch.arange(n, dtype=torch.float32)[:, None]
    batches = list(weighted_batches(x, labels, chosen[3], 7, torch.Generator().manual_seed(0)))
    seen = torch.cat([b[0][:, 0].long() for b in batches])
    assert sorted(seen.tolist()) == chosen[3].indices.tolist()


def test_warm_start_is_paid_from_the_budget():
    # 20 epochs at fraction 0.25 cost 5 full epochs: one full warm-start epoch replaces 4 subset epochs.
    assert select_after_within_budget(0.25, 20, 1) == 4
    assert select_after_within_budget(0.3, 10, 0) == 0
    for fraction, epochs, warm in ((0.268, 30, 1), (0.316, 5, 1), (0.1, 50, 2), (0.9, 4, 1)):
        select_after = select_after_within_budget(fraction, epochs, warm)
        cost = warm + (epochs - select_after) * fraction  # in full epochs
        assert warm <= select_after < epochs
        assert abs(cost - fraction * epochs) <= fraction / 2 + 1e-9  # off by half a subset epoch at most
    with pytest.raises(ValueError, match="cannot pay"):
        select_after_within_budget(0.3, 3, 1)


def test_grad_match_pauses_after_the_warm_start_and_the_replay_does_too(tmp_path):
    gen = torch.Generator().manual_seed(10)
    n = 120
    labels = torch.randint(0, 3, (n,), generator=gen)
    r = torch.softmax(torch.randn(n, 3, generator=gen), 1) - torch.nn.functional.one_hot(labels, 3).float()
    gm = GradMatchSubsets(n, fraction=0.2, select_every=2, warm_start_epochs=1, select_after=3,
                   recorder=SubsetRecorder(tmp_path / "rounds.pt"))  # fmt: skip
    assert [e for e in range(8) if gm.needs_selection(e)] == [3, 5, 7]
    trained = {}
    for epoch in range(7):
        if gm.needs_selection(epoch):
            gm.select(epoch, r, labels)
        subset = gm.subset_for(epoch)
        trained[epoch] = None if subset is None else subset.indices.tolist()
    assert trained[0] is None and trained[1] == trained[2] == []  # all data, then nothing: the warm start's cost
    assert len(trained[3]) > 0 and trained[4] == trained[3]
    replay = SubsetReplayer(tmp_path / "rounds.pt")
    for epoch, want in trained.items():
        got = replay.subset_for(epoch)
        assert (None if got is None else got.indices.tolist()) == want, epoch


def test_unweighted_grad_match_keeps_the_subset_and_drops_the_weights():
    gen = torch.Generator().manual_seed(9)
    n = 240
    labels = torch.randint(0, 4, (n,), generator=gen)
    r = torch.softmax(torch.randn(n, 4, generator=gen) * 3, 1) - torch.nn.functional.one_hot(labels, 4).float()
    features = torch.randn(n, 6, generator=gen)
    weighted = GradMatchSubsets(n, fraction=0.2).select(1, r, labels, features)
    plain = GradMatchSubsets(n, fraction=0.2, weighted=False).select(1, r, labels, features)
    assert torch.equal(plain.indices, weighted.indices)
    assert torch.all(plain.weights == 1) and not torch.all(weighted.weights == 1)


def test_random_pb_covers_the_budget_with_whole_fixed_batches():
    pb = RandomPB(1003, batch_size=50, fraction=0.3, seed=4)
    fixed = {tuple(b.tolist()) for b in pb.fixed}
    assert sorted(i for b in pb.fixed for i in b.tolist()) == list(range(1003))
    assert pb.budget == 7  # ceil(0.3 * 21 batches)
    epochs = [pb.batches(e) for e in range(5)]
    for batches in epochs:
        assert len(batches) == pb.budget and all(tuple(b.tolist()) in fixed for b in batches)
        assert len({tuple(b.tolist()) for b in batches}) == pb.budget
    assert len({tuple(tuple(b.tolist()) for b in e) for e in epochs}) > 1  # a new draw each epoch


def test_ridge_spreads_the_weights_and_keeps_the_subset_mean_at_one():
    gen = torch.Generator().manual_seed(9)
    n = 400
    labels = torch.randint(0, 4, (n,), generator=gen)
    logits = torch.randn(n, 4, generator=gen) * 3
    r = torch.softmax(logits, 1) - torch.nn.functional.one_hot(labels, 4).float()
    features = torch.relu(torch.randn(n, 16, generator=gen) * 4)
    spread = {}
    for ridge in (0.0, 0.5):
        subset = GradMatchSubsets(n, fraction=0.25, ridge=ridge).select(0, r, labels, features)
        torch.testing.assert_close(subset.weights.mean(), torch.tensor(1.0))
        spread[ridge] = float(subset.weights.max() / subset.weights.median())
    assert spread[0.5] < spread[0.0] / 2, spread
