"""gather_rows against torch.index_select, through every implementation of the op.

- "cpu": the C++ CPU kernel.
- "cuda-emulated": the CUDA kernel's own source and its binding's parameter code, run on the host
  (tests/tools/cuda_emulation), so CI covers the CUDA code path's indexing without a GPU.
- "cuda": the real CUDA kernel, where a GPU is present.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch

from sbkernels import gather_rows, new_cursor
from sbkernels.slots import CURSOR_INVALID, CURSOR_OFFSET, CURSOR_OVERFLOW
from tests.tools import cuda_emulation

IMPLS = ["cpu", "cuda-emulated", *(["cuda"] if torch.cuda.is_available() else [])]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool]
TRAILING = [(), (1,), (7,), (3, 28, 28), (2, 3, 5)]


def emulated_gather(grid: int = 0) -> Callable[..., None]:
    reason = cuda_emulation.load()
    if reason is not None:
        pytest.skip(reason)
    return functools.partial(torch.ops.sbkernels_emulated.gather_rows, grid=grid)


@pytest.fixture(params=IMPLS)
def impl(request) -> tuple[str, Callable[..., None]]:
    """(device of the tensors, the gather_rows to call) for one implementation."""
    if request.param == "cuda-emulated":
        return "cpu", emulated_gather()
    return request.param, gather_rows


def random_tensor(shape, dtype, device, gen):
    if dtype == torch.bool:
        return (torch.rand(shape, generator=gen) < 0.5).to(device)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype).to(device)
    return torch.randint(0, 250, shape, generator=gen).to(dtype).to(device)


def poisoned_like(t: torch.Tensor, rows: int) -> torch.Tensor:
    out = torch.empty((rows, *t.shape[1:]), dtype=t.dtype, device=t.device)
    if t.dtype == torch.bool:
        return out.fill_(True)
    return out.fill_(77)


def selection(n, gen, frac, device):
    chosen = torch.nonzero(torch.rand(n, generator=gen) < frac).flatten()
    indices = torch.full((n,), -1, dtype=torch.int64)
    indices[: chosen.numel()] = chosen
    return indices.to(device), torch.tensor(chosen.numel(), dtype=torch.int32, device=device), chosen.to(device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("trailing", TRAILING, ids=str)
def test_gather_matches_index_select(impl, dtype, trailing):
    device, gather = impl
    gen = torch.Generator().manual_seed(len(trailing) * 31 + DTYPES.index(dtype))
    n, capacity = 53, 80
    sources = [random_tensor((n, *trailing), dtype, device, gen), random_tensor((n,), torch.int64, device, gen)]
    outputs = [poisoned_like(s, capacity) for s in sources]
    out_copies = [o.clone() for o in outputs]
    cursor = new_cursor(device)
    cursor[CURSOR_OFFSET] = 5
    indices, count, chosen = selection(n, gen, 0.4, device)
    gather(sources, indices, count, outputs, cursor)
    k = chosen.numel()
    for src, out, before in zip(sources, outputs, out_copies, strict=True):
        assert torch.equal(out[5 : 5 + k], torch.index_select(src, 0, chosen))
        assert torch.equal(out[:5], before[:5]) and torch.equal(out[5 + k :], before[5 + k :])  # nothing else written
    assert cursor.tolist()[:3] == [5 + k, 0, 0]


def test_non_contiguous_sources(impl):
    device, gather = impl
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(40, 3, 28, 28, generator=gen).to(device)
    sources = [
        base[::2],  # strided rows, contiguous inside
        base.permute(0, 2, 3, 1),  # non-contiguous inside the row
        base.to(memory_format=torch.channels_last),  # same shape, channels_last strides
        base[:, 1, :, ::3],  # sliced trailing dims
        torch.randn(20, 9, generator=gen).to(device).t()[:, ::2],  # transposed: stride(0) == 1
    ]
    sources = [s[:5] for s in sources]
    outputs = [poisoned_like(s, 6) for s in sources]
    cursor = new_cursor(device)
    indices = torch.tensor([4, 0, 2, 2, -1], device=device)
    gather(sources, indices, torch.tensor(4, device=device), outputs, cursor)
    for src, out in zip(sources, outputs, strict=True):
        assert torch.equal(out[:4], src[[4, 0, 2, 2]])
    assert int(cursor[CURSOR_OFFSET]) == 4


def test_count_zero_and_count_n_and_overflow(impl):
    device, gather = impl
    gen = torch.Generator().manual_seed(2)
    src = random_tensor((10, 4), torch.float32, device, gen)
    out = poisoned_like(src, 12)
    cursor = new_cursor(device)
    all_rows = torch.arange(10, device=device)
    gather([src], all_rows, torch.tensor(0, device=device), [out], cursor)
    assert cursor.tolist()[:3] == [0, 0, 0] and torch.all(out == 77)
    gather([src], all_rows, torch.tensor(10, device=device), [out], cursor)
    assert torch.equal(out[:10], src) and int(cursor[CURSOR_OFFSET]) == 10
    gather([src], all_rows.flip(0), torch.tensor(5, dtype=torch.int64, device=device), [out], cursor)
    # Only 2 of 5 fit: rows 9 and 8 land, 3 rows are counted as overflow and never written.
    assert torch.equal(out[10:], src[[9, 8]])
    assert cursor.tolist()[:3] == [12, 3, 0]
    gather([src], all_rows, torch.tensor(4, device=device), [out], cursor)
    assert cursor.tolist()[:3] == [12, 7, 0]


def test_invalid_indices_are_zero_filled_and_counted(impl):
    device, gather = impl
    src = torch.arange(1, 13, dtype=torch.float32, device=device).reshape(6, 2)
    out = torch.full((4, 2), 9.0, device=device)
    cursor = new_cursor(device)
    indices = torch.tensor([1, 6, -3, 0], dtype=torch.int32, device=device)
    gather([src], indices, torch.tensor(4, device=device), [out], cursor)
    assert out.tolist() == [[3.0, 4.0], [0.0, 0.0], [0.0, 0.0], [1.0, 2.0]]
    assert cursor.tolist()[:3] == [4, 0, 2] and int(cursor[CURSOR_INVALID]) == 2


@pytest.mark.parametrize("trailing", [(), (3,), (2, 5)])
def test_sources_with_zero_rows(impl, trailing):
    """N = 0 (an empty batch): count 0 is a no-op; indices into it are all invalid, zero-filled and counted.
    The CUDA binding used to read src[0] to size a row and threw; every implementation now agrees."""
    device, gather = impl
    src = torch.empty((0, *trailing), device=device)
    labels = torch.empty(0, dtype=torch.int64, device=device)
    out = torch.full((4, *trailing), 9.0, device=device)
    out_labels = torch.full((4,), 7, dtype=torch.int64, device=device)
    cursor = new_cursor(device)
    gather([src, labels], torch.empty(0, dtype=torch.int64, device=device), torch.tensor(0, device=device),
           [out, out_labels], cursor)  # fmt: skip
    assert cursor.tolist()[:3] == [0, 0, 0] and torch.all(out == 9.0)
    gather([src, labels], torch.tensor([0, 2], device=device), torch.tensor(2, device=device), [out, out_labels],
           cursor)  # fmt: skip
    assert cursor.tolist()[:3] == [2, 0, 2]
    assert torch.all(out[:2] == 0) and torch.all(out[2:] == 9.0) and out_labels.tolist() == [0, 0, 7, 7]


def test_more_tensors_than_one_launch_holds(impl):
    device, gather = impl
    gen = torch.Generator().manual_seed(3)
    sources = [random_tensor((9, i + 1), torch.float32, device, gen) for i in range(11)]
    outputs = [poisoned_like(s, 9) for s in sources]
    cursor = new_cursor(device)
    indices, count, chosen = selection(9, gen, 0.6, device)
    gather(sources, indices, count, outputs, cursor)
    for src, out in zip(sources, outputs, strict=True):
        assert torch.equal(out[: chosen.numel()], src[chosen])
    assert int(cursor[CURSOR_OFFSET]) == chosen.numel() and int(cursor[CURSOR_OVERFLOW]) == 0


def test_invalid_indices_counted_once_when_tensors_span_launches(impl):
    device, gather = impl
    gen = torch.Generator().manual_seed(5)
    sources = [random_tensor((6, 2), torch.float32, device, gen) for _ in range(11)]  # two CUDA launches
    outputs = [poisoned_like(s, 5) for s in sources]
    cursor = new_cursor(device)
    indices = torch.tensor([3, -1, 0, 6, 5], device=device)
    gather(sources, indices, torch.tensor(5, device=device), outputs, cursor)
    for src, out in zip(sources, outputs, strict=True):
        assert torch.equal(out[[0, 2, 4]], src[[3, 0, 5]]) and torch.all(out[[1, 3]] == 0)
    assert cursor.tolist()[:3] == [5, 0, 2]


def copy_unit_cases(n: int, gen: torch.Generator) -> dict[str, tuple[torch.Tensor, list[int]]]:
    """Sources that take each branch of the CUDA kernel: name -> (source, [vec_bytes, contiguous, units, chunks])."""
    floats = torch.randn(n * 4 + 1, generator=gen)
    return {
        "16B rows": (torch.randn(n, 4, generator=gen), [16, 1, 1, 1]),
        "8B rows": (torch.randn(n, 2, generator=gen), [8, 1, 1, 1]),
        "12B rows": (torch.randn(n, 3, generator=gen), [4, 1, 3, 1]),
        "6B rows": (torch.randn(n, 3, generator=gen).half(), [2, 1, 3, 1]),
        "5B rows": (torch.randint(0, 255, (n, 5), generator=gen, dtype=torch.uint8), [1, 1, 5, 1]),
        "misaligned start": (floats[1:].view(n, 4), [4, 1, 4, 1]),
        "row stride 24B": (torch.randn(n, 6, generator=gen)[:, :4], [8, 1, 2, 1]),
        "2 chunks of 16B": (torch.randn(n, 5000, generator=gen), [16, 1, 1250, 2]),
        "3 chunks of 1B": (torch.randint(0, 255, (n, 2049), generator=gen, dtype=torch.uint8), [1, 1, 2049, 3]),
        "strided, 3 chunks": (torch.randn(n, 3, 28, 28, generator=gen).permute(0, 2, 3, 1), [4, 0, 2352, 3]),
        "strided fp16": (torch.randn(n, 7, 3, generator=gen).half().transpose(1, 2), [2, 0, 21, 1]),
    }


@pytest.mark.parametrize("case", list(copy_unit_cases(1, torch.Generator())), ids=str)
def test_every_copy_unit_and_chunking(impl, case):
    device, gather = impl
    n = 9
    src, plan = copy_unit_cases(n, torch.Generator().manual_seed(6))[case]
    src = src.to(device)
    out = poisoned_like(src, 12)
    if device == "cpu" and gather is not gather_rows:  # the emulation also reports the binding's choice
        assert torch.ops.sbkernels_emulated.copy_plan(src, out) == plan
    cursor = new_cursor(device)
    cursor[CURSOR_OFFSET] = 2
    picked = [8, -1, 0, 4, 9, 4, 1]  # -1 and 9 are out of range: zero rows
    gather([src], torch.tensor(picked, device=device), torch.tensor(7, device=device), [out], cursor)
    for slot, row in enumerate(picked, start=2):
        expected = src[row] if 0 <= row < n else torch.zeros_like(src[0])
        assert torch.equal(out[slot], expected), (case, slot)
    assert torch.equal(out[:2], poisoned_like(src, 2)) and torch.equal(out[9:], poisoned_like(src, 3))
    assert cursor.tolist()[:3] == [9, 0, 2]


@pytest.mark.parametrize("grid", [1, 2, 5, 0], ids=lambda g: f"grid{g or '=binding'}")
def test_emulated_kernel_any_grid_size(grid):
    """The grid-stride loop covers every (row, chunk) whatever the number of blocks; the cursor moves once."""
    gather = emulated_gather(grid)
    gen = torch.Generator().manual_seed(7)
    sources = [torch.randn(30, 1500, generator=gen), torch.arange(30), torch.randn(30, 2, 5, generator=gen).mT]
    outputs = [poisoned_like(s, 40) for s in sources]
    cursor = new_cursor("cpu")
    indices, count, chosen = selection(30, gen, 0.7, "cpu")
    for _ in range(2):  # the second call appends after the first and overflows
        gather(sources, indices, count, outputs, cursor)
    k = chosen.numel()
    fits = min(k, 40 - k)
    for src, out in zip(sources, outputs, strict=True):
        assert torch.equal(out[:k], src[chosen]) and torch.equal(out[k : k + fits], src[chosen[:fits]])
    assert cursor.tolist() == [k + fits, k - fits, 0, 0]  # the ticket slot is reset after every launch


def test_bad_arguments_raise():
    src, out, cursor = torch.zeros(4, 3), torch.zeros(5, 3), new_cursor("cpu")
    idx, count = torch.arange(4), torch.tensor(2)
    cases = [
        (([src], idx, count, [out, out], cursor), "sources but"),
        (([src], idx, count, [torch.zeros(5, 4)], cursor), "rows have shape"),
        (([src], idx, count, [torch.zeros(5, 3, dtype=torch.float64)], cursor), "Double"),
        (([src], idx, count, [torch.zeros(3, 5).t()], cursor), "contiguous"),
        (([src], idx.float(), count, [out], cursor), "indices must be int64"),
        (([src], idx, count.reshape(1), [out], cursor), "count must be a 0-d"),
        (([src], idx, count, [out], torch.zeros(3, dtype=torch.int64)), "cursor must be"),
        (([src, torch.zeros(5, 3)], idx, count, [out, out], cursor), "same leading dim"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            gather_rows(*args)


def test_opcheck_gather_rows():
    gen = torch.Generator().manual_seed(4)
    for device in ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]:
        sources = [random_tensor((8, 3), torch.float32, device, gen), random_tensor((8,), torch.int64, device, gen)]
        outputs = [torch.zeros(10, 3, device=device), torch.zeros(10, dtype=torch.int64, device=device)]
        indices, count, _ = selection(8, gen, 0.5, device)
        torch.library.opcheck(
            torch.ops.sbkernels.gather_rows.default, (sources, indices, count, outputs, new_cursor(device))
        )
