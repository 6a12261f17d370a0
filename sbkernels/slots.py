"""Slot numbers of ``SelectorState.meta`` and of the gather cursor, and the row flags, named once in
``csrc/slots.h``.

The compiled extension exports them (``sbkernels._C``); Python code uses these names and the Triton
kernels the constexprs of ``kernels/common.py``, so no slot is ever written as a bare number.
"""

from __future__ import annotations

import torch  # noqa: F401  (loads libc10 and libtorch, which the extension links against)

try:
    from . import _C  # type: ignore[attr-defined]  # loading the library runs its TORCH_LIBRARY registrations (every C++ op)
except ImportError as error:  # pragma: no cover - exercised only on an unbuilt checkout
    raise ImportError(
        "sbkernels._C, the compiled extension, is not built: run `make build` (or `pip install -e . "
        "--no-build-isolation`) in the sbkernels checkout"
    ) from error

META_PUSHED: int = _C.META_PUSHED  # losses ever pushed into the history
META_SEED: int = _C.META_SEED  # Philox seed
META_STEP: int = _C.META_STEP  # calls made so far: the high 32 bits of every Philox offset
META_NONFINITE: int = _C.META_NONFINITE  # rows whose loss was NaN or +-inf
META_BAD_TARGETS: int = _C.META_BAD_TARGETS  # rows whose target was outside [0, C) and not ignore_index
META_TICKET: int = _C.META_TICKET  # select kernel scratch, 0 between calls
META_SIZE_MISMATCH: int = _C.META_SIZE_MISMATCH  # global calls whose ranks passed different batch sizes
META_SIZE: int = _C.META_SIZE

CURSOR_OFFSET: int = _C.CURSOR_OFFSET  # rows written so far
CURSOR_OVERFLOW: int = _C.CURSOR_OVERFLOW  # rows that did not fit (never written)
CURSOR_INVALID: int = _C.CURSOR_INVALID  # indices outside [0, N) (zero-filled slots)
CURSOR_TICKET: int = _C.CURSOR_TICKET  # CUDA kernel scratch, 0 between launches
CURSOR_SIZE: int = _C.CURSOR_SIZE

ROW_VALID: int = _C.ROW_VALID  # a row that may be selected (if its loss is finite)
ROW_IGNORED: int = _C.ROW_IGNORED  # target == ignore_index
ROW_BAD_TARGET: int = _C.ROW_BAD_TARGET  # target outside [0, C)

MAX_COUNTER: int = _C.MAX_COUNTER  # the largest value of pushed, step or an error count a run can reach
MAX_INTEGER_BETA: int = _C.MAX_INTEGER_BETA  # pct ** beta by repeated multiplication for whole beta up to this
