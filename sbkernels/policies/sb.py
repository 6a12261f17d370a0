"""Policy "sb" (Jiang et al. 2019): keep each row with probability ``max(floor, pct ** beta)``.

``pct`` is the row's loss percentile against the state's history of recent losses (SPEC section 2). One
fused launch on CUDA (:mod:`sbkernels.kernels.select_sb`); one native C++ call on CPU by default
(``csrc/cpu/select_cpu.cpp``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import backend as backends
from .. import checks, library, reference
from ..distributed import SelectGathered, global_selection
from ..kernels import launch_select_sb
from ..rows import flag_masks, integer_beta
from ..selection import Selection
from ..state import SelectorState
from .base import Policy


def fused_selection(
    logits: Tensor | None,
    targets: Tensor | None,
    losses: Tensor | None,
    flags: Tensor | None,
    history: Tensor,
    meta: Tensor,
    *,
    beta: float,
    floor: float,
    prime: int,
    ignore_index: int,
    label_smoothing: float,
    fixed_prob: float,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The body of the "sb" and "uniform" (rate) ops: ``fixed_prob >= 0`` replaces the percentile rule.

    ``flags`` (with ``losses``): each row's :func:`~sbkernels.rows.row_flags`, for losses gathered from the
    ranks of a process group, whose ignored and bad-target rows must stay so.
    """
    if backend == "native":
        return torch.ops.sbkernels.select_sb_cpu(
            logits, targets, losses, flags, history, meta, beta, floor, prime, ignore_index, label_smoothing,
            fixed_prob, integer_beta(beta),
        )  # fmt: skip
    if backend == "triton":
        return launch_select_sb(
            logits=logits, targets=targets, losses=losses, flags=flags, history=history, meta=meta, beta=beta,
            floor=floor, prime=prime, ignore_index=ignore_index, label_smoothing=label_smoothing,
            fixed_prob=fixed_prob,
        )  # fmt: skip
    if logits is not None:
        loss, ignored, bad = reference.cross_entropy(logits, targets, ignore_index, label_smoothing)
    else:
        loss = losses.to(torch.float32, copy=True)  # an op's output must not alias its input
        if flags is not None:
            ignored, bad = flag_masks(flags)
        else:
            ignored = bad = torch.zeros(loss.shape, dtype=torch.bool, device=loss.device)
    return reference.select_sb(loss, ignored, bad, history, meta, beta, floor, prime, fixed_prob)


def _check_select_sb(
    logits, targets, losses, flags, history, meta, beta, floor, prime, ignore_index, label_smoothing, backend
) -> None:
    checks.check_op_inputs(logits, targets, losses, flags, history, meta, backend)
    checks.check_sb_params(beta, floor, prime, label_smoothing)


@library.register_op("select_sb", mutates_args={"history", "meta"}, check=_check_select_sb)
def _select_sb_op(
    logits: Tensor | None,
    targets: Tensor | None,
    losses: Tensor | None,
    flags: Tensor | None,
    history: Tensor,
    meta: Tensor,
    beta: float,
    floor: float,
    prime: int,
    ignore_index: int,
    label_smoothing: float,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return fused_selection(
        logits, targets, losses, flags, history, meta, beta=beta, floor=floor, prime=prime,
        ignore_index=ignore_index, label_smoothing=label_smoothing, fixed_prob=-1.0, backend=backend,
    )  # fmt: skip


def _select_sb_losses(
    losses: Tensor, flags: Tensor | None, state: SelectorState, beta: float, floor: float, prime: int, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The "sb" op on given losses (and, for losses gathered from every rank, their flags)."""
    return library.call(
        "select_sb", None, None, losses, flags, state.history, state.meta, float(beta), float(floor), prime, -100,
        0.0, backend,
    )  # fmt: skip


def _on_gathered(state: SelectorState, beta: float, floor: float, prime: int, backend: str) -> SelectGathered:
    """The "sb" op on losses gathered from every rank, with their flags."""
    return lambda losses, flags: _select_sb_losses(losses, flags, state, beta, floor, prime, backend)


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
    backend = backends.resolve(backend, logits.device)
    if state.process_group is not None:
        sel = global_selection(
            logits, targets, state, _on_gathered(state, beta, floor, prime, backend), ignore_index=ignore_index,
            label_smoothing=label_smoothing, backend=backend, validate=validate,
        )  # fmt: skip
    else:
        out = library.call(
            "select_sb", logits, targets, None, None, state.history, state.meta, float(beta), float(floor), prime,
            ignore_index, float(label_smoothing), backend,
        )  # fmt: skip
        sel = Selection(*out)
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
    backend: str | None = None,
) -> Selection:
    """Policy "sb" on precomputed per-example losses (any loss: detection, regression, per-sequence LM).

    Same rule as :func:`select` with the loss given: non-finite losses are never selected nor pushed.
    """
    checks.check_sb_params(beta, floor, prime)
    checks.check_source(losses, None, state)
    backend = backends.resolve(backend, losses.device)
    if state.process_group is not None:
        return global_selection(
            losses, None, state, _on_gathered(state, beta, floor, prime, backend), ignore_index=-100,
            label_smoothing=0.0, backend=backend,
        )  # fmt: skip
    return Selection(*_select_sb_losses(losses, None, state, beta, floor, prime, backend))


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

    def select(self, scores: Tensor, targets: Tensor | None, state: SelectorState) -> Selection:
        if targets is None:
            return select_losses(scores, state, self.beta, self.floor, self.prime, backend=self.backend)
        return select(
            scores, targets, state, self.beta, self.floor, self.prime, self.ignore_index, self.label_smoothing,
            backend=self.backend,
        )  # fmt: skip

    def _parameters(self) -> dict:
        return {"beta": self.beta, "floor": self.floor, "prime": self.prime}
