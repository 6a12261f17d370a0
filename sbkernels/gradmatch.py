"""Gradient matching on last-layer gradient proxies (Balles et al. 2023; Killamsetty et al. 2021).

For a last linear layer ``logits = W h + b`` and cross-entropy, example i's gradient is

    d loss_i / d b = r_i = softmax(x_i) - onehot(t_i),        d loss_i / d W = r_i h_i^T,

so inner products of per-example last-layer gradients factorize and never need the gradients themselves::

    <g_i, g_j> = <r_i, r_j> * (<h_i, h_j> + 1)       (weight and bias gradient together)
    <g_i, g_j> = <r_i, r_j>                          (bias gradient only, when no features are given)

:func:`omp_nnls` chooses k examples and non-negative weights whose weighted gradient sum best matches a
target (the batch's mean gradient) by orthogonal matching pursuit in this Gram form, refitting the weights
after every pick by projected gradient descent on the non-negative least-squares problem. Everything is
device tensor work with static shapes: no host sync for a fixed k.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _checks, library
from .kernels.row_stats import launch_residual
from .ops import _resolve_backend, _use_triton
from .reference import compact, target_masks
from .selection import Selection
from .state import META_STEP, SelectorState


@library.register_op("residuals")
def _residuals(logits: Tensor, targets: Tensor, ignore_index: int, backend: str) -> tuple[Tensor, Tensor]:
    if _use_triton(logits.device, backend):
        return launch_residual(logits, targets, ignore_index)
    return residual_reference(logits, targets, ignore_index)


def residuals(
    logits: Tensor, targets: Tensor, ignore_index: int = -100, backend: str | None = None
) -> tuple[Tensor, Tensor]:
    """``(r, loss)``: the bias gradients ``softmax(x_i) - onehot(t_i)`` (N, C) float32 and the losses.

    On CUDA (or ``backend="triton"``) one Triton kernel computes both from the logits (it reads them twice:
    once for the softmax statistics, once to write r). Ignored rows and rows with bad targets get r = 0.
    """
    _checks.check_logits_targets(logits, targets)
    backend = _resolve_backend(backend, logits.device)
    return torch.ops.sbkernels.residuals(logits, targets, ignore_index, backend)


def residual_reference(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    x = logits.float()
    num_classes = x.shape[1]
    t, ignored, bad = target_masks(targets, num_classes, ignore_index)
    valid = ~ignored & ~bad
    p = torch.softmax(x, dim=1)
    onehot = torch.zeros_like(p).scatter_(1, t.clamp(0, num_classes - 1).unsqueeze(1), 1.0)
    r = torch.where(valid[:, None], p - onehot, torch.zeros_like(p))
    loss = torch.where(valid, torch.logsumexp(x, 1) - x.gather(1, t.clamp(0, num_classes - 1)[:, None])[:, 0], 0.0)
    return r, loss


def last_layer_gram(r: Tensor, features: Tensor | None = None) -> Tensor:
    """(N, N) inner products of per-example last-layer gradients, from residuals and optional features.

    Computed in float32, or float64 when the inputs are float64.
    """
    dtype = torch.float64 if r.dtype == torch.float64 else torch.float32
    r = r.to(dtype)
    gram = r @ r.T
    if features is not None:
        h = features.to(dtype).flatten(1)
        gram = gram * (h @ h.T + 1.0)
    return gram


def _lipschitz(gram_s: Tensor, iterations: int = 20) -> Tensor:
    """Upper estimate of the largest eigenvalue of a PSD matrix by power iteration (+ 1% margin)."""
    v = torch.ones(gram_s.shape[0], device=gram_s.device, dtype=gram_s.dtype)
    for _ in range(iterations):
        v = gram_s @ v
        v = v / v.norm().clamp_min(1e-30)
    return (v @ (gram_s @ v)).clamp_min(1e-30) * 1.01 + 1e-12 * gram_s.diagonal().sum()


def omp_nnls(
    gram: Tensor, target_dot: Tensor, target_sq: Tensor, k: int, steps: int = 60, ridge: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy non-negative matching pursuit in Gram form.

    Minimizes ``||sum_{i in S} w_i g_i - t||^2 + ridge * ||w||^2`` over |S| <= k, w >= 0, where the squared
    residual is ``t_sq - 2 w.b_S + w^T K_SS w``, given ``K = gram`` (n, n), ``b = target_dot`` (n,) =
    <g_i, t> and ``t_sq`` = ||t||^2.

    Each iteration adds the unpicked column most positively correlated with the residual,
    ``argmax_j b_j - (K w)_j``, then refits all weights by projected gradient descent with step 1/L started
    from the previous weights (the new one at 0). With ``ridge = 0`` the residual therefore never increases;
    ``ridge > 0`` (Grad-Match's regularized OMP) trades a little residual for evenly spread weights.

    Returns ``(picked, weights, residual_sq)``: (k,) indices in pick order, (k,) weights >= 0, and (k,) the
    squared residual after each iteration.
    """
    n = gram.shape[0]
    k = min(k, n)
    dtype, device = gram.dtype, gram.device
    picked = torch.zeros(k, dtype=torch.int64, device=device)
    weights = torch.zeros(k, dtype=dtype, device=device)
    taken = torch.zeros(n, dtype=torch.bool, device=device)
    history = torch.zeros(k, dtype=dtype, device=device)
    slots = torch.arange(k, device=device)
    for it in range(k):
        active = slots <= it
        correlation = target_dot - gram[:, picked] @ torch.where(slots < it, weights, 0.0)
        j = torch.argmax(torch.where(taken, torch.full_like(correlation, float("-inf")), correlation))
        picked = torch.where(slots == it, j, picked)
        taken = taken | (torch.arange(n, device=device) == j)
        k_s = gram[picked][:, picked] * (active[:, None] & active[None, :])
        b_s = torch.where(active, target_dot[picked], 0.0)
        k_fit = k_s + ridge * torch.diag(active.to(dtype))
        step = 1.0 / _lipschitz(k_fit)
        for _ in range(steps):
            weights = torch.clamp_min(weights - step * (k_fit @ weights - b_s), 0.0) * active
        history[it] = target_sq - 2 * weights @ b_s + weights @ (k_s @ weights)
    return picked, weights, history.clamp_min(0.0)


def select_gradmatch(
    logits: Tensor,
    targets: Tensor,
    state: SelectorState,
    k: int,
    features: Tensor | None = None,
    *,
    ignore_index: int = -100,
    steps: int = 60,
    backend: str | None = None,
) -> Selection:
    """Policy "gradmatch" (Balles et al.): k rows and weights matching the batch's mean last-layer gradient.

    ``features`` are the penultimate activations h (N, ...); without them only the bias gradient is matched.
    ``Selection.weight[i]`` is ``k * w_i`` for picked rows (0 elsewhere), so ``(weight * loss).mean()`` over
    the k picked rows approximates the whole batch's mean loss gradient. Picks are distinct rows; rows whose
    gradient is zero (ignored) are never useful and come last. Advances ``state.step``; no host sync.
    """
    n = logits.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= n:
        raise ValueError(f"k must be an int in [1, N={n}], got {k!r}")
    if features is not None and (features.shape[0] != n or features.device != logits.device):
        raise ValueError(f"features must have leading dim {n} and live on {logits.device}")
    _checks.check_state(state, logits.device, "logits")
    r, loss = residuals(logits, targets, ignore_index, backend)
    gram = last_layer_gram(r, features)
    target_dot = gram.mean(dim=1)  # <g_i, mean_j g_j>
    target_sq = gram.mean()
    picked, w, _ = omp_nnls(gram, target_dot, target_sq, k, steps)
    chosen = torch.zeros(n, dtype=torch.bool, device=logits.device).scatter_(0, picked, w > 0)
    indices, count = compact(chosen)
    weight = torch.zeros(n, dtype=torch.float32, device=logits.device).scatter_(0, picked, (k * w).float())
    state.meta[META_STEP] += 1
    return Selection(indices, count, loss, chosen.float(), weight)
