"""What the benchmarks measure with: per-call medians, copy bandwidth, op / kernel / sync counts, memory,
and the run's description (device, commit)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode


# ----------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(
    fn,
    inputs: list[tuple],
    device: torch.device,
    reps: int,
    warmup: int = 3,
    budget: float | None = None,
    least: int = 3,
) -> float:
    """Median time of one call, cycling through ``inputs``; CUDA timed with events per call. With ``budget``
    (seconds): as many calls as fit in it after the warm-up, at least ``least`` and at most 100 * ``reps``."""
    start = time.perf_counter()
    for i in range(warmup):
        fn(*inputs[i % len(inputs)])
    sync(device)
    if budget is not None:
        per_call = (time.perf_counter() - start) / max(warmup, 1)
        reps = max(least, min(100 * reps, int(budget / per_call)))
    times = []
    for i in range(reps):
        args = inputs[i % len(inputs)]
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def graph_seconds(fn, args: tuple, reps: int = 50) -> float | None:
    """Median replay time of ``fn(*args)`` captured in a CUDA graph (None if capture fails)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(*args)
    except Exception as error:
        print(f"    graph capture failed: {type(error).__name__}: {str(error)[:120]}")
        return None
    return median_seconds(lambda: graph.replay(), [()], torch.device("cuda"), reps)


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large tensor copy, counting bytes read plus bytes written."""
    n = (1 << 28) if device.type == "cuda" else (1 << 26)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), [()], device, reps=20)
    return 2 * src.numel() * src.element_size() / seconds


# ------------------------------------------------------------------------------------- counting
class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def count_syncs(fn, args: tuple) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def count_kernels(fn, args: tuple) -> int:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(*args)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and e.name != "")


def count_ops(fn, args: tuple) -> int:
    counter = _OpCounter()
    with counter:
        fn(*args)
    return counter.ops


def extra_memory(fn, args: tuple) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn(*args)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


# ----------------------------------------------------------------------------------------- report
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"CPU {model} ({torch.get_num_threads()} threads)"


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def free_memory(device: torch.device) -> int:
    """Bytes the next allocation can take: free device memory on CUDA, MemAvailable on CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62  # unknown: try


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("SBKERNELS_COMMIT", "unknown")
