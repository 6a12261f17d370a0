"""Triton kernels. Each module holds one kernel family and its launcher; inputs are validated by callers.

Importing this package does not import triton: triton is optional (a CPU install runs the native ops and
needs no triton). The launchers below import their kernel module on first use; :func:`require_triton`
turns a missing triton into an error that says how to get it.
"""

from __future__ import annotations

import contextlib
import os

import torch


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1 before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.cuda.device(device)`` for a CUDA device (launches and events go to that GPU), else a no-op."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def require_triton(what: str) -> None:
    if not triton_available():
        raise ImportError(
            f"{what} needs triton (>= 3.6), which is not installed: pip install 'triton>=3.6' "
            "(Linux with CUDA), or use backend='native' (CPU) or backend='reference'"
        )


def launch_select_sb(**arguments):
    """:func:`sbkernels.kernels.select_sb.launch_select_sb`, imported on first use."""
    from .select_sb import launch_select_sb as launch

    return launch(**arguments)


def launch_row_stats(**arguments):
    """:func:`sbkernels.kernels.row_stats.launch_row_stats`, imported on first use."""
    from .row_stats import launch_row_stats as launch

    return launch(**arguments)


def launch_residual(**arguments):
    """:func:`sbkernels.kernels.row_stats.launch_residual`, imported on first use."""
    from .row_stats import launch_residual as launch

    return launch(**arguments)


def launch_token_losses(**arguments):
    """:func:`sbkernels.kernels.sequence.launch_token_losses`, imported on first use."""
    from .sequence import launch_token_losses as launch

    return launch(**arguments)


def launch_linear_token_losses(**arguments):
    """:func:`sbkernels.kernels.sequence.launch_linear_token_losses`, imported on first use."""
    from .sequence import launch_linear_token_losses as launch

    return launch(**arguments)
