"""Fused Triton kernel for policy "sb": loss -> percentile -> probability -> Philox draw -> compaction.

One launch does the whole call. Each program handles ``BLOCK_M`` rows:

1. cross-entropy by a chunked online softmax over C (or the given losses), in float32 math::

       m_new = max(m, max_c x_c);  s = s * exp(m - m_new) + sum_c exp(x_c - m_new);  lse = m + log(s)

2. ``pct = #{h < loss} / n_hist`` against the history snapshot (read-only during this phase),
3. ``p = max(floor, pct ** beta)`` (1 while pushed < prime) or a fixed p (policy "uniform"),
   ``u = tl.rand(seed, (step << 32) + row)``,
4. a per-row flag word (valid / selected / non-finite / bad target) written into ``indices`` as scratch.

Each program then takes a ticket with one atomic on ``meta[TICKET]`` that also adds its count of valid
losses in the high 32 bits. The program that draws the last ticket knows every other program has finished
ranking, so it alone runs the epilogue: an order-preserving scan over the flags that writes the compacted
indices in place, pushes the valid losses into the ring, writes ``count``, advances ``pushed`` and
``step`` and resets the ticket. Nothing is read back to the host; the grid depends only on shapes, so the
launch replays in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._rows import integer_beta
from .common import (
    MAX_COUNTER,
    META_BAD_TARGETS,
    META_NONFINITE,
    META_PUSHED,
    META_SEED,
    META_STEP,
    META_TICKET,
    ROW_BAD_TARGET,
    ROW_IGNORED,
    TILE,
    cross_entropy_from_parts,
    launch,
    logsumexp_rows,
    row_blocks,
    row_uniform,
    target_classes,
)

# Flag bits stored per row in the indices buffer between the main phase and the epilogue.
_FLAG_VALID = tl.constexpr(1)
_FLAG_SELECTED = tl.constexpr(2)
_FLAG_NONFINITE = tl.constexpr(4)
_FLAG_BAD = tl.constexpr(8)

_BLOCK_SCAN = 1024


@triton.jit
def cross_entropy_rows(
    logits_ptr, stride_logits, targets_ptr, stride_targets, rows64, in_range, C,
    ignore_index, label_smoothing, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``(loss, ignored, bad)`` per row, as ``F.cross_entropy(reduction="none")`` in float32 math.

    ``-inf`` logits follow SPEC section 2: a ``-inf`` non-target logit adds nothing when eps = 0 (the
    smoothing term, whose mean would be -inf, is not formed at all), a ``-inf`` target logit gives +inf,
    and with eps > 0 any ``-inf`` logit gives +inf through the mean.
    """
    t = tl.load(targets_ptr + rows64 * stride_targets, mask=in_range, other=ignore_index).to(tl.int64)
    ignored, bad, usable = target_classes(t, in_range, C, ignore_index)
    row_ptr = logits_ptr + rows64 * stride_logits  # int64 offsets: N * C may exceed 2**31
    lse, x_sum = logsumexp_rows(row_ptr, in_range, C, BLOCK_M, BLOCK_C)
    x_target = tl.load(row_ptr + t, mask=usable, other=0.0).to(tl.float32)
    loss = cross_entropy_from_parts(lse, x_target, x_sum, C, label_smoothing)
    loss = tl.where(ignored, 0.0, loss)
    loss = tl.where(bad, float("nan"), loss)
    return loss, ignored, bad


@triton.jit
def _epilogue(
    history_ptr, meta_ptr, loss_ptr, indices_ptr, count_ptr, N, R, pushed, step, total_valid,
    BLOCK_SCAN: tl.constexpr,
):  # fmt: skip
    first_push = total_valid - R  # of more than R valid losses only the last R land
    n_selected = pushed * 0  # int64 scalars
    n_valid = pushed * 0
    n_nonfinite = pushed * 0
    n_bad = pushed * 0
    for s0 in range(0, N, BLOCK_SCAN):
        offs = s0 + tl.arange(0, BLOCK_SCAN)
        in_range = offs < N
        flags = tl.load(indices_ptr + offs, mask=in_range, other=0)
        # The compacted writes below land at positions < s0 + BLOCK_SCAN, some inside this block: every
        # thread must have read its flags first.
        tl.debug_barrier()
        sel = ((flags & _FLAG_SELECTED) != 0).to(tl.int64)
        val = ((flags & _FLAG_VALID) != 0).to(tl.int64)
        slot = n_selected + tl.cumsum(sel, axis=0) - sel
        tl.store(indices_ptr + slot, offs.to(tl.int64), mask=sel != 0)
        rank = n_valid + tl.cumsum(val, axis=0) - val
        push = (val != 0) & (rank >= first_push)
        losses = tl.load(loss_ptr + offs, mask=push, other=0.0)
        tl.store(history_ptr + (pushed + rank) % R, losses, mask=push)
        n_selected += tl.sum(sel, axis=0)
        n_valid += tl.sum(val, axis=0)
        n_nonfinite += tl.sum(((flags & _FLAG_NONFINITE) != 0).to(tl.int64), axis=0)
        n_bad += tl.sum(((flags & _FLAG_BAD) != 0).to(tl.int64), axis=0)
    for s0 in range(n_selected, N, BLOCK_SCAN):
        offs = s0 + tl.arange(0, BLOCK_SCAN)
        tl.store(indices_ptr + offs, tl.full([BLOCK_SCAN], -1, tl.int64), mask=offs < N)

    tl.store(count_ptr, n_selected.to(tl.int32))
    tl.store(meta_ptr + META_PUSHED, pushed + total_valid)
    tl.store(meta_ptr + META_STEP, step + 1)
    tl.store(meta_ptr + META_NONFINITE, tl.load(meta_ptr + META_NONFINITE) + n_nonfinite)
    tl.store(meta_ptr + META_BAD_TARGETS, tl.load(meta_ptr + META_BAD_TARGETS) + n_bad)
    tl.store(meta_ptr + META_TICKET, 0)


@triton.jit
def select_sb_kernel(
    logits_ptr, stride_logits, targets_ptr, stride_targets, losses_in_ptr, stride_losses, flags_ptr,
    history_ptr, meta_ptr, loss_ptr, prob_ptr, indices_ptr, count_ptr,
    N, C, R, beta, beta_int, floor, prime, ignore_index, label_smoothing, fixed_prob,
    FROM_LOGITS: tl.constexpr, HAS_FLAGS: tl.constexpr, FIXED_PROB: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_SCAN: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_range = rows < N
    rows64 = rows.to(tl.int64)
    # A counter no run could reach (a state written by hand) is clamped, so the ring index
    # (pushed + rank) % R stays in [0, R): the device cannot raise without a host sync (SPEC section 11).
    pushed = tl.minimum(tl.maximum(tl.load(meta_ptr + META_PUSHED), 0), MAX_COUNTER)
    seed = tl.load(meta_ptr + META_SEED)
    step = tl.load(meta_ptr + META_STEP)

    if FROM_LOGITS:
        loss, ignored, bad = cross_entropy_rows(
            logits_ptr, stride_logits, targets_ptr, stride_targets, rows64, in_range, C,
            ignore_index, label_smoothing, BLOCK_M, BLOCK_C,
        )  # fmt: skip
    else:
        loss = tl.load(losses_in_ptr + rows64 * stride_losses, mask=in_range, other=0.0).to(tl.float32)
        if HAS_FLAGS:  # losses gathered from the ranks of a process group carry their rows' flags
            flag = tl.load(flags_ptr + rows64, mask=in_range, other=0)
            ignored = flag == ROW_IGNORED
            bad = flag == ROW_BAD_TARGET
        else:
            ignored = rows < 0
            bad = rows < 0
    finite = tl.abs(loss) < float("inf")  # False for NaN too
    valid = in_range & ~ignored & ~bad & finite
    nonfinite = in_range & ~ignored & ~bad & ~finite

    if FIXED_PROB:  # policy "uniform": loss-blind, every valid row with the same probability
        p = tl.zeros([BLOCK_M], tl.float32) + fixed_prob
    else:
        # Percentile against the snapshot: nothing writes the history until the last program's epilogue.
        n_hist = tl.minimum(pushed, R)
        below = tl.zeros([BLOCK_M], tl.int32)
        for h0 in range(0, n_hist, BLOCK_H):
            h_offs = h0 + tl.arange(0, BLOCK_H)
            h = tl.load(history_ptr + h_offs, mask=h_offs < n_hist, other=float("inf"))
            below += tl.sum((h[None, :] < loss[:, None]).to(tl.int32), axis=1)
        below_f = below.to(tl.float32)
        # div_rn: IEEE division on the GPU as on the CPU, so pct agrees bit for bit with the reference.
        pct = tl.math.div_rn(below_f, below_f * 0.0 + tl.maximum(n_hist, 1).to(tl.float32))
        pct = tl.where(n_hist > 0, pct, 1.0)

        if beta_int > 0:
            p = pct
            for _ in range(1, beta_int):
                p = p * pct
        else:
            p = tl.exp2(beta * tl.log2(pct))
        p = tl.maximum(p, floor)
        p = tl.where(pushed < prime, 1.0, p)
    p = tl.where(valid, p, 0.0)
    u = row_uniform(seed, step, rows64)
    selected = valid & (u < p)

    flags = (
        valid.to(tl.int64) * _FLAG_VALID
        + selected.to(tl.int64) * _FLAG_SELECTED
        + nonfinite.to(tl.int64) * _FLAG_NONFINITE
        + bad.to(tl.int64) * _FLAG_BAD
    )
    tl.store(indices_ptr + rows64, flags, mask=in_range)
    tl.store(loss_ptr + rows64, loss, mask=in_range)
    tl.store(prob_ptr + rows64, p, mask=in_range)

    # All threads' stores above are ordered before the release of the ticket (acq_rel, GPU scope).
    tl.debug_barrier()
    block_valid = tl.sum(valid.to(tl.int64), axis=0)
    ticket = tl.atomic_add(meta_ptr + META_TICKET, (block_valid << 32) + 1, sem="acq_rel")
    if ticket % (1 << 32) == tl.num_programs(0) - 1:
        total_valid = (ticket >> 32) + block_valid
        _epilogue(
            history_ptr, meta_ptr, loss_ptr, indices_ptr, count_ptr, N, R, pushed, step, total_valid,
            BLOCK_SCAN,
        )  # fmt: skip


def launch_config(n: int, num_classes: int, history_size: int, from_logits: bool) -> dict[str, int]:
    """Block sizes and warps of :func:`select_sb_kernel`: :func:`row_blocks` plus the history and scan blocks."""
    config = row_blocks(n, num_classes, from_logits)
    config["BLOCK_H"] = min(max(16, TILE // config["BLOCK_M"]), triton.next_power_of_2(history_size))
    config["BLOCK_SCAN"] = min(_BLOCK_SCAN, triton.next_power_of_2(n))
    return config


def launch_select_sb(
    *,
    logits: torch.Tensor | None,
    targets: torch.Tensor | None,
    losses: torch.Tensor | None,
    flags: torch.Tensor | None = None,
    history: torch.Tensor,
    meta: torch.Tensor,
    beta: float,
    floor: float,
    prime: int,
    ignore_index: int,
    label_smoothing: float,
    fixed_prob: float = -1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Allocate the outputs and launch :func:`select_sb_kernel` once. Inputs are validated by the caller.

    ``fixed_prob >= 0`` replaces the percentile rule by that constant probability (policy "uniform").
    """
    from_logits = logits is not None
    source = logits if from_logits else losses
    n = source.shape[0]
    num_classes = logits.shape[1] if from_logits else 1
    device = source.device
    indices = torch.empty(n, dtype=torch.int64, device=device)
    count = torch.empty((), dtype=torch.int32, device=device)
    loss = torch.empty(n, dtype=torch.float32, device=device)
    prob = torch.empty(n, dtype=torch.float32, device=device)
    config = launch_config(n, num_classes, history.numel(), from_logits)
    flags = flags.contiguous() if flags is not None else None  # read at unit stride (N int8: a copy costs nothing)
    launch(
        select_sb_kernel, (triton.cdiv(n, config["BLOCK_M"]),), device, history,
        logits_ptr=logits, stride_logits=logits.stride(0) if from_logits else 0,
        targets_ptr=targets, stride_targets=targets.stride(0) if from_logits else 0,
        losses_in_ptr=losses, stride_losses=0 if from_logits else losses.stride(0), flags_ptr=flags,
        history_ptr=history, meta_ptr=meta, loss_ptr=loss, prob_ptr=prob, indices_ptr=indices, count_ptr=count,
        N=n, C=num_classes, R=history.numel(), beta=float(beta), beta_int=integer_beta(beta), floor=float(floor),
        prime=prime, ignore_index=ignore_index, label_smoothing=float(label_smoothing),
        fixed_prob=float(fixed_prob), FROM_LOGITS=from_logits, HAS_FLAGS=flags is not None,
        FIXED_PROB=fixed_prob >= 0, **config,
    )  # fmt: skip
    return indices, count, loss, prob
