# sbkernels build and test entry points. `make test` and `make demo` install only what is missing.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
NVCC ?= nvcc
CUDA_ARCHS ?= 80 90
# module:requirement pairs; torch is pinned to the CPU wheel that this machine has on disk.
DEPS := triton:triton numpy:numpy pytest:pytest hypothesis:hypothesis scipy:scipy \
        pytest_benchmark:pytest-benchmark sklearn:scikit-learn matplotlib:matplotlib tqdm:tqdm ruff:ruff \
        ninja:ninja mypy:mypy clang_format:clang-format transformers:transformers accelerate:accelerate lightning:lightning

.PHONY: all deps build lint test asan cuda-compile cuda-binding-check demo bench clean

all: test

deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	@missing=""; for dep in $(DEPS); do mod=$${dep%%:*}; req=$${dep#*:}; \
	  $(PYTHON) -c "import $$mod" 2>/dev/null || missing="$$missing $$req"; done; \
	  if [ -n "$$missing" ]; then echo "installing:$$missing"; $(PIP) install -q $$missing; fi

build: deps
	$(PIP) install -q --no-build-isolation --no-deps -e .

# ruff (lint and format), mypy on sbkernels/ (config in pyproject.toml) and clang-format on the C++/CUDA sources.
CXX_SOURCES = $(shell git ls-files 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh' 'tests/tools/cuda_emulation/*.cpp')
lint: deps
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy
	$$($(PYTHON) -c "import clang_format; print(clang_format.get_executable('clang-format'))") --dry-run --Werror $(CXX_SOURCES)

test: build lint
	TRITON_INTERPRET=1 $(PYTHON) -m pytest -q
	$(MAKE) --no-print-directory cuda-compile cuda-binding-check

# Compiles every pure-CUDA source for each arch in CUDA_ARCHS (no GPU needed).
cuda-compile:
	@if command -v $(NVCC) >/dev/null 2>&1; then \
	  mkdir -p build/nvcc; \
	  for src in $$(find csrc -name "*.cu"); do for arch in $(CUDA_ARCHS); do \
	    echo "nvcc sm_$$arch $$src"; \
	    $(NVCC) -std=c++17 -O3 -Werror all-warnings -gencode arch=compute_$$arch,code=sm_$$arch \
	      -c $$src -o build/nvcc/$$(basename $$src .cu).sm_$$arch.o || exit 1; \
	  done; done; \
	else echo "nvcc not found: CUDA sources not compiled"; fi

# Syntax-checks the torch-facing CUDA bindings (csrc/cuda/*.cpp) against the installed torch's c10 CUDA headers
# and nvcc's CUDA runtime headers, so an API slip fails here and not first on a GPU machine. A CPU-only torch
# lacks one generated header, c10/cuda/impl/cuda_cmake_macros.h; a copy of its one definition stands in,
# searched after torch's own include paths.
CXX ?= g++
cuda-binding-check:
	@if command -v $(NVCC) >/dev/null 2>&1; then \
	  mkdir -p build/shim/c10/cuda/impl; \
	  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > build/shim/c10/cuda/impl/cuda_cmake_macros.h; \
	  cuda_inc=$$($(NVCC) --dryrun -c -x cu /dev/null -o /dev/null 2>&1 \
	    | sed -n 's/.*INCLUDES="\([^"]*\)".*/\1/p' | head -1 | sed 's/-I/-isystem /g'); \
	  torch_inc=$$($(PYTHON) -c "import torch.utils.cpp_extension as c; \
	    print(' '.join('-isystem ' + p for p in c.include_paths()))"); \
	  for src in csrc/cuda/*.cpp; do \
	    echo "$(CXX) -fsyntax-only $$src"; \
	    $(CXX) -std=c++17 -fsyntax-only -Wall -Wextra -Werror $$torch_inc -isystem build/shim $$cuda_inc \
	      $$src || exit 1; \
	  done; \
	else echo "nvcc not found: CUDA bindings not checked"; fi

demo: build
	$(PYTHON) -m examples.demo

bench: build
	$(PYTHON) -m benchmarks.report

clean:
	rm -rf build sbkernels/*.so *.egg-info

# AddressSanitizer + UBSan build of the extension in build/asan, the native / gather / pool / state / fuzz tests
# against it, and the negative control (one check removed must be caught). See .ci/asan.sh.
asan: deps
	PYTHON=$(PYTHON) bash .ci/asan.sh
