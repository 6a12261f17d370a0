"""Policy "keep" (MosaicML Composer's selective backprop): exactly ``int(keep * N)`` rows per batch.

Rows are sampled without replacement with weights ``((rank + 0.5) / n) ** (1 / keep - 1)``, rank ascending
in loss within the batch's valid rows: high-loss rows are likelier. No history.
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


def _check_keep(logits, targets, losses, meta, keep, row_offset, ignore_index, backend) -> None:
    source = checks.check_op_inputs(logits, targets, losses, None, None, meta, backend)
    checks.check_fraction("keep", keep)
    checks.check_row_offset(row_offset, source.shape[0])


@library.register_op("keep", mutates_args={"meta"}, check=_check_keep)
def _keep_op(
    logits: Tensor | None, targets: Tensor | None, losses: Tensor | None, meta: Tensor, keep: float, row_offset: int,
    ignore_index: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    if backend == "native":  # the whole op in one C++ call (csrc/cpu/sample_cpu.cpp)
        out = torch.ops.sbkernels.sample_rows_cpu(
            logits, targets, losses, meta, "keep", keep, 0, ignore_index, row_offset
        )
        return out[:4]
    rows = score_rows(logits, targets, losses, meta, ignore_index=ignore_index, row_offset=row_offset, backend=backend)
    weight = sampling.keep_weights(rows.loss, rows.valid, keep)
    indices, count = sampling.sample_without_replacement(weight, rows.u, int(keep * rows.loss.numel()))
    return indices, count, rows.loss, weight / weight.sum().clamp_min(1e-30)


def select_keep(
    source: Tensor,
    targets: Tensor | None,
    state: SelectorState,
    keep: float = 0.5,
    *,
    ignore_index: int = -100,
    backend: str | None = None,
) -> Selection:
    """Composer's selective backprop: ``int(keep * N)`` rows by rank-weighted sampling without replacement.

    ``source`` is (N, C) logits with ``targets``, or (N,) per-example losses with ``targets=None``.
    Invalid rows (ignored, bad target, non-finite) are never drawn, so fewer rows come back if fewer are
    valid. ``prob`` is each row's share of the sampling weight (its chance to be the first draw).
    """
    checks.check_fraction("keep", keep)
    checks.check_source(source, targets, state)
    logits, losses = (source, None) if targets is not None else (None, source)
    out = library.call(
        "keep", logits, targets, losses, state.meta, float(keep), row_offset(state, source.shape[0]), ignore_index,
        backends.resolve(backend, source.device),
    )  # fmt: skip
    return Selection(*out)


class Keep(Policy):
    """Composer's "keep": ``Keep(0.5)(logits, targets)`` backpropagates half of every batch."""

    name = "keep"

    def __init__(self, keep: float = 0.5, **common) -> None:
        checks.check_fraction("keep", keep)
        super().__init__(**common)
        self.keep = keep

    def select(self, scores: Tensor, targets: Tensor | None, state: SelectorState) -> Selection:
        return select_keep(scores, targets, state, self.keep, ignore_index=self.ignore_index, backend=self.backend)

    def _parameters(self) -> dict:
        return {"keep": self.keep}
