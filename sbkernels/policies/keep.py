"""Policy "keep" (MosaicML Composer's selective backprop): exactly ``int(keep * N)`` rows per batch.

Rows are sampled without replacement with weights ``((rank + 0.5) / n) ** (1 / keep - 1)``, rank ascending
in loss within the batch's valid rows: high-loss rows are likelier. No history.
"""

from __future__ import annotations

from torch import Tensor

from .. import _checks as checks
from .. import distributed, ops
from ..selection import Selection
from ..state import SelectorState, advances_state
from .base import Policy


def select_keep(
    source: Tensor,
    targets: Tensor | None,
    state: SelectorState,
    keep: float = 0.5,
    *,
    ignore_index: int = -100,
    valid: Tensor | None = None,
    backend: str | None = None,
) -> Selection:
    """Composer's selective backprop: ``int(keep * N)`` rows by rank-weighted sampling without replacement.

    ``source`` is (N, C) logits with ``targets``, or (N,) per-example losses with ``targets=None``.
    Invalid rows (ignored, bad target, non-finite) are never drawn, so fewer rows come back if fewer are
    valid. ``prob`` is each row's share of the sampling weight (its chance to be the first draw). With
    losses, ``valid`` (N,) bool marks the rows that may be drawn (see :func:`select_losses`).
    """
    checks.check_fraction("keep", keep)
    checks.check_source(source, targets, state)
    flags = checks.valid_flags(valid, source, targets)
    return select_flagged(source, targets, flags, state, keep, ignore_index, ops.resolve(backend, source.device))


@advances_state(3)
def select_flagged(
    source: Tensor, targets: Tensor | None, flags: Tensor | None, state: SelectorState, keep: float,
    ignore_index: int, backend: str,
) -> Selection:  # fmt: skip
    """Policy "keep" on checked arguments (``flags`` with losses); per rank under a process group."""
    logits, losses = (source, None) if targets is not None else (None, source)
    return ops.keep(
        logits=logits, targets=targets, losses=losses, flags=flags, meta=state.meta, keep=keep,
        row_offset=distributed.row_offset(state, source.shape[0]), ignore_index=ignore_index, backend=backend,
    )  # fmt: skip


class Keep(Policy):
    """Composer's "keep": ``Keep(0.5)(logits, targets)`` backpropagates half of every batch."""

    name = "keep"

    def __init__(self, keep: float = 0.5, **common) -> None:
        checks.check_fraction("keep", keep)
        super().__init__(**common)
        self.keep = keep

    def select(
        self, source: Tensor, targets: Tensor | None, state: SelectorState, *, features: Tensor | None = None
    ) -> Selection:
        return select_keep(source, targets, state, self.keep, ignore_index=self.ignore_index, backend=self.backend)

    def select_rows(self, losses: Tensor, flags: Tensor, state: SelectorState) -> Selection:
        backend = ops.resolve(self.backend, losses.device)
        return select_flagged(losses, None, flags, state, self.keep, self.ignore_index, backend)

    def _parameters(self) -> dict:
        return {"keep": self.keep}
