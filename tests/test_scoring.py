"""Composer's downsampled scoring input (``scale_factor``): the interpolation by rank, and its errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sbkernels.scoring import downsample_for_scoring


@pytest.mark.parametrize(("shape", "mode"), [((2, 3, 16), "linear"), ((2, 3, 8, 12), "bilinear"),
                                             ((2, 1, 4, 8, 8), "trilinear")])  # fmt: skip
def test_interpolation_by_rank(shape, mode):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    got = downsample_for_scoring(x, 0.5)
    assert got.shape == (*shape[:2], *(s // 2 for s in shape[2:]))
    torch.testing.assert_close(got, F.interpolate(x, scale_factor=0.5, mode=mode))
    assert downsample_for_scoring(x, 1.0) is x


@pytest.mark.parametrize(("x", "factor", "message"), [
    (torch.randn(2, 3), 0.5, "needs 3-, 4- or 5-D inputs"),
    (torch.randn(2, 3, 4, 4), 1.5, r"scale_factor must be in \(0, 1\]"),
    (torch.randn(2, 3, 4, 4), 0.0, r"scale_factor must be in \(0, 1\]"),
])  # fmt: skip
def test_errors_name_the_fix(x, factor, message):
    with pytest.raises(ValueError, match=message):
        downsample_for_scoring(x, factor)
