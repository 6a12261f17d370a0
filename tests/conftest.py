"""Test set-up: Triton kernels run in the CPU interpreter unless a GPU is present.

TRITON_INTERPRET must be set before triton is first imported, so it is decided here, before sbkernels.
On a GPU machine the kernels run on CUDA tensors; ``SBKERNELS_TEST_INTERPRET=1`` forces the interpreter
there too (the device script runs the suite both ways).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available() or os.environ.get("SBKERNELS_TEST_INTERPRET") == "1":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest

from sbkernels.kernels.select_sb import interpreting

HAS_CUDA = torch.cuda.is_available()


def kernel_devices() -> list[str]:
    """Devices on which the Triton path can run in this session."""
    return ["cpu"] if interpreting() else ["cuda"]


def backend_devices() -> list[tuple[str, str]]:
    """(backend, device) pairs every semantic test runs on."""
    pairs = [("reference", "cpu"), *[("triton", d) for d in kernel_devices()]]
    if HAS_CUDA:
        pairs.append(("reference", "cuda"))
    return pairs


requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: runs only where CUDA is present")
