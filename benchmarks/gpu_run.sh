#!/usr/bin/env bash
# Everything a GPU session proves, in one call, on a bare machine with torch, triton and nvcc but no network:
# builds the extension, runs the GPU tests, the comparison report, the step benchmark and the microbenchmarks,
# and writes logs and results into OUT_DIR, ready to commit under benchmarks/results/.
# Installs nothing. Every step runs even when an earlier one failed; the last line says which failed.
#
#   benchmarks/gpu_run.sh OUT_DIR            # e.g. "$OUT" on the device machine
#   SBKERNELS_COMMIT=$(git rev-parse --short HEAD) benchmarks/gpu_run.sh OUT_DIR   # when .git is absent
#   STEPS="build gpu-only" benchmarks/gpu_run.sh OUT_DIR      # only these steps (split across device calls)
#   DRY_RUN=1 benchmarks/gpu_run.sh OUT_DIR   # log what each step would run, run nothing
#
# Steps, in order: build, gpu-only (tests/kernels/test_gpu.py: no-sync, CUDA graphs, N*C > 2**31, compile, two GPUs),
# equality (every other test file, tests/ and its subfolders, on CUDA tensors, one file at a time), report,
# step-benchmark, microbenchmarks, lm (benchmarks/lm.py on CUDA: the Triton LM kernels, the fused linear form),
# estimate (benchmarks/estimate_check.py on CUDA: sbkernels.estimate against measured loops, four models),
# fsdp (examples/lightning_ddp.py under Lightning's FSDPStrategy and examples/hf_ddp.py under accelerate's FSDP2,
# on 2 GPUs: both frameworks shard on GPUs only). Test budgets come from a count: each collected test may compile a few Triton
# configurations (0.4-1.7 s each on triton 3.6), so a file gets BASE + PER_TEST seconds per collected test.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_run.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
log="$out/gpu_run.log"
export PYTHONUNBUFFERED=1
commit=${SBKERNELS_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export SBKERNELS_COMMIT=$commit
BASE=${BASE:-60}
PER_TEST=${PER_TEST:-6}
failed=()

selected() { [ -z "${STEPS:-}" ] || [[ " $STEPS " == *" $1 "* ]]; }

step() {  # step NAME COMMAND...: run, log, remember failure, keep going
  local name=$1; shift
  echo "=== $name: $*" | tee -a "$log"
  if [ -n "${DRY_RUN:-}" ]; then return 0; fi
  local t0=$SECONDS
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
  [ "$rc" -eq 0 ] || failed+=("$name")
}

tests_in() {  # the number of tests pytest collects from the given paths
  python3 -m pytest -q --collect-only -p no:cacheprovider "$@" 2>/dev/null | grep -c '::'
}

pytest_step() {  # pytest_step NAME JUNIT_NAME PATHS...: budget from the collected count
  local name=$1 junit=$2; shift 2
  local count budget
  if [ -n "${DRY_RUN:-}" ]; then count=0; else count=$(tests_in "$@"); fi
  budget=$((BASE + PER_TEST * count))
  echo "=== $name: $count tests collected, budget $budget s" | tee -a "$log"
  step "$name" timeout "$budget" python3 -m pytest -q "$@" -p no:cacheprovider --junitxml="$out/$junit.xml"
}

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit: $commit"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  nvcc --version | tail -2
} 2>&1 | tee "$log"

equality_files() {  # every test file but the GPU-only one, in tests/ and its subfolders (the layout of issue 20)
  find tests -name 'test_*.py' -not -path tests/kernels/test_gpu.py | sort
}

selected build && step build env MAX_JOBS=16 python3 setup.py build_ext --inplace -q
# The GPU-only claims first: they are short and what the GPU run is for.
selected gpu-only && pytest_step gpu-only pytest-gpu-only tests/kernels/test_gpu.py
# Then the equality tests on CUDA tensors, a file at a time: a failure or a timeout in one hides no other.
# No interpreter suite here: the device image pairs triton 3.6 with numpy 2.5, which its interpreter cannot
# run (tests/conftest.py explains); CI runs the interpreter suite on triton >= 3.9.
if selected equality; then
  for file in $(equality_files); do
    name=${file#tests/}
    name=${name%.py}
    pytest_step "equality $name" "pytest-${name//\//-}" "$file"
  done
fi
selected report && step report timeout 240 python3 -m benchmarks.report --out "$out"
selected step-benchmark && step step-benchmark timeout 120 python3 -m benchmarks.step --out "$out"
selected microbenchmarks && step microbenchmarks timeout 150 python3 -m pytest benchmarks -q --benchmark-only \
  -p no:cacheprovider --benchmark-json="$out/microbench.json" --benchmark-columns=median,iqr,rounds \
  --benchmark-sort=name
selected lm && step lm timeout 900 python3 -m benchmarks.lm --device cuda --out "$out/lm-gpu"
selected estimate && step estimate timeout 900 python3 -m benchmarks.estimate_check --device cuda \
  --out "$out/estimate-gpu"
selected fsdp && step fsdp timeout 600 python3 -m examples.lightning_ddp --strategy fsdp --accelerator cuda \
  --record "$out/fsdp"
selected fsdp && step fsdp-hf timeout 600 torchrun --nproc_per_node 2 -m examples.hf_ddp --fsdp --device cuda \
  --output "$out/hf-fsdp" --record "$out/hf-fsdp/record"
if [ ${#failed[@]} -eq 0 ]; then
  echo "gpu_run: all steps passed (see $log)" | tee -a "$log"
  exit 0
fi
echo "gpu_run: FAILED steps: ${failed[*]} (see $log)" | tee -a "$log"
exit 1
