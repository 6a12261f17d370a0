"""Policy "importance" (Katharopoulos & Fleuret 2018): k draws proportional to the gradient-norm bound.

Row i is drawn with probability ``q_i`` proportional to ``||softmax(x_i) - onehot(t_i)||_2`` (computed in
the same pass as the loss), k times with replacement. ``weight_i = 1 / (n_valid q_i)``: weighting each
drawn row's loss by it gives an unbiased estimate of the batch's mean loss gradient.
"""

from __future__ import annotations

from torch import Tensor

from .. import _checks as checks
from .. import distributed, ops
from ..selection import Selection
from ..state import SelectorState, advances_state
from .base import Policy


@advances_state(2)
def select_importance(
    logits: Tensor,
    targets: Tensor,
    state: SelectorState,
    k: int,
    *,
    ignore_index: int = -100,
    backend: str | None = None,
) -> Selection:
    """Importance sampling by ``||softmax - onehot||_2`` (k draws with replacement; see the module doc).

    ``prob`` is q; ``weight[i] = 1 / (n_valid * q_i)``. Rows drawn twice appear twice in ``indices``.
    """
    checks.check_source(logits, targets, state)
    checks.check_k(k, logits.shape[0])
    return ops.importance(
        logits=logits, targets=targets, meta=state.meta, k=k, row_offset=distributed.row_offset(state, logits.shape[0]),
        ignore_index=ignore_index, backend=ops.resolve(backend, logits.device),
    )  # fmt: skip


class Importance(Policy):
    """``Importance(k=32)(logits, targets)``: 32 draws with unbiasing weights in ``Selection.weight``."""

    name = "importance"
    weighted = True

    def __init__(self, k: int, **common) -> None:
        checks.check_k(k, k, smallest=1)
        super().__init__(**common)
        self.k = k

    def select(
        self, source: Tensor, targets: Tensor | None, state: SelectorState, *, features: Tensor | None = None
    ) -> Selection:
        if targets is None:
            raise ValueError('policy "importance" scores rows from logits: pass (logits, targets), not losses')
        k = min(self.k, source.shape[0])
        return select_importance(source, targets, state, k, ignore_index=self.ignore_index, backend=self.backend)

    def _parameters(self) -> dict:
        return {"k": self.k}
