"""What owning a backward batch costs: the device copy ``take_batch`` makes, next to the backward pass it feeds.

    python -m benchmarks.owned_batches                 # CPU: batch 32, 3x32x32 channels_last, ResNet-18
    python -m benchmarks.owned_batches --batch 256     # CUDA default

A backward batch is copied out of the pool's reused buffers (SPEC section 10: a batch stays valid however
long it is kept). Reported, medians over the repetitions of one run: the copy of one batch (images,
labels, sample ids), a forward + backward of the same batch, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import sbkernels

from .step import resnet18


def _median_ms(fn, device: torch.device, reps: int) -> float:
    times = []
    for _ in range(reps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[2:])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch = args.batch or (256 if device.type == "cuda" else 32)
    model = resnet18().to(device).to(memory_format=torch.channels_last)
    pool = sbkernels.SelectionPool(batch)
    x = torch.randn(2 * batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (2 * batch,), device=device)
    ids = torch.arange(2 * batch, device=device)
    every = sbkernels.select_uniform(torch.rand(2 * batch, device=device), None,
                                     sbkernels.SelectorState(8, device=device), rate=1.0)  # fmt: skip
    views = tuple(t[:batch] for t in (x, y, ids))

    def copy() -> None:
        tuple(v.clone() for v in views)

    def backward() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(views[0]), views[1]).backward()

    pool.push(every, x, y, ids)
    next(iter(pool.ready_batches()))  # warm the pool's own path once
    copy_ms, backward_ms = _median_ms(copy, device, args.reps), _median_ms(backward, device, args.reps)
    result = {"device": str(device), "batch": batch, "copy_ms": copy_ms, "forward_backward_ms": backward_ms,
              "copy_share": copy_ms / backward_ms}  # fmt: skip
    print(f"{device} batch {batch}: copy {copy_ms:.3f} ms, forward+backward {backward_ms:.1f} ms, "
          f"copy = {100 * result['copy_share']:.4f}% of the backward step")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
