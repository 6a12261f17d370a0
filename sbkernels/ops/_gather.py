"""Python face of the C++/CUDA ``sbkernels::gather_rows`` op (its fake is in :mod:`._fakes`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..slots import CURSOR_SIZE  # importing slots loads the extension that registers sbkernels::gather_rows


def new_cursor(device: torch.device | str) -> Tensor:
    """A zeroed cursor on ``device``: int64, slots ``CURSOR_*`` of :mod:`sbkernels.slots`."""
    return torch.zeros(CURSOR_SIZE, dtype=torch.int64, device=device)


def gather_rows(
    sources: Sequence[Tensor], indices: Tensor, count: Tensor, outputs: Sequence[Tensor], cursor: Tensor
) -> None:
    """Append ``src[indices[:count]]`` to each output at row ``cursor[0]``, in one launch, without a sync.

    Args:
        sources: tensors with the same leading dim N; any dtype, any trailing shape, any strides.
        indices: (K,) int64/int32 row indices (e.g. ``Selection.indices``).
        count: 0-d int32/int64 on the device: how many of ``indices`` to take (e.g. ``Selection.count``).
        outputs: contiguous tensors, one per source, with the source's trailing shape and dtype and the
            same leading dim M (the capacity).
        cursor: from :func:`new_cursor`. ``cursor[CURSOR_OFFSET]`` advances by the rows written; rows that
            do not fit below M are added to ``cursor[CURSOR_OVERFLOW]`` (never written); indices outside
            [0, N) get a zero row and are added to ``cursor[CURSOR_INVALID]``.
    """
    torch.ops.sbkernels.gather_rows(list(sources), indices, count, list(outputs), cursor)
