"""Policy "uniform": the loss-blind baseline. Each valid row with probability ``rate``, or exactly ``k`` rows.

With ``rate`` it is the fused "sb" kernel with a fixed probability (one launch), so the losses are still
pushed into the history (to compare with "sb" on the same state). With ``k`` it draws k valid rows
without replacement from the scoring pass and pushes nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import backend as backends
from .. import checks, library, sampling
from ..distributed import global_selection, row_offset
from ..selection import Selection
from ..state import SelectorState
from .base import Policy
from .sb import fused_selection
from .scored import score_rows


def _check_uniform(logits, targets, losses, flags, history, meta, rate, k, row_offset, ignore_index, backend) -> None:
    source = checks.check_op_inputs(logits, targets, losses, flags, history, meta, backend)
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not rate <= 1.0:  # NaN fails too
        raise ValueError(f"rate must be in [0, 1], or negative to draw exactly k rows, got {rate!r}")
    if rate < 0:
        checks.check_k(k, source.shape[0])
    checks.check_row_offset(row_offset, source.shape[0])


@library.register_op("uniform", mutates_args={"history", "meta"}, check=_check_uniform)
def _uniform_op(
    logits: Tensor | None, targets: Tensor | None, losses: Tensor | None, flags: Tensor | None, history: Tensor,
    meta: Tensor, rate: float, k: int, row_offset: int, ignore_index: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    if rate >= 0:
        return fused_selection(
            logits, targets, losses, flags, history, meta, beta=1.0, floor=0.0, prime=0, ignore_index=ignore_index,
            label_smoothing=0.0, fixed_prob=rate, backend=backend,
        )  # fmt: skip
    if backend == "native":  # the whole op in one C++ call (csrc/cpu/sample_cpu.cpp)
        out = torch.ops.sbkernels.sample_rows_cpu(
            logits, targets, losses, meta, "uniform", 0.0, k, ignore_index, row_offset
        )
        return out[:4]
    rows = score_rows(logits, targets, losses, meta, ignore_index=ignore_index, row_offset=row_offset, backend=backend)
    indices, count = sampling.sample_without_replacement(rows.valid.float(), rows.u, k)
    n_valid = rows.valid.sum().clamp_min(1)
    prob = torch.where(rows.valid, n_valid.clamp_max(k) / n_valid, 0.0)  # the inclusion probability
    return indices, count, rows.loss, prob


def select_uniform(
    source: Tensor,
    targets: Tensor | None,
    state: SelectorState,
    rate: float | None = None,
    k: int | None = None,
    *,
    ignore_index: int = -100,
    backend: str | None = None,
) -> Selection:
    """Loss-blind baseline: each valid row with probability ``rate``, or exactly ``k`` rows."""
    _check_rate_or_k(rate, k)
    checks.check_source(source, targets, state)
    if k is not None:
        checks.check_k(k, source.shape[0])
    backend = backends.resolve(backend, source.device)
    if rate is not None and state.process_group is not None:  # a rate is global, like "sb"

        def on_gathered(losses: Tensor, flags: Tensor):
            return library.call(
                "uniform", None, None, losses, flags, state.history, state.meta, float(rate), -1, 0, -100, backend
            )

        return global_selection(
            source, targets, state, on_gathered, ignore_index=ignore_index, label_smoothing=0.0, backend=backend
        )
    logits, losses = (source, None) if targets is not None else (None, source)
    out = library.call(
        "uniform", logits, targets, losses, None, state.history, state.meta, -1.0 if rate is None else float(rate),
        -1 if k is None else k, row_offset(state, source.shape[0]), ignore_index, backend,
    )  # fmt: skip
    return Selection(*out)


def _check_rate_or_k(rate: float | None, k: int | None) -> None:
    if (rate is None) == (k is None):
        raise ValueError("pass exactly one of rate or k")
    if rate is not None:
        checks.check_fraction("rate", rate, low_open=False)


class Uniform(Policy):
    """``Uniform(rate=0.3)`` keeps each row with probability 0.3; ``Uniform(k=32)`` exactly 32 rows."""

    name = "uniform"

    def __init__(self, rate: float | None = None, k: int | None = None, **common) -> None:
        _check_rate_or_k(rate, k)
        super().__init__(**common)
        self.rate, self.k = rate, k

    def select(self, scores: Tensor, targets: Tensor | None, state: SelectorState) -> Selection:
        k = None if self.k is None else min(self.k, scores.shape[0])  # a short last batch
        return select_uniform(
            scores, targets, state, self.rate, k, ignore_index=self.ignore_index, backend=self.backend
        )

    def _parameters(self) -> dict:
        return {"rate": self.rate} if self.k is None else {"k": self.k}
