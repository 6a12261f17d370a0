#!/usr/bin/env bash
# make asan: the extension built with AddressSanitizer + UBSan in its own folder (build/asan), and the native,
# gather, state, pool, hardening, layout and fuzz tests run against it. Then the negative control: the same build with
# one check deliberately removed (build/asan-control) must make the fuzz harness report that case.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# libstdc++ is preloaded with the runtime: python itself does not link it, and ASan must find the real
# __cxa_throw when it starts, or the first C++ exception (every refused argument) aborts.
preload="$(${CXX:-g++} -print-file-name=libasan.so) $(readlink -f "$(${CXX:-g++} -print-file-name=libstdc++.so)")"
export ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0:new_delete_type_mismatch=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# A copy of the package, the tests and the build files in $1, built there with the sanitizers.
sanitized_tree() {
  local dir=$1
  rm -rf "$dir/sbkernels" "$dir/tests" "$dir/csrc"
  mkdir -p "$dir"
  cp -r sbkernels tests csrc setup.py pyproject.toml "$dir/"
  find "$dir/sbkernels" -name "*.so" -delete
}
build_tree() {
  (cd "$1" && SBKERNELS_SANITIZE=1 SBKERNELS_NO_CUDA=1 $PYTHON setup.py -q build_ext --inplace >build.log 2>&1) \
    || { tail -30 "$1/build.log"; exit 1; }
}

sanitized_tree build/asan
build_tree build/asan
echo "asan: built build/asan; running the tests under AddressSanitizer + UBSan"
(cd build/asan && LD_PRELOAD="$preload" SBKERNELS_SANITIZED=1 TRITON_INTERPRET=1 $PYTHON -m pytest -q -p no:cacheprovider \
  tests/ops/test_native.py tests/ops/test_gather.py tests/pool/test_pool.py tests/test_hardening.py tests/ops/test_fuzz.py \
  tests/ops/test_large_offsets.py tests/ops/test_sequences.py tests/ops/test_tile_stats.py tests/pool/test_padding.py \
  tests/ops/test_layouts.py tests/test_hardening_inputs.py)

# Negative control: select_sb_cpu without its meta check writes before history[0] on a negative `pushed`;
# the fuzz harness, run against that build, must report the case (ASan aborts it).
sanitized_tree build/asan-control
grep -q 'check_meta(meta, "select_sb_cpu");' build/asan-control/csrc/cpu/select_cpu.cpp
sed -i '/check_meta(meta, "select_sb_cpu");/d' build/asan-control/csrc/cpu/select_cpu.cpp
build_tree build/asan-control
echo "asan: negative control (select_sb_cpu's meta check removed)"
(cd build/asan-control && LD_PRELOAD="$preload" SBKERNELS_FUZZ_EXPECT_CAUGHT=select_sb_cpu.meta_negative_pushed \
  TRITON_INTERPRET=1 $PYTHON -m pytest -q -p no:cacheprovider tests/ops/test_fuzz.py -k negative_build)
