"""SelectionPool: every selected row exactly once, in selection order, in batches of exactly batch_size."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sbkernels
from sbkernels import Selection, SelectionPool

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def make_selection(n: int, chosen: list[int], device: str) -> Selection:
    indices = torch.full((n,), -1, dtype=torch.int64)
    indices[: len(chosen)] = torch.tensor(chosen, dtype=torch.int64)
    count = torch.tensor(len(chosen), dtype=torch.int32)
    zeros = torch.zeros(n)
    return Selection(indices.to(device), count.to(device), zeros.to(device), zeros.to(device))


def run_pool(device, batch_size, capacity, pushes, row_shape, check_after_each=True):
    """Push ids through the pool; return the batches (cloned) and the expected order of ids."""
    pool = SelectionPool(batch_size, capacity)
    batches, expected, next_id = [], [], 0
    for n, chosen in pushes:
        ids = torch.arange(next_id, next_id + n)
        next_id += n
        images = ids.view(n, *([1] * len(row_shape))).expand(n, *row_shape).float().contiguous()
        pool.push(make_selection(n, chosen, device), images.to(device), ids.to(device), (ids % 2 == 0).to(device))
        expected += ids[chosen].tolist()
        if check_after_each:
            batches += [tuple(t.clone() for t in b) for b in pool.ready_batches()]
    batches += [tuple(t.clone() for t in b) for b in pool.ready_batches(sync=True)]
    rest = pool.flush()
    pool.check()
    return batches, rest, expected


def check_invariants(batches, rest, expected, batch_size, row_shape):
    got = []
    for images, ids, parity in [*batches, *([rest] if rest is not None else [])]:
        assert images.shape[1:] == row_shape and ids.dim() == 1
        # The tensors pushed together stay aligned row by row.
        assert torch.equal(images.reshape(images.shape[0], -1)[:, 0].long().cpu(), ids.cpu())
        assert torch.equal(parity.cpu(), ids.cpu() % 2 == 0)
        got += ids.tolist()
    assert all(b[0].shape[0] == batch_size for b in batches)
    assert rest is None or 0 < rest[0].shape[0] < batch_size
    assert got == expected  # every selected row exactly once, in selection order


push_strategy = st.integers(1, 40).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.integers(0, n - 1), unique=True).map(sorted))
)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch_size=st.integers(1, 17),
    extra_capacity=st.one_of(st.none(), st.integers(40, 120)),
    pushes=st.lists(push_strategy, min_size=0, max_size=60),
    drain_every_push=st.booleans(),
)
def test_pool_invariant_property(device, batch_size, extra_capacity, pushes, drain_every_push):
    capacity = None if extra_capacity is None else batch_size + extra_capacity
    if not drain_every_push:
        capacity = batch_size + sum(n for n, _ in pushes) + 1  # must hold everything until the end
    batches, rest, expected = run_pool(device, batch_size, capacity, pushes, (2, 3), drain_every_push)
    check_invariants(batches, rest, expected, batch_size, (2, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_pool_thousands_of_random_pushes(device):
    gen = torch.Generator().manual_seed(0)
    pushes = []
    for _ in range(3000):
        n = int(torch.randint(1, 64, (1,), generator=gen))
        chosen = torch.nonzero(torch.rand(n, generator=gen) < float(torch.rand(1, generator=gen))).flatten().tolist()
        pushes.append((n, chosen))
    batches, rest, expected = run_pool(device, 32, None, pushes, (3, 4, 4))
    check_invariants(batches, rest, expected, 32, (3, 4, 4))
    assert len(batches) == len(expected) // 32


@pytest.mark.parametrize("device", DEVICES)
def test_pool_with_select_and_channels_last(device):
    gen = torch.Generator().manual_seed(1)
    state = sbkernels.SelectorState(64, seed=3, device=device)
    pool = SelectionPool(16)
    expected, got = [], []
    for _ in range(20):
        images = torch.randn(24, 3, 8, 8, generator=gen).to(device).to(memory_format=torch.channels_last)
        labels = torch.randint(0, 10, (24,), generator=gen).to(device)
        logits = torch.randn(24, 10, generator=gen).to(device)
        sel = sbkernels.select(logits, labels, state, beta=2.0)
        pool.push(sel, images, labels)
        rows = sel.indices[: int(sel.count)]
        expected += list(zip(images[rows].cpu(), labels[rows].cpu(), strict=True))
        for x, y in pool.ready_batches():
            assert x.shape == (16, 3, 8, 8) and x.is_contiguous(memory_format=torch.channels_last)
            got += list(zip(x.cpu().clone(), y.cpu().clone(), strict=True))  # batches are views: keep copies
    for batch in pool.ready_batches(sync=True):
        got += list(zip(*(t.cpu().clone() for t in batch), strict=True))
    rest = pool.flush()
    if rest is not None:
        got += list(zip(*(t.cpu() for t in rest), strict=True))
    assert len(got) == len(expected)
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, expected, strict=True))


def test_pool_rejects_bad_use():
    with pytest.raises(ValueError, match="batch_size"):
        SelectionPool(0)
    with pytest.raises(ValueError, match="capacity"):
        SelectionPool(8, capacity=4)
    pool = SelectionPool(8, capacity=10)
    with pytest.raises(ValueError, match="capacity 10 is too small"):
        pool.push(make_selection(5, [0], "cpu"), torch.zeros(5))
    pool = SelectionPool(4, capacity=12)
    pool.push(make_selection(6, [0, 1, 2, 3, 4, 5], "cpu"), torch.zeros(6))
    with pytest.raises(ValueError, match="leading dim"):
        pool.push(make_selection(6, [0], "cpu"), torch.zeros(5))
    with pytest.raises(ValueError, match="pool holds"):
        pool.push(make_selection(6, [0], "cpu"), torch.zeros(6, 2))
    pool.push(make_selection(6, [0, 1, 2, 3, 4, 5], "cpu"), torch.zeros(6))
    with pytest.raises(RuntimeError, match="full"):  # 12 rows held, never drained: refuse, never drop
        pool.push(make_selection(6, [0], "cpu"), torch.zeros(6))
    assert sum(b[0].shape[0] for b in pool.ready_batches()) == 12
    pool.check()


def test_pool_state_dict_round_trip():
    pool = SelectionPool(4)
    pool.push(make_selection(6, [1, 2, 5], "cpu"), torch.arange(6.0), torch.arange(6))
    saved = pool.state_dict()
    restored = SelectionPool(4)
    restored.load_state_dict(saved)
    restored.push(make_selection(3, [0, 2], "cpu"), torch.arange(10.0, 13.0), torch.arange(10, 13))
    ((x, y),) = list(restored.ready_batches())
    assert x.tolist() == [1.0, 2.0, 5.0, 10.0] and y.tolist() == [1, 2, 5, 10]
    assert restored.flush()[1].tolist() == [12]


@pytest.mark.parametrize("device", DEVICES)
def test_default_capacity_grows_for_a_larger_push(device):
    pool = SelectionPool(4)
    pool.push(make_selection(2, [1], device), torch.arange(2, device=device))
    assert pool.capacity == 8
    pool.push(make_selection(50, list(range(0, 50, 2)), device), torch.arange(50, device=device))
    assert pool.capacity >= 104
    out = [i for b in pool.ready_batches(sync=True) for i in b[0].tolist()] + pool.flush()[0].tolist()
    assert out == [1, *range(0, 50, 2)]
