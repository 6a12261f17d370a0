"""Per-sequence losses of language models (SPEC section 9): the bodies of ``sequence_losses`` and
``linear_sequence_losses`` around the backend's per-token kernel.

The token kernel reads the (B, T, V) logits once (Triton, native C++ or the reference; strides along B
and T are read in place) and writes (B, T') float32 token losses; the reduction to B sequence losses is
:func:`sbkernels.reference.reduce_sequences`, a few torch ops on that small tensor. No host sync.

The linear form never holds the (B, T, V) logits. Natively (and in the reference) it takes ``block_rows``
tokens at a time, forms their logits with one matrix product against the LM head (in the hidden states'
dtype, as the model would) and scores them with the token kernel: the memory beyond the inputs and outputs
is ``block_rows * V`` elements, whatever B and T. On Triton one kernel forms each vocabulary tile in
registers (:func:`fused_linear_sequence_losses`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..reference import reduce_sequences
from ._rows import row_flags

TokenKernel = Callable[..., Tensor]


def _scored_labels(labels: Tensor, shift: bool, scored: int) -> Tensor:
    offset = 1 if shift else 0
    return labels[:, offset : offset + scored]


def _position_targets(labels: Tensor, shift: bool, ignore_index: int) -> Tensor:
    """(B, T) target of every position: with the shift, position t's is label t + 1 and the last position
    has none (``ignore_index``), so all B * T positions form one flat grid of rows."""
    if not shift:
        return labels
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), ignore_index)], dim=1)


def sequence_losses(
    token_losses: TokenKernel, *, logits: Tensor, labels: Tensor, shift: bool, ignore_index: int, reduction: str,
    label_smoothing: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(loss, flags)`` per sequence: (B,) float32 and :func:`~._rows.row_flags` (ignored: no valid token)."""
    token_loss = token_losses(
        logits=logits, labels=labels, shift=shift, ignore_index=ignore_index, label_smoothing=label_smoothing
    )
    scored_labels = _scored_labels(labels, shift, token_loss.shape[1])
    loss, ignored, bad = reduce_sequences(token_loss, scored_labels, logits.shape[2], ignore_index, reduction)
    return loss, row_flags(ignored, bad)


def fused_linear_sequence_losses(
    linear_token_losses: Callable[..., Tensor], *, hidden: Tensor, weight: Tensor, bias: Tensor | None,
    labels: Tensor, shift: bool, ignore_index: int, reduction: str, label_smoothing: float, block_rows: int,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """As :func:`linear_sequence_losses`, with a kernel that forms each vocabulary tile's logits itself
    (Triton: ``tl.dot`` tiles in registers), so not even a block of logits exists; ``block_rows`` is unused."""
    del block_rows
    batch, length, width = hidden.shape
    vocab = weight.shape[0]
    targets = _position_targets(labels, shift, ignore_index)
    token_loss = linear_token_losses(
        hidden=hidden.reshape(batch * length, width), weight=weight, bias=bias, labels=targets.reshape(-1),
        ignore_index=ignore_index, label_smoothing=label_smoothing,
    )  # fmt: skip
    scored = length - 1 if shift else length
    token_loss = token_loss.view(batch, length)[:, :scored]
    loss, ignored, bad = reduce_sequences(
        token_loss, _scored_labels(labels, shift, scored), vocab, ignore_index, reduction
    )
    return loss, row_flags(ignored, bad)


def linear_sequence_losses(
    token_losses: TokenKernel, *, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, shift: bool,
    ignore_index: int, reduction: str, label_smoothing: float, block_rows: int,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """As :func:`sequence_losses` with ``logits = hidden @ weight.T + bias``, ``block_rows`` tokens at a time.

    Every position is scored against its own label after the shift (the last position against
    ``ignore_index``), so the (B * T) tokens form one flat grid of rows whatever the sequence boundaries.
    """
    batch, length, width = hidden.shape
    vocab = weight.shape[0]
    targets = _position_targets(labels, shift, ignore_index)
    rows, flat_targets = hidden.reshape(batch * length, width), targets.reshape(1, batch * length)
    token_loss = torch.empty(batch * length, dtype=torch.float32, device=hidden.device)
    # One buffer for every block's logits: a fresh output per product made the CPU BLAS keep and re-pack
    # buffers, doubling the time and adding several blocks of memory (benchmarks/results/lm-cpu.md).
    buffer = hidden.new_empty((min(block_rows, batch * length), vocab))
    for start in range(0, batch * length, block_rows):
        stop = min(start + block_rows, batch * length)
        block = buffer[: stop - start]
        if bias is None:
            torch.mm(rows[start:stop], weight.t(), out=block)  # (rows, V) in hidden's dtype, as the model's
        else:
            torch.addmm(bias, rows[start:stop], weight.t(), out=block)
        token_loss[start:stop] = token_losses(
            logits=block.view(1, stop - start, vocab), labels=flat_targets[:, start:stop], shift=False,
            ignore_index=ignore_index, label_smoothing=label_smoothing,
        ).view(-1)  # fmt: skip
    scored = length - 1 if shift else length
    token_loss = token_loss.view(batch, length)[:, :scored]
    loss, ignored, bad = reduce_sequences(
        token_loss, _scored_labels(labels, shift, scored), vocab, ignore_index, reduction
    )
    return loss, row_flags(ignored, bad)
