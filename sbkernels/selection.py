"""The result type every selection policy returns."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Selection(NamedTuple):
    """Rows chosen for the backward pass, all on the device of the inputs.

    Attributes:
        indices: (N,) int64; the selected rows in ascending order in the first ``count`` slots, -1 after.
        count: 0-d int32; number of selected rows (device-side, read it without syncing via the pool).
        loss: (N,) float32 per-example loss (0 for ignored rows, NaN for rows with bad targets).
        prob: (N,) float32 selection probability (0 for rows that can never be selected).
        weight: (N,) float32 unbiasing weights for policies that return them, else None.
    """

    indices: torch.Tensor
    count: torch.Tensor  # type: ignore[assignment]  # shadows tuple.count; the name is the API
    loss: torch.Tensor
    prob: torch.Tensor
    weight: torch.Tensor | None = None
