"""Per-token losses of language-model logits (B, T, V): the Triton body of ``sequence_losses``.

One program scores ``BLOCK_M`` tokens: token r of the flattened (B, T') grid is sequence ``r // T'``,
position ``r % T'``, read at ``b * stride_b + t * stride_t``, so any strides along B and T work without a
copy (a slice ``logits[:, :-1]`` of a bigger tensor, a padded buffer). Under the causal shift
(``OFFSET = 1``) position t is scored against label ``t + 1`` and T' = T - 1. Each token's loss is the
row loss of SPEC section 2 (online logsumexp over vocabulary chunks, label smoothing, ``-inf`` logits),
0 for ignored tokens and NaN for out-of-range labels; the per-sequence reduction is a few torch ops on the
(B, T') losses (:mod:`sbkernels.ops._sequence`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import cross_entropy_from_parts, launch, logsumexp_rows, row_blocks, target_classes


@triton.jit
def token_losses_kernel(
    logits_ptr, stride_b, stride_t, labels_ptr, stride_lb, stride_lt, loss_ptr, N, T_SCORED, C, OFFSET,
    ignore_index, label_smoothing, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_range = rows < N
    rows64 = rows.to(tl.int64)
    b = rows64 // T_SCORED
    t = rows64 % T_SCORED
    label = tl.load(labels_ptr + b * stride_lb + (t + OFFSET) * stride_lt, mask=in_range, other=ignore_index)
    label = label.to(tl.int64)
    ignored, bad, usable = target_classes(label, in_range, C, ignore_index)
    row_ptr = logits_ptr + b * stride_b + t * stride_t
    lse, x_sum = logsumexp_rows(row_ptr, in_range, C, BLOCK_M, BLOCK_C)
    x_t = tl.load(row_ptr + label, mask=usable, other=0.0).to(tl.float32)
    loss = cross_entropy_from_parts(lse, x_t, x_sum, C, label_smoothing)
    loss = tl.where(ignored, 0.0, tl.where(bad, float("nan"), loss))
    tl.store(loss_ptr + rows64, loss, mask=in_range)


def launch_token_losses(
    *, logits: torch.Tensor, labels: torch.Tensor, shift: bool, ignore_index: int, label_smoothing: float
) -> torch.Tensor:
    """(B, T') float32 token losses (T' = T - 1 with ``shift``), as ``token_losses_cpu`` natively."""
    batch, length, vocab = logits.shape
    offset = 1 if shift else 0
    scored = max(length - offset, 0)
    loss = torch.zeros(batch, scored, dtype=torch.float32, device=logits.device)
    n = batch * scored
    if n == 0:
        return loss
    config = row_blocks(n, vocab, from_logits=True)
    launch(
        token_losses_kernel, (triton.cdiv(n, config["BLOCK_M"]),), logits.device, logits,
        logits_ptr=logits, stride_b=logits.stride(0), stride_t=logits.stride(1), labels_ptr=labels,
        stride_lb=labels.stride(0), stride_lt=labels.stride(1), loss_ptr=loss, N=n, T_SCORED=scored, C=vocab,
        OFFSET=offset, ignore_index=ignore_index, label_smoothing=float(label_smoothing), **config,
    )  # fmt: skip
    return loss
