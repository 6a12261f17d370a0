"""Fused per-row statistics for the batch-level policies ("keep", "importance", "uniform" with k rows).

One pass over the logits computes, per row i, in float32 math:

- ``loss_i``: cross-entropy as in select_sb, label smoothing included (0 for ignored rows, NaN for bad
  targets),
- ``score_i = ||softmax(x_i) - onehot(t_i)||_2`` (Katharopoulos & Fleuret), from the same online softmax
  with sums over the non-target classes only, which has no cancellation when p_t is close to 1::

      ||p - e_t||^2 = (1 - p_t)^2 + sum_{c != t} p_c^2 = (o / s)^2 + o2 / s^2,
      o = sum_{c != t} exp(x_c - m),  o2 = sum_{c != t} exp(2 (x_c - m)),  s = sum_c exp(x_c - m)

- ``u_i = tl.rand(seed, (step << 32) + row_offset + i)``, the row's Philox uniform (the policies'
  randomness); under a process group ``row_offset = rank * N``, so every rank draws as its rows of the
  global batch would.

Given losses instead of logits it only loads them and draws u. The sampling that follows works on these
N-vectors with a few torch ops (sbkernels/ops/_sampling.py), identical for the kernel and the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    META_SEED,
    META_STEP,
    cross_entropy_from_parts,
    launch,
    logsumexp_rows,
    online_softmax_step,
    row_blocks,
    row_uniform,
    target_classes,
)


@triton.jit
def row_stats_kernel(
    logits_ptr, stride_logits, targets_ptr, stride_targets, losses_in_ptr, stride_losses, meta_ptr,
    loss_ptr, score_ptr, u_ptr, N, C, ignore_index, label_smoothing, row_offset,
    FROM_LOGITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_range = rows < N
    rows64 = rows.to(tl.int64)
    seed = tl.load(meta_ptr + META_SEED)
    step = tl.load(meta_ptr + META_STEP)
    if FROM_LOGITS:
        t = tl.load(targets_ptr + rows64 * stride_targets, mask=in_range, other=ignore_index).to(tl.int64)
        ignored, bad, usable = target_classes(t, in_range, C, ignore_index)
        row_ptr = logits_ptr + rows64 * stride_logits
        m = tl.full([BLOCK_M], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK_M], tl.float32)
        o = tl.zeros([BLOCK_M], tl.float32)
        o2 = tl.zeros([BLOCK_M], tl.float32)
        x_sum = tl.zeros([BLOCK_M], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            mask = in_range[:, None] & (cols < C)[None, :]
            x = tl.load(row_ptr[:, None] + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
            m, scale, e = online_softmax_step(m, x)
            e_other = tl.where(cols[None, :] == t[:, None], 0.0, e)
            s = s * scale + tl.sum(e, axis=1)
            o = o * scale + tl.sum(e_other, axis=1)
            o2 = o2 * scale * scale + tl.sum(e_other * e_other, axis=1)
            x_sum += tl.sum(tl.where(mask, x, 0.0), axis=1)
        lse = m + tl.log(s)
        x_t = tl.load(row_ptr + t, mask=usable, other=0.0).to(tl.float32)
        loss = cross_entropy_from_parts(lse, x_t, x_sum, C, label_smoothing)
        rest = o / s  # 1 - p_t without cancellation
        score = tl.sqrt(rest * rest + o2 / (s * s))
        loss = tl.where(ignored, 0.0, tl.where(bad, float("nan"), loss))
        score = tl.where(ignored, 0.0, tl.where(bad, float("nan"), score))
        tl.store(score_ptr + rows64, score, mask=in_range)
    else:
        loss = tl.load(losses_in_ptr + rows64 * stride_losses, mask=in_range, other=0.0).to(tl.float32)
    tl.store(loss_ptr + rows64, loss, mask=in_range)
    tl.store(u_ptr + rows64, row_uniform(seed, step, rows64 + row_offset), mask=in_range)


def launch_row_stats(
    *, logits: torch.Tensor | None, targets: torch.Tensor | None, losses: torch.Tensor | None, meta: torch.Tensor,
    ignore_index: int, label_smoothing: float = 0.0, row_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(loss, score, u) per row; score is NaN-free only for logits input (zeros for losses input)."""
    from_logits = logits is not None
    source = logits if from_logits else losses
    n = source.shape[0]
    num_classes = logits.shape[1] if from_logits else 1
    loss = torch.empty(n, dtype=torch.float32, device=source.device)
    score = torch.zeros(n, dtype=torch.float32, device=source.device) if not from_logits else torch.empty_like(loss)
    u = torch.empty_like(loss)
    config = row_blocks(n, num_classes, from_logits)
    launch(
        row_stats_kernel, (triton.cdiv(n, config["BLOCK_M"]),), source.device, meta,
        logits_ptr=logits, stride_logits=logits.stride(0) if from_logits else 0,
        targets_ptr=targets, stride_targets=targets.stride(0) if from_logits else 0,
        losses_in_ptr=losses, stride_losses=0 if from_logits else losses.stride(0),
        meta_ptr=meta, loss_ptr=loss, score_ptr=score, u_ptr=u, N=n, C=num_classes, ignore_index=ignore_index,
        label_smoothing=float(label_smoothing), row_offset=row_offset, FROM_LOGITS=from_logits, **config,
    )  # fmt: skip
    return loss, score, u


@triton.jit
def residual_kernel(
    logits_ptr, stride_logits, targets_ptr, stride_targets, r_ptr, loss_ptr, N, C, ignore_index,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Bias gradients ``r_i = softmax(x_i) - onehot(t_i)`` (0 for ignored / bad rows) and losses.

    Pass 1 is the online softmax (m, s); pass 2 re-reads the logits and writes r row-major (N, C).
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_range = rows < N
    rows64 = rows.to(tl.int64)
    t = tl.load(targets_ptr + rows64 * stride_targets, mask=in_range, other=ignore_index).to(tl.int64)
    _, _, usable = target_classes(t, in_range, C, ignore_index)
    row_ptr = logits_ptr + rows64 * stride_logits
    lse, _ = logsumexp_rows(row_ptr, in_range, C, BLOCK_M, BLOCK_C)
    x_t = tl.load(row_ptr + t, mask=usable, other=0.0).to(tl.float32)
    tl.store(loss_ptr + rows64, tl.where(usable, lse - x_t, 0.0), mask=in_range)
    out_ptr = r_ptr + rows64 * C
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = in_range[:, None] & (cols < C)[None, :]
        x = tl.load(row_ptr[:, None] + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        r = tl.exp(x - lse[:, None]) - tl.where(cols[None, :] == t[:, None], 1.0, 0.0)
        tl.store(out_ptr[:, None] + cols[None, :], tl.where(usable[:, None], r, 0.0), mask=mask)


def launch_residual(
    *, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, loss): r = softmax - onehot as (N, C) float32, loss (N,) float32."""
    n, num_classes = logits.shape
    r = torch.empty(n, num_classes, dtype=torch.float32, device=logits.device)
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    config = row_blocks(n, num_classes, from_logits=True)
    launch(
        residual_kernel, (triton.cdiv(n, config["BLOCK_M"]),), logits.device, logits,
        logits_ptr=logits, stride_logits=logits.stride(0), targets_ptr=targets, stride_targets=targets.stride(0),
        r_ptr=r, loss_ptr=loss, N=n, C=num_classes, ignore_index=ignore_index, **config,
    )  # fmt: skip
    return r, loss
