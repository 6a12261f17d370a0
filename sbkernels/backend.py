"""Which implementation an op call runs: the Triton kernels or the PyTorch reference.

``backend="auto"`` (the default) runs Triton on CUDA tensors and the reference on CPU tensors;
``"triton"`` forces the kernels (on CPU tensors through the Triton interpreter, ``TRITON_INTERPRET=1`` set
before import); ``"reference"`` forces the reference everywhere. The environment variable
``SBKERNELS_BACKEND`` sets the default. The ops receive the resolved name, never "auto".
"""

from __future__ import annotations

import os

import torch

from .kernels.common import interpreting

ENVIRONMENT_VARIABLE = "SBKERNELS_BACKEND"
CHOICES = ("auto", "triton", "reference")


def resolve(backend: str | None, device: torch.device) -> str:
    """ "triton" or "reference" for a call on ``device``; raises with the fix for an unusable choice."""
    backend = backend or os.environ.get(ENVIRONMENT_VARIABLE, "auto")
    if backend not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "reference"
    if backend == "triton" and device.type == "cpu" and not interpreting():
        raise ValueError(
            "backend='triton' on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 before "
            "importing sbkernels (or use CUDA tensors)"
        )
    return backend
