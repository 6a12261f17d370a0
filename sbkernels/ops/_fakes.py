"""Fake (meta) implementations of the C++ ops (``csrc/``): output shapes and dtypes only, for torch.compile."""

from __future__ import annotations

import torch

from ._registry import NAMESPACE


@torch.library.register_fake(f"{NAMESPACE}::gather_rows")
def _gather_rows_fake(sources, indices, count, outputs, cursor) -> None:
    torch._check(len(sources) == len(outputs), lambda: "gather_rows: one output per source")
    return None


@torch.library.register_fake(f"{NAMESPACE}::select_sb_cpu")
def _select_sb_cpu_fake(logits, targets, losses, flags, history, meta, *scalars):
    n = (logits if logits is not None else losses).shape[0]
    device = history.device
    return (
        torch.empty(n, dtype=torch.int64, device=device),
        torch.empty((), dtype=torch.int32, device=device),
        torch.empty(n, dtype=torch.float32, device=device),
        torch.empty(n, dtype=torch.float32, device=device),
    )


@torch.library.register_fake(f"{NAMESPACE}::sample_rows_cpu")
def _sample_rows_cpu_fake(logits, targets, losses, meta, policy, param, k, ignore_index, row_offset):
    n = (logits if logits is not None else losses).shape[0]
    device = meta.device
    indices = torch.empty(n, dtype=torch.int64, device=device)
    count = torch.empty((), dtype=torch.int32, device=device)
    return indices, count, *(torch.empty(n, dtype=torch.float32, device=device) for _ in range(3))


@torch.library.register_fake(f"{NAMESPACE}::residuals_cpu")
def _residuals_cpu_fake(logits, targets, ignore_index):
    n, num_classes = logits.shape
    return logits.new_empty((n, num_classes), dtype=torch.float32), logits.new_empty(n, dtype=torch.float32)


@torch.library.register_fake(f"{NAMESPACE}::row_stats_cpu")
def _row_stats_cpu_fake(logits, targets, losses, meta, ignore_index, label_smoothing, row_offset):
    n = (logits if logits is not None else losses).shape[0]
    return tuple(torch.empty(n, dtype=torch.float32, device=meta.device) for _ in range(3))


@torch.library.register_fake(f"{NAMESPACE}::token_losses_cpu")
def _token_losses_cpu_fake(logits, labels, shift, ignore_index, label_smoothing):
    batch, length, _ = logits.shape
    return logits.new_empty((batch, max(length - int(shift), 0)), dtype=torch.float32)


@torch.library.register_fake(f"{NAMESPACE}::tile_stats_cpu")
def _tile_stats_cpu_fake(logits, labels, column_offset, logit_sums):
    return logits.new_empty((3, logits.shape[0]), dtype=torch.float32)
