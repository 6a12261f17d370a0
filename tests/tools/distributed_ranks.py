"""Gloo ranks on the CPU for tests/distributed/test_distributed.py: a launcher with a time limit, and the rank programs.

:func:`run_ranks` starts ``world`` processes (spawn), each joining a gloo group through a file store and
running one function of this module; it fails the test with the ranks' output if any rank fails, or if they
have not finished within ``timeout`` seconds (a hang, e.g. unequal collectives, fails instead of stalling).
Each rank program asserts what it can see itself and returns a small summary for the test to compare.
"""

from __future__ import annotations

import copy
import os
import time
import traceback
import weakref
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import sbkernels
from sbkernels import SB, Keep, SelectiveBackprop, Uniform
from sbkernels.distributed import release_collective_tensors
from tests.helpers import LateReadbacks

from .sync_detector import SyncDetector

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def run_ranks(program: str, world: int, tmp_path: Path, timeout: float = 240, **kwargs) -> list:
    """Run ``program`` (a function name of this module) on ``world`` gloo ranks; return their results."""
    context = mp.get_context("spawn")
    store = tmp_path / "store"
    processes = [
        context.Process(target=_rank_main, args=(program, rank, world, str(store), str(tmp_path), kwargs))
        for rank in range(world)
    ]
    for p in processes:
        p.start()
    deadline = time.monotonic() + timeout
    for p in processes:
        p.join(timeout=max(0.1, deadline - time.monotonic()))
    hung = [rank for rank, p in enumerate(processes) if p.is_alive()]
    for p in processes:
        if p.is_alive():
            p.kill()
            p.join()
    errors = {
        rank: (tmp_path / f"rank{rank}.error").read_text()
        for rank in range(world)
        if (tmp_path / f"rank{rank}.error").exists()
    }
    assert not hung, f"ranks {hung} still running after {timeout} s (a hang): {errors}"
    assert not errors, "\n".join(f"rank {rank}:\n{text}" for rank, text in errors.items())
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


def _rank_main(program: str, rank: int, world: int, store: str, out: str, kwargs: dict) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=90)
        )
        result = globals()[program](rank, world, **kwargs)
        torch.save(result, Path(out) / f"rank{rank}.pt")
        release_collective_tensors()
        dist.destroy_process_group()
    except BaseException:
        Path(out, f"rank{rank}.error").write_text(traceback.format_exc())
        os._exit(1)


def _global_batch(seed: int, n: int, world: int, num_classes: int, dtype: torch.dtype):
    """The same global batch on every rank: logits, targets with ignored rows and a bad target."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(world * n, num_classes, generator=gen) * 3).to(dtype)
    targets = torch.randint(0, num_classes, (world * n,), generator=gen)
    targets[torch.rand(world * n, generator=gen) < 0.15] = -100
    targets[seed % (world * n)] = num_classes  # out of range: counted, never selected
    return logits, targets


# ------------------------------------------------------------------------------- global selection
def global_equals_single_process(rank: int, world: int, calls: int = 6) -> dict:
    """``select`` with a group equals single-process ``select`` on the concatenated batch, call after call."""
    group = dist.group.WORLD
    backends = ["reference", *(["triton"] if os.environ.get("TRITON_INTERPRET") == "1" else [])]
    checked = 0
    for backend in backends:
        for name, dtype in DTYPES.items():
            n, num_classes = 13 + 4 * (name == "bf16"), 9
            mine = sbkernels.SelectorState(32, seed=7, process_group=group)
            alone = sbkernels.SelectorState(32, seed=7)
            for call in range(calls):
                logits, targets = _global_batch(100 * call + n, n, world, num_classes, dtype)
                rows = slice(rank * n, (rank + 1) * n)
                kw = {"beta": 2.0, "floor": 0.05, "prime": 3 if call == 0 else 0, "backend": backend}
                got = sbkernels.select(logits[rows], targets[rows], mine, **kw)
                want = sbkernels.select(logits, targets, alone, **kw)
                want_local = want.indices[: int(want.count)]
                want_local = want_local[(want_local >= rank * n) & (want_local < (rank + 1) * n)] - rank * n
                assert got.indices[: int(got.count)].tolist() == want_local.tolist(), (backend, name, call)
                assert torch.all(got.indices[int(got.count) :] == -1)
                torch.testing.assert_close(got.loss, want.loss[rows], rtol=1e-6, atol=1e-6, equal_nan=True)
                assert torch.equal(got.prob, want.prob[rows]), (backend, name, call)
                assert torch.equal(mine.history, alone.history) and torch.equal(mine.meta, alone.meta)
                checked += 1
            # Precomputed losses and a global uniform rate take the same path.
            losses = torch.rand(world * 8, generator=torch.Generator().manual_seed(5)) * 3
            losses[3] = float("nan")
            got = sbkernels.select_losses(losses[rank * 8 : (rank + 1) * 8], mine, beta=1.0, backend=backend)
            want = sbkernels.select_losses(losses, alone, beta=1.0, backend=backend)
            assert torch.equal(got.prob, want.prob[rank * 8 : (rank + 1) * 8])
            got = sbkernels.select_uniform(losses[rank * 8 : (rank + 1) * 8], None, mine, rate=0.5, backend=backend)
            want = sbkernels.select_uniform(losses, None, alone, rate=0.5, backend=backend)
            assert int(got.count) == int(((want.indices >= rank * 8) & (want.indices < (rank + 1) * 8)).sum())
            assert torch.equal(mine.history, alone.history) and torch.equal(mine.meta, alone.meta)
    # Fixed-count policies stay local: k rows per rank, and different ranks draw different uniforms.
    keep_state = sbkernels.SelectorState(8, seed=1, process_group=group)
    local = sbkernels.select_keep(torch.zeros(40), None, keep_state, 0.25)
    return {"checked": checked, "history": mine.history.tolist(), "keep": local.indices[: int(local.count)].tolist()}


def mismatched_batch_sizes(rank: int, world: int) -> str:
    """Different N on the ranks: validate=True raises on every rank before the collective, no hang."""
    state = sbkernels.SelectorState(8, process_group=dist.group.WORLD)
    n = 5 + rank
    try:
        sbkernels.select(torch.randn(n, 4), torch.randint(0, 4, (n,)), state, validate=True)
    except ValueError as error:
        return str(error)
    return "no error"


# ------------------------------------------------------------------------------------- training
def _rank_data(rank: int, pushes: int, n: int, features: int, classes: int):
    """Rank 0 sees only hard examples (random labels), the others learnable ones; ids are global."""
    gen = torch.Generator().manual_seed(1000 + rank)
    x = torch.randn(pushes * n, features, generator=gen)
    teacher = torch.randn(features, classes, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, classes, (pushes * n,), generator=gen) if rank == 0 else (x @ teacher).argmax(1)
    ids = torch.arange(pushes * n) + rank * pushes * n
    return x, y, ids


def ddp_training(rank: int, world: int, epochs: int = 2, pushes: int = 12, n: int = 16, batch: int = 8) -> dict:
    """A DDP loop with unequal selectivity: it finishes, every rank takes the same optimizer steps, every
    selected row is backpropagated exactly once, the parameters stay identical, and a final (partial) step's
    gradient equals the single-process mean over the same rows."""
    group = dist.group.WORLD
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    sb = SelectiveBackprop(batch, SB(beta=2.0, seed=3), process_group=group, lag=2)
    x, y, ids = _rank_data(rank, pushes, n, 6, 4)
    selected, trained, steps, gradient_checked = [], [], 0, 0

    def train(batches, check_gradient: bool = False) -> None:
        nonlocal steps, gradient_checked
        for b in batches:
            bx, by = b.data
            before = copy.deepcopy(model)
            loss = (b.weight * F.cross_entropy(ddp(bx), by, reduction="none")).sum()
            opt.zero_grad()
            loss.backward()
            if check_gradient:
                gradient_checked += _check_mean_gradient(before, bx, by, model, group)
            opt.step()
            steps += 1
            trained.extend(b.sample_ids.tolist())

    for epoch in range(epochs):
        sb.start_epoch(epoch)
        for p in range(pushes):
            rows = slice(p * n, (p + 1) * n)
            with torch.no_grad():
                logits = model(x[rows])
            sel = sb.observe(logits, y[rows], x[rows], y[rows], sample_ids=ids[rows])
            selected.extend(ids[rows][sel.indices[: int(sel.count)]].tolist())
            train(sb.ready_batches())
        train(sb.flush(), check_gradient=True)
    assert sorted(trained) == sorted(selected), "a selected row was lost or trained twice"
    assert len(set(trained)) == len(trained) or epochs > 1
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    everyone = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(everyone, flat)
    assert all(torch.equal(everyone[0], other) for other in everyone), "parameters differ across ranks"
    return {
        "steps": steps,
        "selected": len(selected),
        "gradient_checked": gradient_checked,
        "host_waits": sb.coordinator.host_waits,
        "agreed": sb.coordinator.agreed_rows,
    }


def _check_mean_gradient(before: nn.Module, bx, by, model: nn.Module, group) -> int:
    """DDP's averaged gradient of the weighted sum == the gradient of the mean loss over all ranks' rows."""
    rows = [None] * dist.get_world_size(group)
    dist.all_gather_object(rows, (bx, by), group=group)
    all_x = torch.cat([r[0] for r in rows])
    all_y = torch.cat([r[1] for r in rows])
    if len(all_y) == 0:
        return 0
    F.cross_entropy(before(all_x), all_y).backward()
    for want, got in zip(before.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6)
    return 1


# -------------------------------------------------------------------------------------- resume
def _selection_run(sb: SelectiveBackprop, rank: int, pushes: range, n: int = 12) -> list:
    """Observe pushes of fixed logits; record every push's selected rows and the steps taken after it."""
    log = []
    for p in pushes:
        gen = torch.Generator().manual_seed(10_000 * rank + p)
        logits = torch.randn(n, 5, generator=gen) * (3.0 if rank == 0 else 0.5)
        targets = torch.randint(0, 5, (n,), generator=gen)
        ids = torch.arange(n) + 1000 * p + 100_000 * rank
        sel = sb.observe(logits, targets, targets, sample_ids=ids)
        log.append((sel.indices[: int(sel.count)].tolist(), [b.sample_ids.tolist() for b in sb.ready_batches()]))
    return log


def resume_mid_epoch(rank: int, world: int, pushes: int = 14, cut: int = 6) -> dict:
    """A run resumed from a mid-epoch checkpoint selects and steps exactly as the uninterrupted one."""
    group = dist.group.WORLD

    def make():
        return SelectiveBackprop(4, SB(beta=1.5, seed=11, history_size=16), process_group=group, lag=2)

    whole = make()
    want = _selection_run(whole, rank, range(pushes))
    want_final = [b.sample_ids.tolist() for b in whole.flush()]
    first = make()
    got = _selection_run(first, rank, range(cut))
    saved = first.state_dict()
    resumed = make()
    resumed.load_state_dict(saved)
    got += _selection_run(resumed, rank, range(cut, pushes))
    got_final = [b.sample_ids.tolist() for b in resumed.flush()]
    assert got == want, "the resumed run selected or stepped differently"
    assert got_final == want_final
    state = resumed.state.state_dict()
    everyone = [None] * world
    dist.all_gather_object(everyone, (state["history"], state["meta"]))
    assert all(torch.equal(everyone[0][0], h) and torch.equal(everyone[0][1], m) for h, m in everyone)
    return {"pushes": pushes, "steps": sum(len(s) for _, s in want) + len(want_final)}


# ---------------------------------------------------------------------------------- sync detector
def distributed_paths_never_sync(rank: int, world: int) -> dict:
    """select with a group, fixed-count policies with a group, and SelectiveBackprop's coordinated steps run
    under the CPU-side CUDA-sync detector with asynchronous (late) readbacks; the CPU's immediate count
    read (no readback) is caught, as the negative control."""
    group = dist.group.WORLD
    backends = ["reference", *(["triton"] if os.environ.get("TRITON_INTERPRET") == "1" else [])]
    found = {}
    for backend in backends:
        state = sbkernels.SelectorState(16, seed=2, process_group=group)
        x, t = torch.randn(10, 6), torch.randint(0, 6, (10,))
        sbkernels.select(x, t, state, backend=backend)  # warm-up
        with SyncDetector() as detector:
            for _ in range(2):
                sbkernels.select(x, t, state, beta=2.0, backend=backend)
                sbkernels.select_uniform(x, t, state, rate=0.4, backend=backend)
                sbkernels.select_keep(x, t, state, 0.5, backend=backend)
        detector.assert_clean()
        for late in (True, False):
            readback = LateReadbacks(max_polls=1, seed=rank) if late else None
            sb = SelectiveBackprop(4, Keep(0.5, backend=backend), process_group=group, readback=readback)
            sb.observe(x, t, x, t)  # the first observe checks the batch sizes (a documented sync)
            with SyncDetector(allowed_waits=0) as detector:
                for _ in range(5):
                    sb.observe(x, t, x, t)
                    list(sb.ready_batches())
            found[(backend, late)] = sorted(detector.kinds())
    for backend in backends:
        assert found[(backend, True)] == [], found
        assert "host read" in found[(backend, False)], found
    Uniform(k=3)  # the fixed-count policies need no group argument
    return {"found": {f"{b}-{'late' if late else 'immediate'}": k for (b, late), k in found.items()}}


def collective_tensors_released(rank: int, world: int) -> dict:
    """release_collective_tensors: the tensors of the collectives before it are freed when it returns, and
    the check sees a tensor that a collective's work object (kept alive here) still holds."""
    finished = torch.ones(3)
    dist.all_gather_into_tensor(torch.empty(3 * world), finished)
    dist.barrier()  # a barrier keeps the collectives before it until the barrier itself is freed
    finished_ref = weakref.ref(finished)
    held = torch.ones(3)
    work = dist.all_reduce(held, async_op=True)
    work.wait()
    held_ref = weakref.ref(held)
    del finished, held
    release_collective_tensors()
    out = {"finished released": finished_ref() is None, "held by a work": held_ref() is not None}
    del work
    return out


def unequal_collectives(rank: int, world: int) -> None:
    """Negative control for run_ranks' time limit: rank 0 waits in a collective the others, still alive
    (e.g. training on), never join."""
    if rank == 0:
        dist.all_reduce(torch.ones(1))
    else:
        time.sleep(120)
