"""The scoring pass of the batch-level policies (keep, uniform with k, importance) and their state update.

One pass over the logits (:mod:`sbkernels.kernels.row_stats` on the Triton backend, the reference
otherwise) gives per row the loss, the importance score and the row's Philox uniform; then the rows a
policy may draw are fixed (SPEC section 5) and the state is advanced: ``step`` by one, the bad targets
and non-finite losses counted. These policies do not push into the loss history.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .. import reference
from ..kernels import launch_row_stats
from ..rows import advance_counters, row_validity, target_masks


class ScoredRows(NamedTuple):
    loss: Tensor  # (N,) float32: 0 for ignored rows, NaN for bad targets
    score: Tensor  # (N,) float32: ||softmax - onehot||_2 (zeros for losses input)
    u: Tensor  # (N,) float32: the row's Philox uniform tl.rand(seed, (step << 32) + i)
    valid: Tensor  # (N,) bool: rows the policy may select


def score_rows(
    logits: Tensor | None, targets: Tensor | None, losses: Tensor | None, meta: Tensor, *, ignore_index: int,
    row_offset: int, backend: str,
) -> ScoredRows:  # fmt: skip
    """Score every row, then advance the state (step + 1, error counts): the first half of every
    batch-level policy op."""
    if backend == "native":
        loss, score, u = torch.ops.sbkernels.row_stats_cpu(logits, targets, losses, meta, ignore_index, 0.0, row_offset)
    elif backend == "triton":
        loss, score, u = launch_row_stats(
            logits=logits, targets=targets, losses=losses, meta=meta, ignore_index=ignore_index, row_offset=row_offset
        )
    else:
        loss, score, u = reference.row_stats(logits, targets, losses, meta, ignore_index, row_offset=row_offset)
    if logits is not None:
        _, ignored, bad = target_masks(targets, logits.shape[1], ignore_index)
    else:
        ignored = bad = torch.zeros(loss.shape, dtype=torch.bool, device=loss.device)
    valid, nonfinite = row_validity(loss, ignored, bad)
    advance_counters(meta, pushed=0, nonfinite=nonfinite.sum(), bad_targets=bad.sum())
    return ScoredRows(loss, score, u, valid)
