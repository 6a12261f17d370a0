"""Policy "uniform": the loss-blind baseline. Each valid row with probability ``rate``, or exactly ``k`` rows.

With ``rate`` it is the fused "sb" kernel with a fixed probability (one launch), so the losses are still
pushed into the history (to compare with "sb" on the same state). With ``k`` it draws k valid rows
without replacement from the scoring pass and pushes nothing.
"""

from __future__ import annotations

from torch import Tensor

from .. import _checks as checks
from .. import distributed, ops
from ..selection import Selection
from ..state import SelectorState, advances_state
from .base import Policy


def select_uniform(
    source: Tensor,
    targets: Tensor | None,
    state: SelectorState,
    rate: float | None = None,
    k: int | None = None,
    *,
    ignore_index: int = -100,
    valid: Tensor | None = None,
    backend: str | None = None,
) -> Selection:
    """Loss-blind baseline: each valid row with probability ``rate``, or exactly ``k`` rows.

    With losses, ``valid`` (N,) bool marks the rows that may be selected (see :func:`select_losses`).
    """
    checks.check_rate_or_k(rate, k)
    checks.check_source(source, targets, state)
    if k is not None:
        checks.check_k(k, source.shape[0])
    flags = checks.valid_flags(valid, source, targets)
    return select_flagged(source, targets, flags, state, rate, k, ignore_index, ops.resolve(backend, source.device))


@advances_state(3)
def select_flagged(
    source: Tensor, targets: Tensor | None, flags: Tensor | None, state: SelectorState, rate: float | None,
    k: int | None, ignore_index: int, backend: str,
) -> Selection:  # fmt: skip
    """Policy "uniform" on checked arguments (``flags`` with losses), on one process or across a group."""
    if rate is not None and state.process_group is not None:  # a rate is global, like "sb"
        gathered = distributed.gather_losses(
            source, targets, state, ignore_index=ignore_index, label_smoothing=0.0, backend=backend, flags=flags
        )
        return distributed.local_rows(
            gathered,
            ops.uniform(
                losses=gathered.losses, flags=gathered.flags, history=state.history, meta=state.meta, rate=rate,
                backend=backend,
            ),
        )  # fmt: skip
    logits, losses = (source, None) if targets is not None else (None, source)
    return ops.uniform(
        logits=logits, targets=targets, losses=losses, flags=flags, history=state.history, meta=state.meta,
        rate=rate, k=k, row_offset=distributed.row_offset(state, source.shape[0]), ignore_index=ignore_index,
        backend=backend,
    )  # fmt: skip


class Uniform(Policy):
    """``Uniform(rate=0.3)`` keeps each row with probability 0.3; ``Uniform(k=32)`` exactly 32 rows."""

    name = "uniform"

    def __init__(self, rate: float | None = None, k: int | None = None, **common) -> None:
        checks.check_rate_or_k(rate, k)
        super().__init__(**common)
        self.rate, self.k = rate, k

    def select(
        self, source: Tensor, targets: Tensor | None, state: SelectorState, *, features: Tensor | None = None
    ) -> Selection:
        k = None if self.k is None else min(self.k, source.shape[0])  # a short last batch
        return select_uniform(
            source, targets, state, self.rate, k, ignore_index=self.ignore_index, backend=self.backend
        )

    def select_rows(self, losses: Tensor, flags: Tensor, state: SelectorState) -> Selection:
        k = None if self.k is None else min(self.k, losses.shape[0])
        backend = ops.resolve(self.backend, losses.device)
        return select_flagged(losses, None, flags, state, self.rate, k, self.ignore_index, backend)

    def _parameters(self) -> dict:
        return {"rate": self.rate} if self.k is None else {"k": self.k}
