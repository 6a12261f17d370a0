#!/usr/bin/env bash
# Everything a GPU session proves, in one call, on a bare machine with torch, triton and nvcc but no network:
# builds the extension, runs the GPU tests, the comparison report, the step benchmark and the microbenchmarks,
# and writes logs and results into OUT_DIR, ready to commit under benchmarks/results/.
# Installs nothing. Budget: about 10 minutes on an H100/H200.
#
#   benchmarks/gpu_run.sh OUT_DIR            # e.g. "$OUT" on the device machine
#   SBKERNELS_COMMIT=$(git rev-parse --short HEAD) benchmarks/gpu_run.sh OUT_DIR   # when .git is absent
#   STEPS="build gpu-tests" benchmarks/gpu_run.sh OUT_DIR     # only these steps (split across device calls)
set -uo pipefail
out=${1:?usage: benchmarks/gpu_run.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
log="$out/gpu_run.log"
export PYTHONUNBUFFERED=1
commit=${SBKERNELS_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export SBKERNELS_COMMIT=$commit
status=0
step() {  # step NAME COMMAND...: run, log, remember failure, keep going (skipped if not in $STEPS)
  local name=$1; shift
  if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then return; fi
  echo "=== $name: $*" | tee -a "$log"
  local t0=$SECONDS
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
  [ "$rc" -eq 0 ] || status=1
}
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit: $commit"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  nvcc --version | tail -2
} 2>&1 | tee "$log"

step build env MAX_JOBS=16 python3 setup.py build_ext --inplace -q
step gpu-tests timeout 300 python3 -m pytest tests -q -x --junitxml="$out/pytest-gpu.xml" -p no:cacheprovider
# No interpreter suite here: the device image pairs triton 3.6 with numpy 2.5, which its interpreter cannot run
# (tests/conftest.py explains); CI runs the interpreter suite on triton >= 3.9.
step report timeout 240 python3 -m benchmarks.report --out "$out"
step step-benchmark timeout 120 python3 -m benchmarks.step --out "$out"
step microbenchmarks timeout 150 python3 -m pytest benchmarks -q --benchmark-only -p no:cacheprovider \
  --benchmark-json="$out/microbench.json" --benchmark-columns=median,iqr,rounds --benchmark-sort=name
echo "gpu_run: $( [ $status -eq 0 ] && echo all steps passed || echo SOME STEPS FAILED ) (see $log)" | tee -a "$log"
exit $status
