"""Policy "gradmatch" (Balles et al. 2023): k rows and weights matching the batch's mean last-layer gradient.

The residuals ``r_i = softmax(x_i) - onehot(t_i)`` (the bias gradients; one Triton kernel on the Triton
backend) and optional penultimate features h give the Gram matrix of per-example last-layer gradients
(:mod:`sbkernels.ops._omp`); non-negative OMP picks k rows whose weighted sum matches the batch mean.
"""

from __future__ import annotations

from torch import Tensor

from .. import _checks as checks
from .. import ops
from ..selection import Selection
from ..state import SelectorState, advances_state
from .base import Policy


@advances_state(2)
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
    checks.check_features(features, logits)
    return ops.gradmatch(
        logits=logits, targets=targets, features=features, meta=state.meta, k=k, steps=steps,
        ignore_index=ignore_index, backend=ops.resolve(backend, logits.device),
    )  # fmt: skip


class GradMatch(Policy):
    """``GradMatch(k=32)(logits, targets, features=h)``: 32 rows with weights (in ``Selection.weight``)."""

    name = "gradmatch"
    weighted = True
    uses_features = True

    def __init__(self, k: int, steps: int = 60, **common) -> None:
        checks.check_k(k, k, smallest=1)
        checks.check_gradmatch_steps(steps)
        super().__init__(**common)
        self.k, self.steps = k, steps

    def select(
        self, source: Tensor, targets: Tensor | None, state: SelectorState, *, features: Tensor | None = None
    ) -> Selection:
        if targets is None:
            raise ValueError('policy "gradmatch" needs logits and targets, not losses')
        k = min(self.k, source.shape[0])
        return select_gradmatch(
            source, targets, state, k, features, ignore_index=self.ignore_index, steps=self.steps,
            backend=self.backend,
        )  # fmt: skip

    def _parameters(self) -> dict:
        return {"k": self.k}
