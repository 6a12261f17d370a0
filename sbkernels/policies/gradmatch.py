"""Policy "gradmatch" (Balles et al. 2023): k rows and weights matching the batch's mean last-layer gradient.

The residuals ``r_i = softmax(x_i) - onehot(t_i)`` (the bias gradients; one Triton kernel on the Triton
backend) and optional penultimate features h give the Gram matrix of per-example last-layer gradients
(:mod:`sbkernels.omp`); non-negative OMP picks k rows whose weighted sum matches the batch mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import backend as backends
from .. import checks, library, reference
from ..kernels import launch_residual
from ..omp import last_layer_gram, omp_nnls
from ..rows import advance_counters, compact, row_validity, target_masks
from ..selection import Selection
from ..state import SelectorState
from .base import Policy


def _check_gradmatch(logits, targets, features, meta, k, steps, ignore_index, backend) -> None:
    checks.check_op_inputs(logits, targets, None, None, None, meta, backend)
    n = logits.shape[0]
    checks.check_k(k, n, smallest=1)
    checks.check_gradmatch_steps(steps)
    _check_features(features, logits)


def _check_features(features: Tensor | None, logits: Tensor) -> None:
    n = logits.shape[0]
    if features is not None and (
        not isinstance(features, Tensor)
        or features.dim() < 1
        or features.shape[0] != n
        or features.device != logits.device
    ):
        raise ValueError(f"features must have leading dim {n} and live on {logits.device}")


@library.register_op("gradmatch", mutates_args={"meta"}, check=_check_gradmatch)
def _gradmatch_op(
    logits: Tensor, targets: Tensor, features: Tensor | None, meta: Tensor, k: int, steps: int, ignore_index: int,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    if backend == "triton":
        r, loss = launch_residual(logits=logits, targets=targets, ignore_index=ignore_index)
    elif backend == "native":
        r, loss = torch.ops.sbkernels.residuals_cpu(logits, targets, ignore_index)
    else:
        r, loss = reference.residuals(logits, targets, ignore_index)
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
    """k rows and weights whose weighted last-layer gradient matches the batch's mean (see the module doc).

    ``features`` are the penultimate activations h (N, ...); without them only the bias gradient is matched.
    ``weight[i]`` is ``k * w_i`` for picked rows (0 elsewhere), so ``(weight * loss).mean()`` over the k
    picked rows approximates the whole batch's mean loss gradient. ``prob`` is 1 for picked rows.
    """
    checks.check_source(logits, targets, state)
    n = logits.shape[0]
    checks.check_k(k, n, smallest=1)
    checks.check_gradmatch_steps(steps)
    _check_features(features, logits)
    out = library.call(
        "gradmatch",
        logits,
        targets,
        features,
        state.meta,
        k,
        steps,
        ignore_index,
        backends.resolve(backend, logits.device),
    )
    return Selection(*out)


class GradMatch(Policy):
    """``GradMatch(k=32)(logits, targets, features=h)``: 32 rows with weights (in ``Selection.weight``)."""

    name = "gradmatch"
    weighted = True

    def __init__(self, k: int, steps: int = 60, **common) -> None:
        checks.check_k(k, k, smallest=1)
        checks.check_gradmatch_steps(steps)
        super().__init__(**common)
        self.k, self.steps = k, steps

    def select(
        self, scores: Tensor, targets: Tensor | None, state: SelectorState, features: Tensor | None = None
    ) -> Selection:
        if targets is None:
            raise ValueError('policy "gradmatch" needs logits and targets, not losses')
        k = min(self.k, scores.shape[0])
        return select_gradmatch(
            scores, targets, state, k, features, ignore_index=self.ignore_index, steps=self.steps,
            backend=self.backend,
        )  # fmt: skip

    def _parameters(self) -> dict:
        return {"k": self.k}
