"""Builds sbkernels._C: the gather_rows op (CPU always; CUDA when torch has CUDA and nvcc is found).

pip install -e . --no-build-isolation         # uses the torch already installed
SBKERNELS_NO_CUDA=1 pip install -e . ...      # CPU-only build even with a CUDA torch
SBKERNELS_SANITIZE=1 python setup.py build_ext --inplace   # AddressSanitizer + UBSan (make asan)
"""

import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

CPU_SOURCES = [
    "csrc/sbkernels.cpp",
    "csrc/cpu/gather_rows_cpu.cpp",
    "csrc/cpu/select_cpu.cpp",
    "csrc/cpu/draw_cpu.cpp",
    "csrc/cpu/isa_cpu.cpp",
    "csrc/cpu/sample_cpu.cpp",
    "csrc/cpu/tile_stats_cpu.cpp",
]
CUDA_SOURCES = ["csrc/cuda/gather_rows_kernel.cu", "csrc/cuda/gather_rows_cuda.cpp"]
# No -std: torch picks the standard its headers need (C++20 on torch 2.13). -fno-trapping-math and
# -fno-math-errno let the compiler vectorize the float selects and exps of the CPU kernels (inf and NaN keep
# their IEEE meaning, unlike -ffast-math).
CXX_FLAGS = ["-O3", "-fno-trapping-math", "-fno-math-errno", "-Wno-psabi", "-fopenmp"]
# at::parallel_for is a header template that runs on one thread unless the extension itself is built with
# OpenMP (torch's CPU wheels parallelize with OpenMP); the OpenMP runtime that torch has loaded serves it.
LINK_FLAGS = ["-fopenmp"]
# make asan: every error a sanitizer finds aborts the process (a test then fails), frames stay readable.
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
if os.environ.get("SBKERNELS_SANITIZE") == "1":
    CXX_FLAGS = [*CXX_FLAGS, *SANITIZE_FLAGS, "-O1"]
    LINK_FLAGS = [*LINK_FLAGS, *SANITIZE_FLAGS]


def extension():
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None and os.environ.get("SBKERNELS_NO_CUDA") != "1"
    if with_cuda:
        return CUDAExtension(
            "sbkernels._C",
            CPU_SOURCES + CUDA_SOURCES,
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3"]},
            extra_link_args=LINK_FLAGS,
        )
    return CppExtension("sbkernels._C", CPU_SOURCES, extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=LINK_FLAGS)


setup(ext_modules=[extension()], cmdclass={"build_ext": BuildExtension})
