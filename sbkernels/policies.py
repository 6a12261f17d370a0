"""The peer methods' selection policies, all returning a :class:`Selection` (SPEC section 5).

- ``select_keep`` (MosaicML Composer): exactly ``int(keep * N)`` rows, sampled without replacement with
  weights ``((rank + 0.5) / N) ** (1 / keep - 1)`` by ascending loss rank; no history.
- ``select_uniform``: loss-blind baseline; each row with probability ``rate`` (the fused select kernel
  with a fixed probability: one launch) or exactly ``k`` rows without replacement.
- ``select_importance`` (Katharopoulos & Fleuret 2018): k rows drawn with replacement with probability
  proportional to ``||softmax(x_i) - onehot(t_i)||_2``, with unbiasing weights ``1 / (N q_i)`` in
  ``Selection.weight``.

keep / importance / uniform-k run one fused Triton pass (``row_stats``: loss, score and the row's Philox
uniform from one read of the logits) and then a few torch ops on N-vectors (sbkernels/sampling.py); no
host sync. Each call advances ``state.step``; these policies do not touch the loss history.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import library, reference, sampling
from .kernels.row_stats import launch_row_stats
from .ops import _use_triton, check_input, run_select
from .selection import Selection
from .state import META_STEP, SelectorState


@library.register_op("row_stats", mutates_args={})
def _row_stats(
    logits: Tensor | None,
    targets: Tensor | None,
    losses: Tensor | None,
    meta: Tensor,
    ignore_index: int,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    source = logits if logits is not None else losses
    if _use_triton(source.device, backend):
        return launch_row_stats(logits, targets, losses, meta, ignore_index)
    return reference.row_stats(logits, targets, losses, meta, ignore_index)


def _stats(
    source: Tensor, targets: Tensor | None, state: SelectorState, ignore_index: int, backend: str | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate, compute (loss, score, u) and the validity mask, and advance the state's step."""
    backend = check_input(source, targets, state, backend, from_logits=targets is not None)
    logits, losses = (source, None) if targets is not None else (None, source)
    loss, score, u = torch.ops.sbkernels.row_stats(logits, targets, losses, state.meta, ignore_index, backend)
    valid = torch.isfinite(loss)
    if targets is not None:
        valid &= targets != ignore_index
    state.meta[META_STEP] += 1
    return loss, score, u, valid


def _check_k(k: int, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"k must be an int in [0, N={n}], got {k!r}")


def select_keep(
    source: Tensor,
    targets: Tensor | None,
    state: SelectorState,
    keep: float = 0.5,
    *,
    ignore_index: int = -100,
    backend: str | None = None,
) -> Selection:
    """Composer's selective backprop: ``int(keep * N)`` rows by rank-weighted sampling without replacement.

    ``source`` is (N, C) logits with ``targets``, or (N,) per-example losses with ``targets=None``.
    Invalid rows (ignored, non-finite) are never drawn, so fewer rows come back if fewer are valid.
    """
    if not isinstance(keep, (int, float)) or isinstance(keep, bool) or not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    loss, _, u, valid = _stats(source, targets, state, ignore_index, backend)
    k = int(keep * source.shape[0])
    indices, count = sampling.sample_without_replacement(sampling.keep_weights(loss, valid, keep), u, k)
    return Selection(indices, count, loss, valid.float() * (k / source.shape[0]), None)


def select_uniform(
    source: Tensor,
    targets: Tensor | None,
    state: SelectorState,
    rate: float | None = None,
    k: int | None = None,
    *,
    ignore_index: int = -100,
    backend: str | None = None,
) -> Selection:
    """Loss-blind baseline: each valid row with probability ``rate``, or exactly ``k`` rows.

    With ``rate`` this is the fused select kernel with a fixed probability, so the losses are still
    pushed into the state's history (useful to compare with "sb" on the same state).
    """
    if (rate is None) == (k is None):
        raise ValueError("pass exactly one of rate or k")
    if rate is not None:
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate!r}")
        return run_select(
            source, targets, state, 1.0, 0.0, 0, ignore_index, 0.0, rate, backend, from_logits=targets is not None
        )
    _check_k(k, source.shape[0])
    loss, _, u, valid = _stats(source, targets, state, ignore_index, backend)
    indices, count = sampling.sample_without_replacement(valid.float(), u, k)
    return Selection(indices, count, loss, valid.float() * (k / source.shape[0]), None)


def select_importance(
    logits: Tensor,
    targets: Tensor,
    state: SelectorState,
    k: int,
    *,
    ignore_index: int = -100,
    backend: str | None = None,
) -> Selection:
    """Importance sampling by the gradient-norm bound ``||softmax - onehot||_2`` (k draws, with replacement).

    ``Selection.weight[i] = 1 / (n_valid * q_i)``: weight each drawn row's loss by it (rows drawn twice
    appear twice in ``indices``) for an unbiased estimate of the batch's mean loss gradient.
    """
    _check_k(k, logits.shape[0] if isinstance(logits, Tensor) and logits.dim() > 0 else 0)
    loss, score, u, valid = _stats(logits, targets, state, ignore_index, backend)
    indices, count, weight = sampling.sample_proportional(score, valid, u, k)
    q = torch.where(weight > 0, 1.0 / (weight * valid.sum().clamp_min(1)), torch.zeros_like(weight))
    return Selection(indices, count, loss, q, weight)
