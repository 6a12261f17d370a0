"""Which implementation an op call runs: the Triton kernels, the native CPU kernels or the PyTorch reference.

This module is the one place a backend is chosen: :func:`resolve` turns the user's ``backend`` into one
of :data:`BACKENDS`, and :data:`KERNELS` maps each kernel and backend to its implementation. The ops'
bodies (:mod:`sbkernels.ops._definitions`) look their kernel up here; no other module tests a backend name.

``backend="auto"`` (the default) runs Triton on CUDA tensors, the native C++ kernels on CPU tensors
(``csrc/cpu/select_cpu.cpp``) and the reference on any other device (``mps``, ``xpu``: its torch ops run
wherever torch does); ``"native"`` forces those (CPU tensors only); ``"triton"`` forces the Triton
kernels (on CPU tensors through the Triton interpreter, ``TRITON_INTERPRET=1`` set before import);
``"reference"`` forces the PyTorch reference everywhere. The environment variable
``SBKERNELS_BACKEND`` sets the default. The ops receive the resolved name, never "auto".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

import torch

from .. import kernels
from ..kernels import interpreting, require_triton
from . import _native, _reference_backend, _scored, _sequence

ENVIRONMENT_VARIABLE = "SBKERNELS_BACKEND"
CHOICES = ("auto", "native", "triton", "reference")
BACKENDS = ("native", "triton", "reference")

#: kernel name -> backend -> implementation. Every implementation of a kernel takes the same keyword
#: arguments and returns the same tuple. The batch-level bodies ("sample_rows", "gradmatch", "row_losses")
#: are one C++ call natively where one exists, else a scoring kernel of the backend and torch ops (_scored);
#: the language-model bodies are the backend's token (or tile) kernel and a torch reduction (_sequence).
KERNELS: dict[str, dict[str, Callable]] = {
    "select_sb": {
        "native": _native.select_sb,
        "triton": kernels.launch_select_sb,
        "reference": _reference_backend.select_sb,
    },
    "sample_rows": {
        "native": _native.sample_rows,
        "triton": partial(_scored.sample_rows, kernels.launch_row_stats),
        "reference": partial(_scored.sample_rows, _reference_backend.row_stats),
    },
    "gradmatch": {
        "native": partial(_scored.gradmatch_rows, _native.residuals),
        "triton": partial(_scored.gradmatch_rows, kernels.launch_residual),
        "reference": partial(_scored.gradmatch_rows, _reference_backend.residuals),
    },
    "sequence_losses": {
        "native": partial(_sequence.sequence_losses, _native.token_losses),
        "triton": partial(_sequence.sequence_losses, kernels.launch_token_losses),
        "reference": partial(_sequence.sequence_losses, _reference_backend.token_losses),
    },
    "linear_sequence_losses": {
        "native": partial(_sequence.linear_sequence_losses, _native.tile_stats),
        "triton": partial(_sequence.fused_linear_sequence_losses, kernels.launch_linear_token_losses),
        "reference": partial(_sequence.linear_sequence_losses, _reference_backend.tile_stats),
    },
    "row_losses": {
        "native": partial(_scored.row_losses, _native.row_stats),
        "triton": partial(_scored.row_losses, kernels.launch_row_stats),
        "reference": _reference_backend.row_losses,
    },
}


def kernel(name: str, backend: str) -> Callable:
    """The implementation of kernel ``name`` on ``backend`` (one of :data:`BACKENDS`, from :func:`resolve`)."""
    return KERNELS[name][backend]


def resolve(backend: str | None, device: torch.device) -> str:
    """The backend ("native", "triton" or "reference") of a call on ``device``; raises with the fix."""
    backend = backend or os.environ.get(ENVIRONMENT_VARIABLE, "auto")
    if backend not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {backend!r}")
    if backend == "auto":  # devices without kernels of their own (mps, xpu, ...) run the reference's torch ops
        backend = {"cuda": "triton", "cpu": "native"}.get(device.type, "reference")
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


def check_resolved(backend: object, device: torch.device) -> None:
    """An op's ``backend`` argument: one of :data:`BACKENDS` (never "auto"), able to run on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (resolved, not 'auto'), got {backend!r}")
    if backend == "native" and device.type != "cpu":
        raise ValueError(f"backend='native' runs on CPU tensors, got {device}; use 'triton' for CUDA")
