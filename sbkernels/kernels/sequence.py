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

from . import interpreting
from .common import (
    cross_entropy_from_parts,
    launch,
    logsumexp_rows,
    online_softmax_step,
    row_blocks,
    target_classes,
)


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


@triton.jit
def linear_token_losses_kernel(
    hidden_ptr, stride_hm, weight_ptr, stride_wv, bias_ptr, labels_ptr, stride_l, loss_ptr, N, V, H,
    ignore_index, label_smoothing, softcap, logit_scale, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, DOT_IN_FP32: tl.constexpr,
):  # fmt: skip
    """Token losses straight from hidden states (N, H) and the LM head (V, H): for ``BLOCK_M`` tokens, each
    vocabulary tile's logits are formed by ``tl.dot`` over H, accumulated in float32, and folded into an
    online logsumexp, the target logit and the logit sum; no logit leaves the program.

    ``DOT_IN_FP32`` upcasts the bf16/fp16 tiles before the dot: triton 3.9's interpreter multiplies bf16
    operands as raw bits, so the interpreted tests run the float32 dot; compiled kernels dot bf16/fp16
    directly (tensor cores) and float32 with ``input_precision="ieee"``.

    A capped or scaled head (``sbkernels.reference.head_logits``): each tile is multiplied by ``logit_scale``
    and, with ``HAS_SOFTCAP``, capped as ``softcap * tanh(x / softcap)``, tanh from one exp (1 - 2 / (e^2y + 1):
    +-1 at +-inf, no overflow to NaN), before the columns past V are masked to -inf."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_range = rows < N
    rows64 = rows.to(tl.int64)
    label = tl.load(labels_ptr + rows64 * stride_l, mask=in_range, other=ignore_index).to(tl.int64)
    ignored, bad, _ = target_classes(label, in_range, V, ignore_index)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_M], tl.float32)
    x_t = tl.zeros([BLOCK_M], tl.float32)
    x_sum = tl.zeros([BLOCK_M], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        in_vocab = cols < V
        logits = tl.zeros([BLOCK_M, BLOCK_V], tl.float32)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            in_width = ks < H
            h = tl.load(hidden_ptr + rows64[:, None] * stride_hm + ks[None, :],
                        mask=in_range[:, None] & in_width[None, :], other=0.0)  # fmt: skip
            w = tl.load(weight_ptr + cols.to(tl.int64)[:, None] * stride_wv + ks[None, :],
                        mask=in_vocab[:, None] & in_width[None, :], other=0.0)  # fmt: skip
            if DOT_IN_FP32:
                h, w = h.to(tl.float32), w.to(tl.float32)
            logits = tl.dot(h, tl.trans(w), logits, input_precision="ieee")
        if HAS_BIAS:
            logits += tl.load(bias_ptr + cols, mask=in_vocab, other=0.0).to(tl.float32)[None, :]
        logits = logits * logit_scale
        if HAS_SOFTCAP:
            logits = softcap * (1.0 - 2.0 / (tl.exp(2.0 * logits / softcap) + 1.0))
        valid = in_range[:, None] & in_vocab[None, :]
        logits = tl.where(valid, logits, float("-inf"))
        m, scale, e = online_softmax_step(m, logits)
        s = s * scale + tl.sum(e, axis=1)
        x_t += tl.sum(tl.where(cols[None, :] == label[:, None], logits, 0.0), axis=1)
        x_sum += tl.sum(tl.where(valid, logits, 0.0), axis=1)
    lse = m + tl.log(s)
    loss = cross_entropy_from_parts(lse, x_t, x_sum, V, label_smoothing)
    loss = tl.where(ignored, 0.0, tl.where(bad, float("nan"), loss))
    tl.store(loss_ptr + rows64, loss, mask=in_range)


def linear_blocks(n: int, vocab: int, width: int) -> dict[str, int]:
    """Tiles of :func:`linear_token_losses_kernel`: 16-row minimum for ``tl.dot``; a 64 x 64 float32
    accumulator, K chunks of 16 and 8 warps compile for sm_80 and sm_90 in at most 192 registers with no
    stack in every dtype (64 x 128 with K chunks of 32 needed 255 registers and spilled)."""
    block_m = max(16, min(64, triton.next_power_of_2(n)))
    block_v = max(16, min(64, triton.next_power_of_2(vocab)))
    return {"BLOCK_M": block_m, "BLOCK_V": block_v, "BLOCK_K": 16, "num_warps": 8}


def launch_linear_token_losses(
    *, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
    ignore_index: int, label_smoothing: float, softcap: float | None = None, logit_scale: float = 1.0,
) -> torch.Tensor:  # fmt: skip
    """(N,) float32 token losses of ``hidden`` (N, H) against ``labels`` (N,) through the LM head, fused."""
    n, width = hidden.shape
    vocab = weight.shape[0]
    loss = torch.empty(n, dtype=torch.float32, device=hidden.device)
    if n == 0:
        return loss
    # The kernel reads rows of hidden and weight at a row stride and bias at unit stride: a strided bias
    # (b[::2]) would read the wrong entries, an expanded one (stride 0) past its buffer.
    hidden, weight = hidden.contiguous(), weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    config = linear_blocks(n, vocab, width)
    launch(
        linear_token_losses_kernel, (triton.cdiv(n, config["BLOCK_M"]),), hidden.device, hidden,
        hidden_ptr=hidden, stride_hm=hidden.stride(0), weight_ptr=weight, stride_wv=weight.stride(0),
        bias_ptr=bias if bias is not None else weight, labels_ptr=labels, stride_l=labels.stride(0), loss_ptr=loss,
        N=n, V=vocab, H=width, ignore_index=ignore_index, label_smoothing=float(label_smoothing),
        softcap=float(softcap or 1.0), logit_scale=float(logit_scale), HAS_BIAS=bias is not None,
        HAS_SOFTCAP=softcap is not None, DOT_IN_FP32=interpreting(), **config,
    )  # fmt: skip
    return loss
