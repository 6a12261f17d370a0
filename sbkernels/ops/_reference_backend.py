"""The executable reference (:mod:`sbkernels.reference`) behind the keyword signatures of the kernel table."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from .._rows import flag_masks


def select_sb(
    *, logits: Tensor | None, targets: Tensor | None, losses: Tensor | None, flags: Tensor | None, history: Tensor,
    meta: Tensor, beta: float, floor: float, prime: int, ignore_index: int, label_smoothing: float, fixed_prob: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    if logits is not None:
        assert targets is not None
        loss, ignored, bad = reference.cross_entropy(logits, targets, ignore_index, label_smoothing)
    else:
        assert losses is not None
        loss = losses.to(torch.float32, copy=True)  # an op's output must not alias its input
        if flags is not None:
            ignored, bad = flag_masks(flags)
        else:
            ignored = bad = torch.zeros(loss.shape, dtype=torch.bool, device=loss.device)
    return reference.select_sb(loss, ignored, bad, history, meta, beta, floor, prime, fixed_prob)


def row_stats(
    *, logits: Tensor | None, targets: Tensor | None, losses: Tensor | None, meta: Tensor, ignore_index: int,
    label_smoothing: float = 0.0, row_offset: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    return reference.row_stats(logits, targets, losses, meta, ignore_index, label_smoothing, row_offset)


def residuals(*, logits: Tensor, targets: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    return reference.residuals(logits, targets, ignore_index)


def row_losses(
    *, logits: Tensor, targets: Tensor, meta: Tensor, ignore_index: int, label_smoothing: float
) -> tuple[Tensor, Tensor, Tensor]:
    del meta  # the reference's cross-entropy draws no uniforms
    return reference.cross_entropy(logits, targets, ignore_index, label_smoothing)


def token_losses(*, logits: Tensor, labels: Tensor, shift: bool, ignore_index: int, label_smoothing: float) -> Tensor:
    return reference.token_losses(logits, labels, shift, ignore_index, label_smoothing)


def tile_stats(*, logits: Tensor, labels: Tensor, column_offset: int, logit_sums: bool) -> Tensor:
    return reference.softmax_stats(logits, labels, column_offset, logit_sums)
