"""Fake (meta) implementations of the C++ ops (``csrc/``): output shapes and dtypes only, for torch.compile.

The dispatcher also runs them when one argument is a real ``meta`` tensor and the rest are CPU tensors (the
Meta key outranks CPU). Each first checks that its tensors share one device, so that such a call is refused
instead of returning uninitialized outputs and leaving the state alone."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._registry import NAMESPACE


def _one_device(op: str, **tensors: torch.Tensor | Sequence[torch.Tensor] | None) -> torch.device:
    """The device every given tensor of ``op`` is on; ValueError naming each one's when they differ."""
    found: dict[str, torch.device] = {}
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor):
            found[name] = value.device
        elif value is not None:
            found.update({f"{name}[{i}]": t.device for i, t in enumerate(value)})
    if len(set(found.values())) > 1:
        where = ", ".join(f"{name} on {device}" for name, device in found.items())
        raise ValueError(f"{op}: every tensor must be on one device, got {where}: move them to the same device")
    return next(iter(found.values()))


@torch.library.register_fake(f"{NAMESPACE}::gather_rows")
def _gather_rows_fake(sources, indices, count, outputs, cursor) -> None:
    _one_device("gather_rows", sources=sources, indices=indices, count=count, outputs=outputs, cursor=cursor)
    torch._check(len(sources) == len(outputs), lambda: "gather_rows: one output per source")
    return None


@torch.library.register_fake(f"{NAMESPACE}::select_sb_cpu")
def _select_sb_cpu_fake(logits, targets, losses, flags, history, meta, *scalars):
    device = _one_device(
        "select_sb_cpu", logits=logits, targets=targets, losses=losses, flags=flags, history=history, meta=meta
    )
    n = (logits if logits is not None else losses).shape[0]
    return (
        torch.empty(n, dtype=torch.int64, device=device),
        torch.empty((), dtype=torch.int32, device=device),
        torch.empty(n, dtype=torch.float32, device=device),
        torch.empty(n, dtype=torch.float32, device=device),
    )


@torch.library.register_fake(f"{NAMESPACE}::sample_rows_cpu")
def _sample_rows_cpu_fake(logits, targets, losses, meta, policy, param, k, ignore_index, row_offset):
    device = _one_device("sample_rows_cpu", logits=logits, targets=targets, losses=losses, meta=meta)
    n = (logits if logits is not None else losses).shape[0]
    indices = torch.empty(n, dtype=torch.int64, device=device)
    count = torch.empty((), dtype=torch.int32, device=device)
    return indices, count, *(torch.empty(n, dtype=torch.float32, device=device) for _ in range(3))


@torch.library.register_fake(f"{NAMESPACE}::residuals_cpu")
def _residuals_cpu_fake(logits, targets, ignore_index):
    _one_device("residuals_cpu", logits=logits, targets=targets)
    n, num_classes = logits.shape
    return logits.new_empty((n, num_classes), dtype=torch.float32), logits.new_empty(n, dtype=torch.float32)


@torch.library.register_fake(f"{NAMESPACE}::row_stats_cpu")
def _row_stats_cpu_fake(logits, targets, losses, meta, ignore_index, label_smoothing, row_offset):
    device = _one_device("row_stats_cpu", logits=logits, targets=targets, losses=losses, meta=meta)
    n = (logits if logits is not None else losses).shape[0]
    return tuple(torch.empty(n, dtype=torch.float32, device=device) for _ in range(3))


@torch.library.register_fake(f"{NAMESPACE}::token_losses_cpu")
def _token_losses_cpu_fake(logits, labels, shift, ignore_index, label_smoothing):
    _one_device("token_losses_cpu", logits=logits, labels=labels)
    batch, length, _ = logits.shape
    return logits.new_empty((batch, max(length - int(shift), 0)), dtype=torch.float32)


@torch.library.register_fake(f"{NAMESPACE}::tile_stats_cpu")
def _tile_stats_cpu_fake(logits, labels, column_offset, logit_sums):
    _one_device("tile_stats_cpu", logits=logits, labels=labels)
    return logits.new_empty((3, logits.shape[0]), dtype=torch.float32)
