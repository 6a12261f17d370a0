"""Fixtures of the ops tests."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import ISAS


@pytest.fixture(params=ISAS)
def cpu_isa(request):
    """Runs the test with the native kernels compiled for one instruction set (skips if the CPU lacks it)."""
    before = torch.ops.sbkernels.cpu_isa("")
    try:
        torch.ops.sbkernels.cpu_isa(request.param)
    except RuntimeError as error:
        pytest.skip(str(error))
    yield request.param
    torch.ops.sbkernels.cpu_isa(before)
