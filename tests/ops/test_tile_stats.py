"""The native tile statistics (``tile_stats_cpu``, the body of the linear form on CPU) against the
reference's :func:`sbkernels.reference.softmax_stats`, and tiles combined against whole rows.

Odd widths exercise every vector path (whole 2W blocks, one W vector, a partial one); offsets and labels
put each row's label before, inside and after the tile, ignored or far out of range.
"""

from __future__ import annotations

import pytest
import torch

from sbkernels import reference
from sbkernels.ops import _sequence


def _tile(rows, columns, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, columns, generator=gen) * 4).to(dtype)
    labels = torch.randint(-3 * columns, 3 * columns, (rows,), generator=gen)
    labels[::5] = -100
    labels[1::7] = 2**62
    labels[2::11] = -(2**63)
    return logits, labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("rows", "columns"), [(1, 1), (3, 2), (9, 17), (33, 31), (64, 65), (5, 1000)])
def test_native_matches_reference(cpu_isa, dtype, rows, columns):
    logits, labels = _tile(rows, columns, dtype, seed=rows * 100 + columns)
    logits[0, : columns // 2] = float("-inf")  # a partly masked row
    if rows > 2:
        logits[2] = float("-inf")  # a row with nothing: logsumexp -inf, sum -inf
    for offset in (0, 1, columns, 2 * columns):
        for logit_sums in (True, False):
            got = torch.ops.sbkernels.tile_stats_cpu(logits, labels, offset, logit_sums)
            want = reference.softmax_stats(logits, labels, offset, logit_sums)
            assert got.shape == (3, rows) and got.dtype == torch.float32
            scale = 1e-6 * (1 + columns * float(logits.float().abs().nan_to_num(0, 0, 0).max()))
            torch.testing.assert_close(got, want, rtol=1e-6, atol=scale, equal_nan=True)


def test_rows_may_be_strided_and_labels_int32():
    logits, labels = _tile(12, 40, torch.float32, seed=1)
    wide = torch.randn(12, 100)
    wide[:, 30:70] = logits
    got = torch.ops.sbkernels.tile_stats_cpu(wide[:, 30:70], labels.clamp(-100, 200).int(), 30, True)
    want = reference.softmax_stats(logits, labels.clamp(-100, 200), 30, True)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend_stats", ["native", "reference"])
def test_tiles_combine_to_the_whole_rows(backend_stats):
    """Cutting the columns into tiles and combining (logaddexp, sums) gives the whole rows' statistics."""
    logits, labels = _tile(21, 77, torch.float32, seed=2)
    labels = labels.remainder(77)
    tile_stats = {"native": torch.ops.sbkernels.tile_stats_cpu, "reference": reference.softmax_stats}[backend_stats]
    combined = None
    for first in range(0, 77, 10):
        stats = tile_stats(logits[:, first : first + 10], labels, first, True)
        combined = stats if combined is None else _sequence._combine(combined, stats)
    torch.testing.assert_close(combined, reference.softmax_stats(logits, labels), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, y: torch.ops.sbkernels.tile_stats_cpu(x[0], y, 0, True), "logits must be 2-D"),
        (lambda x, y: torch.ops.sbkernels.tile_stats_cpu(x, y[:-1], 0, True), "targets must have shape"),
        (lambda x, y: torch.ops.sbkernels.tile_stats_cpu(x, y.float(), 0, True), "int64 or int32"),
        (lambda x, y: torch.ops.sbkernels.tile_stats_cpu(x.t(), y[:1].repeat(9), 0, True), "unit stride"),
        (lambda x, y: torch.ops.sbkernels.tile_stats_cpu(x[:, :0], y, 0, True), "1 <= C"),
        (lambda x, y: torch.ops.sbkernels.tile_stats_cpu(x, y, -1, True), "column_offset"),
        (lambda x, y: torch.ops.sbkernels.tile_stats_cpu(x.double(), y, 0, True), "float32, bfloat16"),
    ],
)
def test_direct_calls_are_checked(call, message):
    x, y = torch.randn(4, 9), torch.randint(0, 9, (4,))
    with pytest.raises(RuntimeError, match=message):
        call(x, y)
