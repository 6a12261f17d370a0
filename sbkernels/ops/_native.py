"""The native C++ CPU kernels (``csrc/cpu/``) behind the keyword signatures of :data:`~sbkernels.ops.backends.KERNELS`.

Each C++ op takes its arguments by position (its schema is in ``csrc/sbkernels.cpp``); these adapters give
them the same keyword arguments as the Triton launchers and the reference, so the table can swap them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._rows import integer_beta
from . import _scored


def select_sb(
    *, logits: Tensor | None, targets: Tensor | None, losses: Tensor | None, flags: Tensor | None, history: Tensor,
    meta: Tensor, beta: float, floor: float, prime: int, ignore_index: int, label_smoothing: float, fixed_prob: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    return torch.ops.sbkernels.select_sb_cpu(
        logits, targets, losses, flags, history, meta, beta, floor, prime, ignore_index, label_smoothing,
        fixed_prob, integer_beta(beta),
    )  # fmt: skip


def row_stats(
    *, logits: Tensor | None, targets: Tensor | None, losses: Tensor | None, meta: Tensor, ignore_index: int,
    label_smoothing: float = 0.0, row_offset: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    return torch.ops.sbkernels.row_stats_cpu(logits, targets, losses, meta, ignore_index, label_smoothing, row_offset)


def residuals(*, logits: Tensor, targets: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    return torch.ops.sbkernels.residuals_cpu(logits, targets, ignore_index)


def sample_rows(
    *, logits: Tensor | None, targets: Tensor | None, losses: Tensor | None, flags: Tensor | None, meta: Tensor,
    policy: str, param: float, k: int, ignore_index: int, row_offset: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """A whole batch-level policy op in one C++ call (``csrc/cpu/sample_cpu.cpp``); losses with flags (whole
    sequences, some ignored) take the native row pass and the torch draw of the other backends."""
    if flags is not None:
        return _scored.sample_rows(
            row_stats, logits=logits, targets=targets, losses=losses, flags=flags, meta=meta, policy=policy,
            param=param, k=k, ignore_index=ignore_index, row_offset=row_offset,
        )  # fmt: skip
    return torch.ops.sbkernels.sample_rows_cpu(
        logits, targets, losses, meta, policy, param, k, ignore_index, row_offset
    )


def token_losses(*, logits: Tensor, labels: Tensor, shift: bool, ignore_index: int, label_smoothing: float) -> Tensor:
    return torch.ops.sbkernels.token_losses_cpu(logits, labels, shift, ignore_index, label_smoothing)


def tile_stats(*, logits: Tensor, labels: Tensor, column_offset: int, logit_sums: bool) -> Tensor:
    return torch.ops.sbkernels.tile_stats_cpu(logits, labels, column_offset, logit_sums)
