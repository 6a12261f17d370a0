"""Per-sequence losses of language models (SPEC section 9): the bodies of ``sequence_losses`` and
``linear_sequence_losses`` around the backend's per-token kernel.

The token kernel reads the (B, T, V) logits once (Triton, native C++ or the reference; strides along B
and T are read in place) and writes (B, T') float32 token losses; the reduction to B sequence losses is
:func:`sbkernels.reference.reduce_sequences`, a few torch ops on that small tensor. No host sync.

The linear form never holds the (B, T, V) logits. Natively (and in the reference) it forms them one
(rows, columns) tile at a time with a matrix product against a slice of the LM head, in the hidden states'
dtype as the model would, and reduces each tile to three numbers per token (the backend's
``tile_stats``: logsumexp, the label's logit, the logit sum); tiles combine exactly, by logaddexp and sums
(:func:`sbkernels.reference.softmax_stats`). The memory beyond the inputs and outputs is one tile of
``tile_bytes``, whatever B, T and V. On Triton one kernel forms each vocabulary tile in
registers (:func:`fused_linear_sequence_losses`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._rows import row_flags
from ..reference import head_logits, loss_from_stats, reduce_sequences

TokenKernel = Callable[..., Tensor]

#: Bytes of logits one tile of the linear form holds (its extra memory, whatever B, T and V, besides the
#: BLAS's own scratch of a few MB). Larger tiles re-read the inputs less (:func:`tile_shape`); on this
#: project's CPU, tiles of 2 to 8 Mi logits all kept the form within the time of one (B * T, V) matrix
#: product (benchmarks/results/lm-cpu.md).
TILE_BYTES = 8 * 2**20


def _position_targets(labels: Tensor, shift: bool, ignore_index: int) -> Tensor:
    """(B, T) target of every position: with the shift, position t's is label t + 1 and the last position
    has none (``ignore_index``), so all B * T positions form one flat grid of rows."""
    if not shift:
        return labels
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), ignore_index)], dim=1)


def sequence_losses(
    token_losses: TokenKernel, *, logits: Tensor, labels: Tensor, shift: bool, ignore_index: int, reduction: str,
    label_smoothing: float, softcap: float | None = None, logit_scale: float = 1.0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(loss, flags)`` per sequence: (B,) float32 and :func:`~sbkernels._rows.row_flags` (ignored: no valid token).
    A capped or scaled head's logits are transformed first, into a float32 copy (the logits route already
    holds the logits; the linear forms transform each tile, or in registers)."""
    logits = head_logits(logits, softcap, logit_scale)
    token_loss = token_losses(
        logits=logits, labels=labels, shift=shift, ignore_index=ignore_index, label_smoothing=label_smoothing
    )
    return _sequences(token_loss, labels, shift, logits.shape[2], ignore_index, reduction)


def fused_linear_sequence_losses(
    linear_token_losses: Callable[..., Tensor], *, hidden: Tensor, weight: Tensor, bias: Tensor | None,
    labels: Tensor, shift: bool, ignore_index: int, reduction: str, label_smoothing: float, tile_bytes: int,
    softcap: float | None = None, logit_scale: float = 1.0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """As :func:`linear_sequence_losses`, with a kernel that forms each vocabulary tile's logits itself
    (Triton: ``tl.dot`` tiles in registers), so not even a tile of logits is stored; ``tile_bytes`` is
    unused."""
    del tile_bytes
    batch, length, width = hidden.shape
    targets = _position_targets(labels, shift, ignore_index)
    token_loss = linear_token_losses(
        hidden=hidden.reshape(batch * length, width), weight=weight, bias=bias, labels=targets.reshape(-1),
        ignore_index=ignore_index, label_smoothing=label_smoothing, softcap=softcap, logit_scale=logit_scale,
    )  # fmt: skip
    return _sequences(_scored(token_loss.view(batch, length), shift), labels, shift, weight.shape[0], ignore_index,
                      reduction)  # fmt: skip


def tile_shape(tokens: int, vocab: int, elements: int) -> tuple[int, int]:
    """``(rows, columns)`` of the linear form's tiles: at most ``elements`` logits, as square as the
    logits allow. Each tile reads ``rows * H`` hidden values and ``columns * H`` head values, so the form
    reads the inputs ``(1 / rows + 1 / columns) * B * T * V * H`` times in all, least when rows = columns."""
    if tokens * vocab <= elements:
        return tokens, vocab
    rows = min(tokens, max(math.isqrt(elements), elements // vocab))
    return rows, min(vocab, elements // rows)


def linear_sequence_losses(
    tile_stats: Callable[..., Tensor], *, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,
    shift: bool, ignore_index: int, reduction: str, label_smoothing: float, tile_bytes: int,
    softcap: float | None = None, logit_scale: float = 1.0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """As :func:`sequence_losses` with ``logits = hidden @ weight.T + bias``, formed one tile at a time.

    Every position is scored against its own label after the shift (the last position against
    ``ignore_index``), so the (B * T) tokens form one flat grid of rows whatever the sequence boundaries.
    """
    batch, length, width = hidden.shape
    vocab, tokens = weight.shape[0], batch * length
    targets = _position_targets(labels, shift, ignore_index).reshape(tokens)
    rows, columns = tile_shape(tokens, vocab, max(1, tile_bytes // hidden.element_size()))
    # One buffer for every tile: a fresh output per product made the CPU BLAS keep and re-pack buffers,
    # doubling the time and adding several tiles of memory (benchmarks/results/lm-cpu.md).
    buffer = hidden.new_empty(rows * columns)
    token_loss = torch.empty(tokens, dtype=torch.float32, device=hidden.device)
    hidden_rows = hidden.reshape(tokens, width)
    for start in range(0, tokens, rows):
        stop = min(start + rows, tokens)
        stats = _row_stats(
            tile_stats, hidden_rows[start:stop], weight, bias, targets[start:stop], buffer, columns,
            logit_sums=label_smoothing > 0, softcap=softcap, logit_scale=logit_scale,
        )  # fmt: skip
        token_loss[start:stop] = loss_from_stats(
            stats[0], stats[1], stats[2], targets[start:stop], vocab, ignore_index, label_smoothing
        )[0]
    return _sequences(_scored(token_loss.view(batch, length), shift), labels, shift, vocab, ignore_index, reduction)


def _row_stats(
    tile_stats: Callable[..., Tensor], hidden_rows: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
    buffer: Tensor, columns: int, logit_sums: bool, softcap: float | None, logit_scale: float,
) -> Tensor:  # fmt: skip
    """The (3, rows) statistics of these rows' logits over the whole vocabulary, ``columns`` at a time (a
    capped or scaled head's transform applied to each tile in place: elementwise, small next to the product)."""
    rows, vocab = hidden_rows.shape[0], weight.shape[0]
    stats = None
    for first in range(0, vocab, columns):
        last = min(first + columns, vocab)
        tile = buffer[: rows * (last - first)].view(rows, last - first)
        head = weight[first:last].t()
        if bias is None:
            torch.mm(hidden_rows, head, out=tile)  # in hidden's dtype, as the model's logits
        else:
            torch.addmm(bias[first:last], hidden_rows, head, out=tile)
        if logit_scale != 1.0:
            tile.mul_(logit_scale)
        if softcap is not None:  # in the tile's dtype, as the model caps its logits
            tile.div_(softcap).tanh_().mul_(softcap)
        tile_stat = tile_stats(logits=tile, labels=targets, column_offset=first, logit_sums=logit_sums)
        stats = tile_stat if stats is None else _combine(stats, tile_stat)
    assert stats is not None  # vocab >= 1
    return stats


def _combine(stats: Tensor, tile: Tensor) -> Tensor:
    """The (3, N) statistics of two column ranges from each one's: logsumexps by logaddexp, the rest by sums."""
    return torch.cat([torch.logaddexp(stats[:1], tile[:1]), stats[1:] + tile[1:]])


def _scored(position_loss: Tensor, shift: bool) -> Tensor:
    """The (B, T') scored token losses of the linear forms' (B, T) losses of every position: under the
    shift the last position has no label."""
    return position_loss[:, :-1] if shift else position_loss


def _sequences(
    token_loss: Tensor, labels: Tensor, shift: bool, vocab: int, ignore_index: int, reduction: str
) -> tuple[Tensor, Tensor]:
    """``(loss, flags)`` per sequence from its (B, T') scored token losses and the (B, T) labels."""
    offset = 1 if shift else 0
    scored_labels = labels[:, offset : offset + token_loss.shape[1]]
    loss, ignored, bad = reduce_sequences(token_loss, scored_labels, vocab, ignore_index, reduction)
    return loss, row_flags(ignored, bad)
