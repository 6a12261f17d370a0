"""Helpers of the scoring pass. ``scale_factor``: score on a downsampled input, as Composer can (SPEC
section 10): the selection forward pass sees a smaller image (or signal, or volume), the backward batch the
full-size rows."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

#: Interpolation by input rank, as Composer's ``select_using_loss`` chooses it: (N, C, L), (N, C, H, W),
#: (N, C, D, H, W).
INTERPOLATION = {3: "linear", 4: "bilinear", 5: "trilinear"}


def check_scale_factor(scale_factor: object) -> None:
    if isinstance(scale_factor, bool) or not isinstance(scale_factor, int | float) or not 0 < scale_factor <= 1:
        raise ValueError(f"scale_factor must be in (0, 1] (1: no downsampling), got {scale_factor!r}")


def downsample_for_scoring(inputs: Tensor, scale_factor: float) -> Tensor:
    """``inputs`` resized by ``scale_factor`` in (0, 1] along their spatial dims for the scoring pass
    (unchanged at 1). Raises with the fix for another rank or a factor outside (0, 1]."""
    check_scale_factor(scale_factor)
    if scale_factor == 1:
        return inputs
    if not isinstance(inputs, Tensor) or inputs.dim() not in INTERPOLATION:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(
            f"scale_factor < 1 needs 3-, 4- or 5-D inputs (N, C, ...spatial), got {shape}; use scale_factor=1"
        )
    return F.interpolate(inputs, scale_factor=scale_factor, mode=INTERPOLATION[inputs.dim()])
