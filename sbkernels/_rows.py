"""Per-row tensor helpers shared by every backend and policy: static shapes, device-side counts, no sync.

- :func:`target_masks`: ignored rows and rows with out-of-range targets; :func:`row_flags` /
  :func:`flag_masks` carry them with losses that travel between ranks;
- :func:`row_validity`: which rows a policy may select (SPEC section 5) and which losses are non-finite;
- :func:`compact`: order-preserving stream compaction into the ``Selection`` layout;
- :func:`advance_counters`: the end of every call: ``step += 1`` and the error counts added;
- :func:`integer_beta`: when ``pct ** beta`` is computed by repeated multiplication.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .slots import (
    MAX_INTEGER_BETA,
    META_BAD_TARGETS,
    META_NONFINITE,
    META_PUSHED,
    META_STEP,
    ROW_BAD_TARGET,
    ROW_IGNORED,
)


def target_masks(targets: Tensor, num_classes: int, ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(t, ignored, bad)``: targets as int64, rows equal to ignore_index, rows outside [0, C) otherwise."""
    t = targets.long()
    ignored = t == ignore_index
    return t, ignored, ~ignored & ((t < 0) | (t >= num_classes))


def row_flags(ignored: Tensor, bad: Tensor) -> Tensor:
    """One int8 per row: ROW_VALID, ROW_IGNORED or ROW_BAD_TARGET."""
    return ignored.to(torch.int8) * ROW_IGNORED + bad.to(torch.int8) * ROW_BAD_TARGET


def flag_masks(flags: Tensor) -> tuple[Tensor, Tensor]:
    """``(ignored, bad)`` from :func:`row_flags`."""
    return flags == ROW_IGNORED, flags == ROW_BAD_TARGET


def row_validity(loss: Tensor, ignored: Tensor, bad: Tensor) -> tuple[Tensor, Tensor]:
    """``(valid, nonfinite)``: valid rows are not ignored, have a target in range and a finite loss."""
    usable = ~ignored & ~bad
    finite = torch.isfinite(loss)
    return usable & finite, usable & ~finite


def compact(selected: Tensor) -> tuple[Tensor, Tensor]:
    """Order-preserving stream compaction: (indices with -1 padding, 0-d int32 count)."""
    n = selected.numel()
    chosen = selected.long()
    slot = torch.where(selected, torch.cumsum(chosen, 0) - 1, n)  # unselected rows go to a spill slot
    out = torch.full((n + 1,), -1, dtype=torch.int64, device=selected.device)
    out.scatter_(0, slot, torch.arange(n, dtype=torch.int64, device=selected.device))
    return out[:n].clone(), chosen.sum().to(torch.int32)


def advance_counters(meta: Tensor, *, pushed: Tensor | int, nonfinite: Tensor, bad_targets: Tensor) -> None:
    """The end of every call, on the device: ``step += 1`` and the counts (0-d tensors) added.

    In-place adds on views of ``meta``: no host value is written into the device tensor (``meta[i] = x``
    with a Python ``x`` would be a blocking host-to-device copy on CUDA).
    """
    meta[META_PUSHED].add_(pushed)
    meta[META_STEP].add_(1)
    meta[META_NONFINITE].add_(nonfinite)
    meta[META_BAD_TARGETS].add_(bad_targets)


def integer_beta(beta: float) -> int:
    """beta as an int when it is a whole number in [1, MAX_INTEGER_BETA], else 0.

    Whole powers are computed by repeated multiplication, which is exact IEEE arithmetic everywhere, so the
    kernel and the reference agree bit for bit; other powers go through exp2/log2.
    """
    return int(beta) if float(beta).is_integer() and 1 <= beta <= MAX_INTEGER_BETA else 0
