"""Test set-up: Triton kernels run in the CPU interpreter unless a GPU is present.

TRITON_INTERPRET must be set before triton is first imported, so it is decided here, before sbkernels.
On a GPU machine the kernels run on CUDA tensors; ``SBKERNELS_TEST_INTERPRET=1`` forces the interpreter
there too.

Triton 3.6's interpreter (and, as far as we know, 3.7-3.8) cannot use a runtime scalar as a Python ``range``
bound once numpy >= 2.4 refuses ``int()`` of a 1-element array; triton 3.9 fixed it. The kernels loop over
runtime sizes, so the session stops at once with the fix instead of failing every kernel test obscurely.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available() or os.environ.get("SBKERNELS_TEST_INTERPRET") == "1":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest
import triton
import triton.language as tl

from sbkernels.kernels.common import interpreting


@triton.jit
def _loop_to_runtime_bound(out_ptr, n):
    for i in range(0, n, 1):
        tl.store(out_ptr + i, i)


def _check_interpreter() -> None:
    """Stop with the remedy if this triton/numpy pair cannot interpret a loop over a runtime bound."""
    out = torch.zeros(3, dtype=torch.int32)
    try:
        _loop_to_runtime_bound[(1,)](out, 3)
    except Exception as exc:  # triton wraps the numpy TypeError in its InterpreterError
        import numpy

        pytest.exit(
            f"triton {triton.__version__}'s interpreter cannot run the kernels with numpy {numpy.__version__} "
            f"({exc!r}); install triton>=3.9 or numpy<2.4 to run the kernel tests on CPU",
            returncode=3,
        )
    assert out.tolist() == [0, 1, 2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: runs only where CUDA is present")
    config.addinivalue_line(
        "markers", "slow: starts processes, compiles or trains (`pytest -m 'not slow'` skips them; CI runs all)"
    )
    if interpreting():
        _check_interpreter()
