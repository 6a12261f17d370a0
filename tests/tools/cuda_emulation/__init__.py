"""Builds the host emulation of the CUDA gather kernel (``torch.ops.sbkernels_emulated``) for the tests.

The kernel's source needs the CUDA runtime headers (types only; nothing is linked), found through nvcc.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def cuda_include_dirs() -> list[str]:
    """The include directories nvcc passes for CUDA sources (empty if nvcc is not on PATH)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return []
    dry = subprocess.run(
        [nvcc, "--dryrun", "-c", "-x", "cu", "/dev/null", "-o", "/dev/null"], capture_output=True, text=True
    )
    match = re.search(r'INCLUDES="([^"]*)"', dry.stdout + dry.stderr)
    dirs = re.findall(r"-I\s*(\S+)", match.group(1)) if match else []
    return [d for d in dirs if Path(d, "cuda_runtime_api.h").exists()]


@functools.cache
def load() -> str | None:
    """Compile and load the emulation once per session; returns why not (a skip reason) or None."""
    includes = cuda_include_dirs()
    if not includes:
        return "nvcc / CUDA headers not found: the CUDA gather kernel cannot be emulated"
    from torch.utils import cpp_extension

    build = ROOT / "build" / "cuda_emulation"
    build.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name="sbkernels_cuda_emulation",
        sources=[str(HERE / "gather_rows_emulated.cpp")],
        extra_include_paths=includes,
        extra_cflags=["-O2"],
        build_directory=str(build),
        is_python_module=False,
    )
    assert hasattr(torch.ops.sbkernels_emulated, "gather_rows")
    return None
