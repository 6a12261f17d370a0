"""Claims that only a GPU can prove: CPU/GPU agreement, no host sync, CUDA graphs, N * C > 2**31.

Every test here skips cleanly without CUDA; `benchmarks/gpu_run.sh` runs them on the device machine.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sbkernels
from sbkernels import reference
from sbkernels.kernels import select_sb
from tests.helpers import assert_same_selection, random_logits, uniforms

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_cuda_and_cpu_pick_the_same_rows():
    gen = torch.Generator().manual_seed(0)
    gpu = sbkernels.SelectorState(512, seed=42, device="cuda")
    cpu = sbkernels.SelectorState(512, seed=42)
    for n in (1, 100, 1000, 4097):
        losses = torch.rand(n, generator=gen) * 4
        got = sbkernels.select_losses(losses.cuda(), gpu, beta=2.0)
        want = sbkernels.select_losses(losses, cpu, beta=2.0)
        assert torch.equal(got.indices.cpu(), want.indices) and int(got.count) == int(want.count)
        assert torch.equal(got.prob.cpu(), want.prob)
    assert torch.equal(gpu.history.cpu(), cpu.history) and torch.equal(gpu.meta.cpu(), cpu.meta)

    # From logits: GPU losses match float64 to float32 rounding, and the GPU's Philox draws and ranking
    # equal the CPU reference's on those losses exactly.
    for n, num_classes, dtype in ((300, 10, torch.float32), (257, 1000, torch.bfloat16), (64, 32000, torch.float16)):
        logits = random_logits(n, num_classes, dtype, "cpu", gen)
        targets = torch.randint(0, num_classes, (n,), generator=gen)
        cpu.load_state_dict(gpu.state_dict())
        meta_before = gpu.meta.cpu().clone()
        got = sbkernels.select(logits.cuda(), targets.cuda(), gpu, beta=1.0)
        want_loss = F.cross_entropy(logits.double(), targets, reduction="none")
        tol = 4e-6 * (1 + float(logits.double().abs().max()))
        torch.testing.assert_close(got.loss.cpu().double(), want_loss, rtol=4e-6, atol=tol)
        no_rows = torch.zeros(n, dtype=torch.bool)
        want = reference.select_sb(got.loss.cpu().clone(), no_rows, no_rows, cpu.history, cpu.meta, 1.0, 0.0, 0)
        assert_same_selection(got, sbkernels.Selection(*want), uniforms(meta_before, n), exact=True)
        assert torch.equal(gpu.history.cpu(), cpu.history) and torch.equal(gpu.meta.cpu(), cpu.meta)


def test_select_never_synchronizes():
    state = sbkernels.SelectorState(1024, device="cuda")
    logits = torch.randn(4096, 1000, device="cuda", dtype=torch.bfloat16)
    targets = torch.randint(0, 1000, (4096,), device="cuda")
    sbkernels.select(logits, targets, state)  # compile outside the check
    sbkernels.select_losses(torch.rand(4096, device="cuda"), state)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            sel = sbkernels.select(logits, targets, state, beta=2.0, floor=0.01, prime=10)
            sbkernels.select_losses(sel.loss, state)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_select_replays_in_a_cuda_graph():
    n, num_classes = 777, 100
    gen = torch.Generator().manual_seed(1)
    static_logits = torch.zeros(n, num_classes, device="cuda")
    static_targets = torch.zeros(n, dtype=torch.int64, device="cuda")
    state = sbkernels.SelectorState(256, seed=5, device="cuda")
    start = state.state_dict()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up: compile and allocate outside the capture
            sbkernels.select(static_logits, static_targets, state, beta=2.0)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sel = sbkernels.select(static_logits, static_targets, state, beta=2.0)
    state.load_state_dict(start)  # in place: the graph keeps pointing at the same tensors

    cpu = sbkernels.SelectorState(256, seed=5)
    for _ in range(5):
        logits = torch.randn(n, num_classes, generator=gen) * 3
        targets = torch.randint(0, num_classes, (n,), generator=gen)
        static_logits.copy_(logits)
        static_targets.copy_(targets)
        meta_before = state.meta.cpu().clone()
        graph.replay()
        want = reference.select_sb(
            sel.loss.cpu().clone(), targets == -100, torch.zeros(n, dtype=torch.bool), cpu.history, cpu.meta,
            2.0, 0.0, 0,
        )  # fmt: skip
        assert_same_selection(sel, sbkernels.Selection(*want), uniforms(meta_before, n), exact=True)
        assert torch.equal(state.history.cpu(), cpu.history) and torch.equal(state.meta.cpu(), cpu.meta)
    assert int(state.step) == 5


def test_many_programs_epilogue_stress():
    """The last-program epilogue must see every program's flags: thousands of launches of thousands of
    one-row programs (C = 4096 gives BLOCK_M = 1), each checked on the device against the reference run on
    the kernel's own losses, so a dropped barrier or a weakened ticket shows up as a mismatch."""
    gen = torch.Generator(device="cuda").manual_seed(2)
    n, num_classes, launches = 2048, 4096, 2000
    assert select_sb.launch_config(n, num_classes, 4096, from_logits=True)["BLOCK_M"] == 1
    logits = torch.randn(n, num_classes, device="cuda", generator=gen) * 3
    kernel = sbkernels.SelectorState(4096, seed=11, device="cuda")
    ref = sbkernels.SelectorState(4096, seed=11, device="cuda")
    no_rows = torch.zeros(n, dtype=torch.bool, device="cuda")
    mismatches = torch.zeros((), dtype=torch.int64, device="cuda")
    for i in range(launches):
        targets = torch.randint(0, num_classes, (n,), device="cuda", generator=gen)
        got = sbkernels.select(logits, targets, kernel, beta=1.0, floor=0.02)
        want = reference.select_sb(got.loss.clone(), no_rows, no_rows, ref.history, ref.meta, 1.0, 0.02, 0)
        mismatches += (got.indices != want[0]).sum() + (got.count != want[1]).long()
        mismatches += (kernel.history != ref.history).sum() + (kernel.meta != ref.meta).sum()
        if i % 200 == 0:
            logits.mul_(0.9).add_(torch.randn_like(logits), alpha=0.3)
    assert int(mismatches) == 0


def test_compile_fullgraph_on_cuda():
    """torch.compile(fullgraph=True) over select + a policy + gather on CUDA tensors (the CPU suite only
    compiles CPU tensors), equal to the eager calls on a copy of the state."""
    from sbkernels import gather_rows, new_cursor

    gen = torch.Generator(device="cuda").manual_seed(12)
    logits = torch.randn(300, 50, device="cuda", generator=gen)
    targets = torch.randint(0, 50, (300,), device="cuda", generator=gen)
    images = torch.randn(300, 8, device="cuda", generator=gen)

    def step(state, out, cursor):
        sel = sbkernels.select(logits, targets, state, beta=2.0)
        gather_rows([images], sel.indices, sel.count, [out], cursor)
        keep = sbkernels.select_keep(logits, targets, state, 0.5)
        return sel.indices, sel.count, keep.indices

    compiled = torch.compile(step, fullgraph=True)
    eager_state = sbkernels.SelectorState(64, seed=3, device="cuda")
    compiled_state = sbkernels.SelectorState(64, seed=3, device="cuda")
    outs = [torch.empty(300, 8, device="cuda") for _ in range(2)]
    cursors = [new_cursor("cuda") for _ in range(2)]
    for _ in range(3):
        want = step(eager_state, outs[0], cursors[0])
        got = compiled(compiled_state, outs[1], cursors[1])
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)
    assert torch.equal(eager_state.meta, compiled_state.meta)
    assert torch.equal(eager_state.history, compiled_state.history)
    assert torch.equal(outs[0], outs[1]) and torch.equal(cursors[0], cursors[1])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensors_on_the_second_gpu_while_the_first_is_current():
    """Launches and the pool's readback event go to the tensors' device (tests/kernels/test_devices.py on CPU)."""
    torch.cuda.set_device(0)
    gen = torch.Generator().manual_seed(13)
    logits = torch.randn(500, 30, generator=gen)
    targets = torch.randint(0, 30, (500,), generator=gen)
    gpu = sbkernels.SelectorState(128, seed=2, device="cuda:1")
    cpu = sbkernels.SelectorState(128, seed=2)
    pool = sbkernels.SelectionPool(64)
    taken = []
    for _ in range(4):
        got = sbkernels.select(logits.to("cuda:1"), targets.to("cuda:1"), gpu, beta=2.0)
        want = sbkernels.select(logits, targets, cpu, beta=2.0)
        assert torch.equal(got.indices.cpu(), want.indices)
        pool.push(got, targets.to("cuda:1"))
        taken += [t.cpu() for (t,) in pool.ready_batches()]
        assert torch.cuda.current_device() == 0
    assert torch.equal(gpu.meta.cpu(), cpu.meta) and pool.host_waits == 0


def test_more_than_2_to_the_31_logits():
    n, num_classes = 16400, 131072  # 2,149,580,800 elements of bf16 (4.3 GB)
    assert n * num_classes > 2**31
    gen = torch.Generator(device="cuda").manual_seed(3)
    logits = torch.randn(n, num_classes, device="cuda", dtype=torch.bfloat16, generator=gen)
    targets = torch.randint(0, num_classes, (n,), device="cuda", generator=gen)
    state = sbkernels.SelectorState(1024, seed=1, device="cuda")
    meta_before = state.meta.cpu().clone()
    sel = sbkernels.select(logits, targets, state, beta=2.0)
    rows = torch.tensor([0, 1, n // 2, n - 2, n - 1], device="cuda")  # the last rows sit past 2**31
    want = F.cross_entropy(logits[rows].double(), targets[rows], reduction="none")
    torch.testing.assert_close(sel.loss[rows].double(), want, rtol=4e-6, atol=1e-4)
    cpu = sbkernels.SelectorState(1024, seed=1)
    ref = reference.select_sb(
        sel.loss.cpu().clone(), torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool), cpu.history,
        cpu.meta, 2.0, 0.0, 0,
    )  # fmt: skip
    assert_same_selection(sel, sbkernels.Selection(*ref), uniforms(meta_before, n), exact=True)


def test_pool_push_and_ready_batches_never_synchronize():
    gen = torch.Generator(device="cuda").manual_seed(4)
    state = sbkernels.SelectorState(1024, device="cuda")
    pool = sbkernels.SelectionPool(128)
    images = torch.randn(256, 3, 32, 32, device="cuda", generator=gen)
    labels = torch.randint(0, 10, (256,), device="cuda", generator=gen)
    logits = torch.randn(256, 10, device="cuda", generator=gen)
    taken = selected = 0
    for _ in range(3):  # warm-up: compile, allocate buffers and pinned readback slots
        sel = sbkernels.select(logits, labels, state)
        selected += int(sel.count)
        pool.push(sel, images, labels)
        taken += sum(b[0].shape[0] for b in pool.ready_batches())
    torch.cuda.synchronize()
    counts = []
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(30):
            sel = sbkernels.select(logits, labels, state, beta=1.0)
            pool.push(sel, images, labels)
            counts.append(sel.count)
            for x, _y in pool.ready_batches():
                x.mul_(1.0)  # stand-in for the backward pass on the batch
                taken += x.shape[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    selected += int(torch.stack(counts).sum())
    taken += sum(b[0].shape[0] for b in pool.ready_batches(sync=True))
    rest = pool.flush()
    taken += 0 if rest is None else rest[0].shape[0]
    assert taken == selected
    assert pool.host_waits == 0  # event.synchronize() is invisible to the sync-debug mode: count it
    pool.check()


def test_select_and_gather_in_one_cuda_graph():
    from sbkernels import gather_rows, new_cursor

    n, num_classes = 300, 10
    gen = torch.Generator().manual_seed(6)
    static_logits = torch.zeros(n, num_classes, device="cuda")
    static_targets = torch.zeros(n, dtype=torch.int64, device="cuda")
    static_images = torch.zeros(n, 3, 16, 16, device="cuda", dtype=torch.bfloat16)
    out_images = torch.empty(n, 3, 16, 16, device="cuda", dtype=torch.bfloat16)
    out_targets = torch.empty(n, dtype=torch.int64, device="cuda")
    cursor = new_cursor("cuda")
    state = sbkernels.SelectorState(128, seed=9, device="cuda")
    start = state.state_dict()

    def step():
        sel = sbkernels.select(static_logits, static_targets, state)
        gather_rows([static_images, static_targets], sel.indices, sel.count, [out_images, out_targets], cursor)
        return sel

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sel = step()
    state.load_state_dict(start)

    cpu = sbkernels.SelectorState(128, seed=9)
    for _ in range(4):
        logits = torch.randn(n, num_classes, generator=gen)
        targets = torch.randint(0, num_classes, (n,), generator=gen)
        images = torch.randn(n, 3, 16, 16, generator=gen).to(torch.bfloat16)
        static_logits.copy_(logits)
        static_targets.copy_(targets)
        static_images.copy_(images)
        cursor.zero_()
        graph.replay()
        no_rows = torch.zeros(n, dtype=torch.bool)
        want = reference.select_sb(sel.loss.cpu().clone(), no_rows, no_rows, cpu.history, cpu.meta, 1.0, 0.0, 0)
        rows = want[0][: int(want[1])]
        assert torch.equal(sel.indices.cpu(), want[0])
        assert int(cursor[0]) == rows.numel()
        assert torch.equal(out_images[: rows.numel()].cpu(), images[rows])
        assert torch.equal(out_targets[: rows.numel()].cpu(), targets[rows])


def test_gradmatch_never_synchronizes_for_fixed_k():
    gen = torch.Generator(device="cuda").manual_seed(7)
    logits = torch.randn(256, 10, device="cuda", generator=gen)
    targets = torch.randint(0, 10, (256,), device="cuda", generator=gen)
    features = torch.randn(256, 64, device="cuda", generator=gen)
    state = sbkernels.SelectorState(16, device="cuda")
    sbkernels.select_gradmatch(logits, targets, state, 32, features)  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sel = sbkernels.select_gradmatch(logits, targets, state, 32, features)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    rows = sel.indices[: int(sel.count)]
    assert 0 < rows.numel() <= 32 and torch.all(sel.weight[rows] > 0)
