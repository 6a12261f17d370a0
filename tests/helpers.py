"""Shared test helpers: the devices and backends a session runs on, random inputs, the selection-equality
checks. Tests import them from here (``conftest.py`` only sets the session up)."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator

import pytest
import torch

from sbkernels import reference
from sbkernels.kernels import interpreting
from tests.tools.sync_detector import mark_host, note_wait

HAS_CUDA = torch.cuda.is_available()
#: The native kernels' instruction sets (csrc/cpu/isa_cpu.h): each row kernel is compiled once per set.
ISAS = ["avx512", "avx2", "default"]


def kernel_devices() -> list[str]:
    """Devices on which the Triton path can run in this session."""
    return ["cpu"] if interpreting() else ["cuda"]


def backend_devices() -> list[tuple[str, str]]:
    """(backend, device) pairs every semantic test runs on."""
    pairs = [("reference", "cpu"), ("native", "cpu"), *[("triton", d) for d in kernel_devices()]]
    if HAS_CUDA:
        pairs.append(("reference", "cuda"))
    return pairs


requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def random_logits(n: int, num_classes: int, dtype: torch.dtype, device: str, gen: torch.Generator) -> torch.Tensor:
    scale = float(torch.empty(()).uniform_(0.5, 6.0, generator=gen))
    return (torch.randn(n, num_classes, generator=gen) * scale).to(dtype).to(device)


def random_targets(n: int, num_classes: int, ignore_frac: float, gen: torch.Generator) -> torch.Tensor:
    t = torch.randint(0, num_classes, (n,), generator=gen)
    t[torch.rand(n, generator=gen) < ignore_frac] = -100
    return t


def loss_tolerance(logits: torch.Tensor) -> float:
    """float32 rounding of lse - x_t: a few ulps of the largest magnitude involved."""
    return 4e-6 * (1.0 + float(logits.float().abs().max()))


def uniforms(state_meta_before: torch.Tensor, n: int) -> torch.Tensor:
    return reference.philox_uniform(state_meta_before[1].cpu(), state_meta_before[2].cpu(), n)


def assert_same_selection(got, want, u: torch.Tensor, exact: bool) -> None:
    """Indices/count/prob agree; with ``exact=False`` rows whose u lies within float32 rounding of p may differ."""
    got_idx, want_idx = got.indices.cpu(), want.indices.cpu()
    if exact:
        assert torch.equal(got.prob.cpu(), want.prob.cpu())
        assert torch.equal(got_idx, want_idx)
        assert int(got.count) == int(want.count)
        return
    torch.testing.assert_close(got.prob.cpu(), want.prob.cpu(), rtol=4e-6, atol=1e-7)
    n = got_idx.numel()

    def mask(idx, count):
        m = torch.zeros(n, dtype=torch.bool)
        m[idx[: int(count)]] = True
        assert torch.all(idx[int(count) :] == -1)
        return m

    differ = mask(got_idx, got.count) ^ mask(want_idx, want.count)
    close = (u - want.prob.cpu()).abs() <= 4e-6 * want.prob.cpu().abs() + 1e-7
    assert not torch.any(differ & ~close), f"rows {torch.nonzero(differ & ~close).flatten().tolist()} differ"


class LateReadback:
    """A pool readback that completes only after ``polls`` more queries: the GPU running behind the host.

    CPU work is done when it is queued, so copying the cursor now reads what the GPU's stream-ordered copy
    would. The host buffer is marked as host memory for the sync detector, as pinned memory is on a GPU.
    """

    def __init__(self, cursor: torch.Tensor, polls: int) -> None:
        self.host = mark_host(torch.empty_like(cursor))
        self.host.copy_(cursor, non_blocking=True)
        self.polls = polls

    def done(self) -> bool:
        self.polls -= 1
        return self.polls < 0

    def wait(self) -> None:
        note_wait("LateReadback.wait")
        self.polls = -1


class LateReadbacks:
    """``SelectionPool(readback=LateReadbacks())``: the CUDA pool's asynchronous path on the CPU, each count
    arriving after 0 to ``max_polls`` queries, so batches surface late and capacity is judged on bounds."""

    def __init__(self, max_polls: int = 3, seed: int = 0) -> None:
        self.max_polls = max_polls
        self.random = random.Random(seed)

    def __call__(self, cursor: torch.Tensor) -> LateReadback:
        return LateReadback(cursor, self.random.randint(0, self.max_polls))


@contextlib.contextmanager
def held_by_another_thread(guard) -> Iterator[None]:
    """While inside: another thread holds ``guard`` (an ``ExclusiveUse``), as if inside a call on its object,
    so that a call from this thread meets a deterministic overlap."""
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with guard("held"):
            inside.set()
            release.wait(10)

    other = threading.Thread(target=hold)
    other.start()
    inside.wait(10)
    try:
        yield
    finally:
        release.set()
        other.join(10)
