"""pytest-benchmark microbenchmarks: ``pytest benchmarks/ --benchmark-only`` (not collected by make test).

Every policy of the selection op, gather_rows and SelectionPool.push, on CPU and, where present, CUDA.
CUDA timings synchronize inside the timed function, so they include the GPU work.
"""

from __future__ import annotations

import pytest
import torch

import sbkernels
from sbkernels import gather_rows, new_cursor

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
SHAPES = [(128, 10), (1024, 1000), (4096, 32000)]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _inputs(device: str, n: int, num_classes: int):
    gen = torch.Generator(device=device).manual_seed(0)
    dtype = torch.bfloat16 if num_classes > 10_000 else torch.float32
    logits = torch.randn(n, num_classes, device=device, dtype=dtype, generator=gen)
    return logits, torch.randint(0, num_classes, (n,), device=device, generator=gen)


POLICIES = {
    "sb": lambda lg, t, s: sbkernels.select(lg, t, s, beta=2.0),
    "keep": lambda lg, t, s: sbkernels.select_keep(lg, t, s, 0.5),
    "uniform-rate": lambda lg, t, s: sbkernels.select_uniform(lg, t, s, rate=0.3),
    "uniform-k": lambda lg, t, s: sbkernels.select_uniform(lg, t, s, k=lg.shape[0] // 3),
    "importance": lambda lg, t, s: sbkernels.select_importance(lg, t, s, lg.shape[0] // 3),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("policy", list(POLICIES))
def test_select(benchmark, device, shape, policy):
    if device == "cpu" and shape[1] > 10_000:
        pytest.skip("large vocabularies are a GPU benchmark")
    logits, targets = _inputs(device, *shape)
    state = sbkernels.SelectorState(1024, device=device)
    fn = POLICIES[policy]

    def call():
        out = fn(logits, targets, state)
        _sync(device)
        return out

    benchmark(call)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows", [256, 1024])
def test_gather_rows(benchmark, device, rows):
    gen = torch.Generator(device=device).manual_seed(1)
    images = torch.randn(rows, 3, 64, 64, device=device, generator=gen).to(torch.bfloat16)
    labels = torch.randint(0, 1000, (rows,), device=device, generator=gen)
    indices = torch.sort(torch.randperm(rows, device=device, generator=gen)[: rows // 2]).values
    count = torch.tensor(rows // 2, dtype=torch.int32, device=device)
    outputs = [torch.empty_like(images), torch.empty_like(labels)]
    cursor = new_cursor(device)

    def call():
        cursor.narrow(0, 0, 1).zero_()  # a device-side fill: cursor[0] = 0 would be a blocking copy
        gather_rows([images, labels], indices, count, outputs, cursor)
        _sync(device)

    benchmark(call)


@pytest.mark.parametrize("device", DEVICES)
def test_pool_push_and_ready(benchmark, device):
    gen = torch.Generator(device=device).manual_seed(2)
    images = torch.randn(256, 3, 32, 32, device=device, generator=gen)
    labels = torch.randint(0, 10, (256,), device=device, generator=gen)
    logits = torch.randn(256, 10, device=device, generator=gen)
    state = sbkernels.SelectorState(1024, device=device)
    pool = sbkernels.SelectionPool(128)
    selection = sbkernels.select(logits, labels, state)

    def call():
        pool.push(selection, images, labels)
        for _batch in pool.ready_batches():
            pass
        _sync(device)

    benchmark(call)
