"""Which implementation an op call runs: the Triton kernels, the native CPU kernels or the PyTorch reference.

``backend="auto"`` (the default) runs Triton on CUDA tensors and the native C++ kernels on CPU tensors
(``csrc/cpu/select_cpu.cpp``); ``"native"`` forces those (CPU tensors only); ``"triton"`` forces the Triton
kernels (on CPU tensors through the Triton interpreter, ``TRITON_INTERPRET=1`` set before import);
``"reference"`` forces the PyTorch reference everywhere. The environment variable
``SBKERNELS_BACKEND`` sets the default. The ops receive the resolved name, never "auto".
"""

from __future__ import annotations

import os

import torch

from .kernels import interpreting, require_triton

ENVIRONMENT_VARIABLE = "SBKERNELS_BACKEND"
CHOICES = ("auto", "native", "triton", "reference")


def resolve(backend: str | None, device: torch.device) -> str:
    """The backend ("native", "triton" or "reference") of a call on ``device``; raises with the fix."""
    backend = backend or os.environ.get(ENVIRONMENT_VARIABLE, "auto")
    if backend not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {backend!r}")
    if backend == "auto":
        backend = "triton" if device.type == "cuda" else "native"
    if backend == "triton":
        require_triton(f"backend='triton' on {device}")
    if backend == "native" and device.type != "cpu":
        raise ValueError(f"backend='native' runs on CPU tensors, got {device}; use 'auto' or 'triton' for CUDA")
    if backend == "triton" and device.type == "cpu" and not interpreting():
        raise ValueError(
            "backend='triton' on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 before "
            "importing sbkernels (or use CUDA tensors)"
        )
    return backend
