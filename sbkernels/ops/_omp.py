"""Gradient matching in Gram form, shared by the in-batch policy and the dataset-level Grad-Match subsets.

For a last linear layer ``logits = W h + b`` and cross-entropy, example i's gradient is

    d loss_i / d b = r_i = softmax(x_i) - onehot(t_i),        d loss_i / d W = r_i h_i^T,

so inner products of per-example last-layer gradients factorize and never need the gradients themselves::

    <g_i, g_j> = <r_i, r_j> * (<h_i, h_j> + 1)       (weight and bias gradient together)
    <g_i, g_j> = <r_i, r_j>                          (bias gradient only, when no features are given)

:func:`omp_nnls` chooses k examples and non-negative weights whose weighted gradient sum best matches a
target by orthogonal matching pursuit in this Gram form (Balles et al. 2023; Killamsetty et al. 2021).
Everything is device tensor work with static shapes: no host sync for a fixed k.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
