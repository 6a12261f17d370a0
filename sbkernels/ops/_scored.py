"""The batch-level policy bodies built from a scoring kernel and torch ops (the Triton and reference backends).

One pass over the logits (the backend's ``row_stats`` or ``residuals`` kernel) gives per row the loss, the
importance score and the row's Philox uniform; then the rows a policy may draw are fixed (SPEC section 5),
the state is advanced (``step`` by one, the bad targets and non-finite losses counted) and the policy draws
with :mod:`._sampling`. These policies do not push into the loss history. The native backend runs each whole
body in one C++ call instead (``csrc/cpu/sample_cpu.cpp``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .._rows import advance_counters, compact, flag_masks, row_validity, target_masks
from . import _sampling
from ._omp import last_layer_gram, omp_nnls

RowStatsKernel = Callable[..., tuple[Tensor, Tensor, Tensor]]
ResidualsKernel = Callable[..., tuple[Tensor, Tensor]]


class ScoredRows(NamedTuple):
    loss: Tensor  # (N,) float32: 0 for ignored rows, NaN for bad targets
    score: Tensor  # (N,) float32: ||softmax - onehot||_2 (zeros for losses input)
    u: Tensor  # (N,) float32: the row's Philox uniform tl.rand(seed, (step << 32) + i)
    valid: Tensor  # (N,) bool: rows the policy may select


def score_rows(
    row_stats: RowStatsKernel, *, logits: Tensor | None, targets: Tensor | None, losses: Tensor | None,
    flags: Tensor | None, meta: Tensor, ignore_index: int, row_offset: int,
) -> ScoredRows:  # fmt: skip
    """Score every row with ``row_stats``, then advance the state (step + 1, error counts). ``flags`` (with
    losses) mark ignored and bad rows, e.g. sequences without a valid token."""
    loss, score, u = row_stats(
        logits=logits, targets=targets, losses=losses, meta=meta, ignore_index=ignore_index, row_offset=row_offset
    )
    if logits is not None:
        assert targets is not None
        _, ignored, bad = target_masks(targets, logits.shape[1], ignore_index)
    elif flags is not None:
        ignored, bad = flag_masks(flags)
    else:
        ignored = bad = torch.zeros(loss.shape, dtype=torch.bool, device=loss.device)
    valid, nonfinite = row_validity(loss, ignored, bad)
    advance_counters(meta, pushed=0, nonfinite=nonfinite.sum(), bad_targets=bad.sum())
    return ScoredRows(loss, score, u, valid)


def sample_rows(
    row_stats: RowStatsKernel, *, logits: Tensor | None, targets: Tensor | None, losses: Tensor | None,
    flags: Tensor | None, meta: Tensor, policy: str, param: float, k: int, ignore_index: int, row_offset: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """``(indices, count, loss, prob, weight)`` of policy "keep" (param = keep), "uniform" (k rows) or
    "importance" (k draws); weight is 0 except for "importance", as in the native op."""
    rows = score_rows(
        row_stats, logits=logits, targets=targets, losses=losses, flags=flags, meta=meta, ignore_index=ignore_index,
        row_offset=row_offset,
    )  # fmt: skip
    no_weight = torch.zeros_like(rows.loss)
    if policy == "keep":
        weight = _sampling.keep_weights(rows.loss, rows.valid, param)
        indices, count = _sampling.sample_without_replacement(weight, rows.u, int(param * rows.loss.numel()))
        return indices, count, rows.loss, weight / weight.sum().clamp_min(1e-30), no_weight
    if policy == "uniform":
        indices, count = _sampling.sample_without_replacement(rows.valid.float(), rows.u, k)
        n_valid = rows.valid.sum().clamp_min(1)
        prob = torch.where(rows.valid, n_valid.clamp_max(k) / n_valid, 0.0)  # the inclusion probability
        return indices, count, rows.loss, prob, no_weight
    q = _sampling.proportional_distribution(rows.score, rows.valid)  # "importance"
    indices, count = _sampling.sample_proportional(q, rows.u, k)
    n_valid = rows.valid.sum().clamp_min(1)
    weight = torch.where(q > 0, 1.0 / (n_valid * q.clamp_min(1e-30)), torch.zeros_like(q))
    return indices, count, rows.loss, q, weight


def gradmatch_rows(
    residuals: ResidualsKernel, *, logits: Tensor, targets: Tensor, features: Tensor | None, meta: Tensor, k: int,
    steps: int, ignore_index: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Policy "gradmatch": the residuals (bias gradients) from ``residuals``, their Gram matrix with the
    features (:mod:`._omp`) and non-negative OMP for k rows and weights (see :mod:`sbkernels.policies.gradmatch`)."""
    r, loss = residuals(logits=logits, targets=targets, ignore_index=ignore_index)
    _, ignored, bad = target_masks(targets, logits.shape[1], ignore_index)
    loss = torch.where(bad, float("nan"), loss)
    valid, nonfinite = row_validity(loss, ignored, bad)
    r = torch.where(valid[:, None], r, 0.0)  # a row that may not be picked contributes no gradient
    gram = last_layer_gram(r, features)
    picked, w, _ = omp_nnls(gram, gram.mean(dim=1), gram.mean(), k, steps)
    n = logits.shape[0]
    chosen = torch.zeros(n, dtype=torch.bool, device=logits.device).scatter_(0, picked, w > 0) & valid
    indices, count = compact(chosen)
    weight = torch.zeros(n, dtype=torch.float32, device=logits.device).scatter_(0, picked, (k * w).float())
    advance_counters(meta, pushed=0, nonfinite=nonfinite.sum(), bad_targets=bad.sum())
    return indices, count, loss, chosen.float(), torch.where(chosen, weight, 0.0)


def row_losses(
    row_stats: RowStatsKernel, *, logits: Tensor, targets: Tensor, meta: Tensor, ignore_index: int,
    label_smoothing: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``(loss, ignored, bad)`` per row from the row-stats pass (its score and uniforms are not needed)."""
    loss, _, _ = row_stats(
        logits=logits, targets=targets, losses=None, meta=meta, ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )  # fmt: skip
    _, ignored, bad = target_masks(targets, logits.shape[1], ignore_index)
    return loss, ignored, bad
