"""Policy "importance" (Katharopoulos & Fleuret 2018): k draws proportional to the gradient-norm bound.

Row i is drawn with probability ``q_i`` proportional to ``||softmax(x_i) - onehot(t_i)||_2`` (computed in
the same pass as the loss), k times with replacement. ``weight_i = 1 / (n_valid q_i)``: weighting each
drawn row's loss by it gives an unbiased estimate of the batch's mean loss gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import backend as backends
from .. import checks, library, sampling
from ..distributed import row_offset
from ..selection import Selection
from ..state import SelectorState
from .base import Policy
from .scored import score_rows


def _check_importance(logits, targets, meta, k, row_offset, ignore_index, backend) -> None:
    checks.check_op_inputs(logits, targets, None, None, None, meta, backend)
    checks.check_k(k, logits.shape[0])
    checks.check_row_offset(row_offset, logits.shape[0])


@library.register_op("importance", mutates_args={"meta"}, check=_check_importance)
def _importance_op(
    logits: Tensor, targets: Tensor, meta: Tensor, k: int, row_offset: int, ignore_index: int, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    if backend == "native":  # the whole op in one C++ call (csrc/cpu/sample_cpu.cpp)
        return torch.ops.sbkernels.sample_rows_cpu(
            logits, targets, None, meta, "importance", 0.0, k, ignore_index, row_offset
        )
    rows = score_rows(logits, targets, None, meta, ignore_index=ignore_index, row_offset=row_offset, backend=backend)
    q = sampling.proportional_distribution(rows.score, rows.valid)
    indices, count = sampling.sample_proportional(q, rows.u, k)
    n_valid = rows.valid.sum().clamp_min(1)
    weight = torch.where(q > 0, 1.0 / (n_valid * q.clamp_min(1e-30)), torch.zeros_like(q))
    return indices, count, rows.loss, q, weight


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
    out = library.call(
        "importance", logits, targets, state.meta, k, row_offset(state, logits.shape[0]), ignore_index,
        backends.resolve(backend, logits.device),
    )  # fmt: skip
    return Selection(*out)


class Importance(Policy):
    """``Importance(k=32)(logits, targets)``: 32 draws with unbiasing weights in ``Selection.weight``."""

    name = "importance"
    weighted = True

    def __init__(self, k: int, **common) -> None:
        checks.check_k(k, k, smallest=1)
        super().__init__(**common)
        self.k = k

    def select(self, scores: Tensor, targets: Tensor | None, state: SelectorState) -> Selection:
        if targets is None:
            raise ValueError('policy "importance" scores rows from logits: pass (logits, targets), not losses')
        k = min(self.k, scores.shape[0])
        return select_importance(scores, targets, state, k, ignore_index=self.ignore_index, backend=self.backend)

    def _parameters(self) -> dict:
        return {"k": self.k}
