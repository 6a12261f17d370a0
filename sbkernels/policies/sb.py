"""Policy "sb" (Jiang et al. 2019): keep each row with probability ``max(floor, pct ** beta)``.

``pct`` is the row's loss percentile against the state's history of recent losses (SPEC section 2). The op
``select_sb`` (:func:`sbkernels.ops.select_sb`) does it in one fused pass on every backend.
"""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

import torch
from torch import Tensor

from .. import _checks as checks
from .. import distributed, ops
from ..selection import Selection
from ..state import SelectorState, advances_state
from .base import Policy


@advances_state(2)
def select(
    logits: Tensor,
    targets: Tensor,
    state: SelectorState,
    beta: float = 1.0,
    floor: float = 0.0,
    prime: int = 0,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    *,
    backend: str | None = None,
    validate: bool = False,
) -> Selection:
    """Selective-Backprop selection (policy "sb") from logits, in one fused launch on CUDA.

    Computes per-row cross-entropy, ranks each loss against the history in ``state``, keeps row i with
    probability ``max(floor, pct_i ** beta)`` (always while fewer than ``prime`` losses were pushed) and
    pushes the valid losses into the history. Never synchronizes with the host. With a process group on
    the state, selects on the concatenation of every rank's batch (:mod:`sbkernels.distributed`) and
    returns this rank's rows.

    Args:
        logits: (N, C) float32 / bfloat16 / float16, unit stride along C.
        targets: (N,) int64 or int32 class indices; ``ignore_index`` rows are never selected.
        state: the :class:`SelectorState` on the same device; updated in place.
        beta: selectivity exponent (> 0); larger keeps fewer rows.
        floor: minimum selection probability, in [0, 1].
        prime: select everything while the history holds fewer than ``prime`` pushed losses.
        ignore_index: target value marking rows to skip.
        label_smoothing: as in ``F.cross_entropy``, in [0, 1).
        backend: "auto" (Triton on CUDA, native C++ on CPU), "native", "triton" or "reference"; default from the
            SBKERNELS_BACKEND environment variable, else "auto".
        validate: call ``state.check()`` after the op (synchronizes) to raise on out-of-range targets; with a
            process group, also check on the host that every rank passed the same N.

    Returns:
        A :class:`Selection` (indices, count, loss, prob; weight is None).
    """
    checks.check_sb_params(beta, floor, prime, label_smoothing)
    checks.check_source(logits, targets, state)
    backend = ops.resolve(backend, logits.device)
    warn_if_history_short(state, logits.shape[0])
    if state.process_group is not None:
        gathered = distributed.gather_losses(
            logits, targets, state, ignore_index=ignore_index, label_smoothing=label_smoothing, backend=backend,
            validate=validate,
        )  # fmt: skip
        sel = distributed.local_rows(
            gathered, _on_losses(gathered.losses, gathered.flags, state, beta, floor, prime, backend)
        )
    else:
        sel = ops.select_sb(
            logits=logits, targets=targets, history=state.history, meta=state.meta, beta=beta, floor=floor,
            prime=prime, ignore_index=ignore_index, label_smoothing=label_smoothing, backend=backend,
        )  # fmt: skip
    if validate:
        state.check()
    return sel


def select_losses(
    losses: Tensor,
    state: SelectorState,
    beta: float = 1.0,
    floor: float = 0.0,
    prime: int = 0,
    *,
    valid: Tensor | None = None,
    backend: str | None = None,
) -> Selection:
    """Policy "sb" on precomputed per-example losses (any loss: detection, regression, per-sequence LM).

    Same rule as :func:`select` with the loss given: non-finite losses are never selected nor pushed.
    ``valid`` (N,) bool marks the rows that may be selected: the others are ignored rows (never selected,
    never pushed), e.g. sequences without a valid token.
    """
    checks.check_sb_params(beta, floor, prime)
    checks.check_source(losses, None, state)
    flags = checks.valid_flags(valid, losses)
    return select_flagged(losses, flags, state, beta, floor, prime, ops.resolve(backend, losses.device))


@advances_state(2)
def select_flagged(
    losses: Tensor, flags: Tensor | None, state: SelectorState, beta: float, floor: float, prime: int, backend: str
) -> Selection:
    """Policy "sb" on checked losses and their row flags, on one process or across a process group."""
    warn_if_history_short(state, losses.shape[0])
    if state.process_group is not None:
        gathered = distributed.gather_losses(
            losses, None, state, ignore_index=-100, label_smoothing=0.0, backend=backend, flags=flags
        )
        return distributed.local_rows(
            gathered, _on_losses(gathered.losses, gathered.flags, state, beta, floor, prime, backend)
        )
    return _on_losses(losses, flags, state, beta, floor, prime, backend)


def _on_losses(
    losses: Tensor, flags: Tensor | None, state: SelectorState, beta: float, floor: float, prime: int, backend: str
) -> Selection:
    """The "sb" op on given losses (and, for losses gathered from every rank, their flags)."""
    return ops.select_sb(
        losses=losses, flags=flags, history=state.history, meta=state.meta, beta=beta, floor=floor, prime=prime,
        backend=backend,
    )  # fmt: skip


class SB(Policy):
    """Selective-Backprop: keep row i with probability ``max(floor, pct_i ** beta)`` (see :func:`select`).

    ``SB(beta=2)(logits, targets)`` or ``SB(beta=2)(losses)``; ``prime`` selects everything until that
    many losses were pushed; ``label_smoothing`` as in ``F.cross_entropy``.
    """

    name = "sb"

    def __init__(
        self, beta: float = 1.0, floor: float = 0.0, prime: int = 0, label_smoothing: float = 0.0, **common
    ) -> None:
        checks.check_sb_params(beta, floor, prime, label_smoothing)
        super().__init__(**common)
        self.beta, self.floor, self.prime, self.label_smoothing = beta, floor, prime, label_smoothing

    def select(
        self, source: Tensor, targets: Tensor | None, state: SelectorState, *, features: Tensor | None = None
    ) -> Selection:
        if targets is None:
            return select_losses(source, state, self.beta, self.floor, self.prime, backend=self.backend)
        return select(
            source, targets, state, self.beta, self.floor, self.prime, self.ignore_index, self.label_smoothing,
            backend=self.backend,
        )  # fmt: skip

    def select_rows(self, losses: Tensor, flags: Tensor, state: SelectorState) -> Selection:
        return select_flagged(
            losses, flags, state, self.beta, self.floor, self.prime, ops.resolve(self.backend, losses.device)
        )

    def _parameters(self) -> dict:
        return {"beta": self.beta, "floor": self.floor, "prime": self.prime}


def warn_if_history_short(state: SelectorState, rows: int) -> None:
    """Warn once per state when one call's rows outnumber the history (shapes only: no sync; eager only)."""
    if torch.compiler.is_compiling():
        return
    if state.history_size < rows and not state.warned_short_history:
        state.warned_short_history = True
        warnings.warn(
            f"history_size={state.history_size} is smaller than the {rows} rows of one call: every call "
            "overwrites the whole history, so each row is ranked only against the previous call's rows. Use a "
            f"history of a few calls' rows (history_size >= {rows}; e.g. SB(..., history_size={4 * rows})).",
            stacklevel=_caller_level(),
        )


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside sbkernels: a warning points at the user's call."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level
