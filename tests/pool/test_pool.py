"""SelectionPool: every selected row exactly once, in selection order, in batches of exactly batch_size.

Each test runs on three pools: the CPU pool (row counts known at once), a CPU pool whose counts arrive
late like the CUDA pool's asynchronous readbacks ("cpu-late"), and the CUDA pool where a GPU is present.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sbkernels
from sbkernels import Selection, SelectionPool
from tests.helpers import LateReadbacks

DEVICES = ["cpu", "cpu-late", *(["cuda"] if torch.cuda.is_available() else [])]


def new_pool(device: str, batch_size: int, capacity: int | None = None) -> tuple[SelectionPool, str]:
    """The pool under test and the device its tensors live on."""
    if device == "cpu-late":
        return SelectionPool(batch_size, capacity, readback=LateReadbacks()), "cpu"
    return SelectionPool(batch_size, capacity), device


def make_selection(n: int, chosen: list[int], device: str) -> Selection:
    indices = torch.full((n,), -1, dtype=torch.int64)
    indices[: len(chosen)] = torch.tensor(chosen, dtype=torch.int64)
    count = torch.tensor(len(chosen), dtype=torch.int32)
    zeros = torch.zeros(n)
    return Selection(indices.to(device), count.to(device), zeros.to(device), zeros.to(device))


def run_pool(device, batch_size, capacity, pushes, row_shape, check_after_each=True):
    """Push ids through the pool; return the batches (cloned) and the expected order of ids."""
    pool, device = new_pool(device, batch_size, capacity)
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
    return batches, rest, expected, pool


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
    batches, rest, expected, _ = run_pool(device, batch_size, capacity, pushes, (2, 3), drain_every_push)
    check_invariants(batches, rest, expected, batch_size, (2, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_pool_thousands_of_random_pushes(device):
    gen = torch.Generator().manual_seed(0)
    pushes = []
    for _ in range(3000):
        n = int(torch.randint(1, 64, (1,), generator=gen))
        chosen = torch.nonzero(torch.rand(n, generator=gen) < float(torch.rand(1, generator=gen))).flatten().tolist()
        pushes.append((n, chosen))
    batches, rest, expected, _ = run_pool(device, 32, None, pushes, (3, 4, 4))
    check_invariants(batches, rest, expected, 32, (3, 4, 4))
    assert len(batches) == len(expected) // 32


@pytest.mark.parametrize("device", DEVICES)
def test_pool_with_select_and_channels_last(device):
    gen = torch.Generator().manual_seed(1)
    pool, device = new_pool(device, 16)
    state = sbkernels.SelectorState(64, seed=3, device=device)
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


@pytest.mark.parametrize("device", ["cpu", "cpu-late"])
def test_pool_rejects_bad_use(device):
    with pytest.raises(ValueError, match="batch_size"):
        SelectionPool(0)
    with pytest.raises(ValueError, match="capacity"):
        SelectionPool(8, capacity=4)
    pool, _ = new_pool(device, 8, capacity=10)
    with pytest.raises(ValueError, match="capacity 10 is too small"):
        pool.push(make_selection(5, [0], "cpu"), torch.zeros(5))
    pool, _ = new_pool(device, 4, capacity=12)
    pool.push(make_selection(6, [0, 1, 2, 3, 4, 5], "cpu"), torch.zeros(6))
    with pytest.raises(ValueError, match="leading dim"):
        pool.push(make_selection(6, [0], "cpu"), torch.zeros(5))
    with pytest.raises(ValueError, match="pool holds"):
        pool.push(make_selection(6, [0], "cpu"), torch.zeros(6, 2))
    pool.push(make_selection(6, [0, 1, 2, 3, 4, 5], "cpu"), torch.zeros(6))
    with pytest.raises(RuntimeError, match="full"):  # 12 rows held, never drained: refuse, never drop
        pool.push(make_selection(6, [0], "cpu"), torch.zeros(6))
    assert sum(b[0].shape[0] for b in pool.ready_batches()) == 12  # raising waited for the counts
    pool.check()


def random_pushes(count: int, max_n: int, seed: int) -> list[tuple[int, list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    pushes = []
    for _ in range(count):
        n = int(torch.randint(1, max_n + 1, (1,), generator=gen))
        chosen = torch.nonzero(torch.rand(n, generator=gen) < float(torch.rand(1, generator=gen))).flatten().tolist()
        pushes.append((n, chosen))
    return pushes


def test_late_counts_delay_batches_but_never_make_the_host_wait_at_default_capacity():
    """With the GPU at most one push behind, the default capacity (batch_size + 2 N) always fits the
    next push on the host's bounds alone: no wait, ever. Batches come out late, and all of them."""
    pool = SelectionPool(32, readback=LateReadbacks(max_polls=1, seed=1))
    got, expected, behind = [], [], 0
    for n, chosen in random_pushes(2000, 48, seed=2):
        pool.push(make_selection(n, chosen, "cpu"), torch.arange(len(expected), len(expected) + n))
        expected += [len(expected) + i for i in chosen]
        got += [i for (batch,) in pool.ready_batches() for i in batch.tolist()]
        behind += len(expected) - len(got) >= 32  # a whole batch was in the pool but not yet known
    got += [i for (batch,) in pool.ready_batches(sync=True) for i in batch.tolist()]
    rest = pool.flush()
    got += rest[0].tolist() if rest is not None else []
    assert pool.host_waits == 0
    assert behind > 100  # the late readbacks really delayed batches
    assert len(got) == len(expected)


def test_pool_on_the_emulated_cuda_path(monkeypatch):
    """Late readbacks and the CUDA gather kernel's source (run on the host) together: the pool's CUDA path,
    including its pops, which gather with an int64 count computed on the device."""
    from tests.ops.test_gather import emulated_gather

    monkeypatch.setattr("sbkernels.pool._buffers.gather_rows", emulated_gather())
    pool = SelectionPool(24, readback=LateReadbacks(max_polls=2, seed=5))
    got, expected, next_id = [], [], 0
    for n, chosen in random_pushes(300, 40, seed=6):
        ids = torch.arange(next_id, next_id + n)
        next_id += n
        images = (ids.view(n, 1, 1) * 100 + torch.arange(20).view(1, 5, 4)).float()[:, :, ::2]  # strided rows
        pool.push(make_selection(n, chosen, "cpu"), images, ids.int())
        expected += ids[chosen].tolist()
        for images, ids32 in pool.ready_batches():
            assert torch.equal(images, (ids32.view(-1, 1, 1) * 100 + torch.arange(0, 20, 2).view(1, 5, 2)).float())
            got += ids32.tolist()
    got += [i for batch in pool.ready_batches(sync=True) for i in batch[1].tolist()]
    rest = pool.flush()
    got += rest[1].tolist() if rest is not None else []
    pool.check()
    assert got == expected


def test_late_counts_with_a_tight_capacity_wait_instead_of_dropping_rows():
    pushes = random_pushes(500, 40, seed=3)
    batches, rest, expected, pool = run_pool("cpu-late", 16, 16 - 1 + 40, pushes, (2,))  # checks no overflow
    check_invariants(batches, rest, expected, 16, (2,))
    assert pool.host_waits > 0  # the bounds could not prove a fit, so the host waited


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
    pool, device = new_pool(device, 4)
    pool.push(make_selection(2, [1], device), torch.arange(2, device=device))
    assert pool.capacity == 8
    pool.push(make_selection(50, list(range(0, 50, 2)), device), torch.arange(50, device=device))
    assert pool.capacity >= 104
    out = [i for b in pool.ready_batches(sync=True) for i in b[0].tolist()] + pool.flush()[0].tolist()
    assert out == [1, *range(0, 50, 2)]
