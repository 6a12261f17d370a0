"""Batch-level sampling for the policies beyond "sb", shared by the Triton and the reference paths.

Every function works on per-row N-vectors (loss, score, Philox uniform u, validity) with static shapes and
device-side counts only, so it never synchronizes and traces under torch.compile.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._rows import compact


def keep_weights(loss: Tensor, valid: Tensor, keep: float) -> Tensor:
    """Composer's rank weights ``((rank + 0.5) / n) ** (1 / keep - 1)``, rank ascending in loss.

    Ranks are taken among the valid rows (ties broken by row order); invalid rows get weight 0.
    """
    n = loss.numel()
    order = torch.argsort(torch.where(valid, loss, torch.full_like(loss, float("inf"))), stable=True)
    rank = torch.empty(n, dtype=torch.float32, device=loss.device)
    rank.scatter_(0, order, torch.arange(n, dtype=torch.float32, device=loss.device))
    n_valid = valid.sum().clamp_min(1).to(torch.float32)
    weight = ((rank + 0.5) / n_valid) ** (1.0 / keep - 1.0)
    return torch.where(valid, weight, torch.zeros_like(weight))


def sample_without_replacement(weight: Tensor, u: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """k rows drawn without replacement with probability proportional to ``weight``.

    Efraimidis-Spirakis: the k largest keys ``u_i ** (1 / w_i)``, compared as ``log(u_i) / w_i``. Rows of
    weight 0 are never drawn, so fewer than k come back when fewer than k rows have weight > 0.
    Returns ``(indices, count)`` in the compacted form of :class:`Selection`.
    """
    n = weight.numel()
    usable = weight > 0
    keys = torch.where(usable, torch.log(u) / weight.clamp_min(1e-30), torch.full_like(u, float("-inf")))
    top = torch.topk(keys, min(k, n)).indices
    chosen = torch.zeros(n, dtype=torch.bool, device=weight.device)
    chosen.scatter_(0, top, usable[top])
    return compact(chosen)


def proportional_distribution(score: Tensor, valid: Tensor) -> Tensor:
    """q_i proportional to ``score`` over the valid rows (uniform over them when every score is 0)."""
    s = torch.where(valid, score.nan_to_num(0.0), torch.zeros_like(score))
    total = s.sum()
    uniform = valid.to(torch.float32) / valid.sum().clamp_min(1)
    return torch.where(total > 0, s / total.clamp_min(1e-30), uniform)


def sample_proportional(q: Tensor, u: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """k rows drawn with replacement with probabilities ``q`` (importance sampling), by inverse CDF.

    Uses ``u[:k]`` as the k draws. Returns ``(indices, count)``: indices ascending, a row repeated as often
    as drawn, -1 after; count is 0 when q is 0 everywhere (no valid row).
    """
    n = q.numel()
    k = min(k, n)
    cdf = torch.cumsum(q, 0)
    # u * total can round up to the total: never step past the last row that can be drawn.
    positions = torch.arange(n, device=q.device)
    last = torch.where(q > 0, positions, torch.zeros_like(positions)).max()
    rows = torch.searchsorted(cdf, (u[:k] * cdf[-1]).contiguous(), right=True).clamp_max(last)
    indices = torch.full((n,), -1, dtype=torch.int64, device=q.device)
    indices[:k] = torch.sort(rows).values
    has_rows = (q > 0).any()
    indices = torch.where(has_rows, indices, torch.full_like(indices, -1))
    count = torch.where(has_rows, k, 0).to(torch.int32)
    return indices, count
