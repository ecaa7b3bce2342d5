#!/usr/bin/env bash
# GPU check (issue 15, item 4): on a machine with a CUDA GPU and its own torch, build fused_s2s with its CUDA
# kernels and check them: the CUDA tests, compute-sanitizer memcheck and racecheck on small shapes, a short
# benchmark against nn.LSTM (cuDNN), and the Triton tests compiled on the GPU.
#
# Usage: bash scripts/gpu_check.sh [OUT_DIR]      (default ./gpu-check-out; from any directory)
#        PYTHON=python3 GPU_CHECK_BUDGET_S=470 bash scripts/gpu_check.sh "$OUT"
#
# Never downloads anything: the build uses the installed torch, scikit-build-core, CMake and ninja
# (--no-build-isolation --no-deps --no-index). Every stage has its own timeout, cut to what is left of the
# whole budget (under 8 minutes by default); a stage that fails or times out (exit 124) does not stop the
# later ones. Writes to OUT_DIR: gpu_check.log (every stage's output), gpu_check_bench.json and
# gpu_check_bench.md (the benchmark) and summary.txt (stage, exit code, seconds). Exits 1 if any stage failed.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT" || exit 2
OUT_DIR="$(mkdir -p "${1:-gpu-check-out}" && cd "${1:-gpu-check-out}" && pwd)" || exit 2
PYTHON="${PYTHON:-python3}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-470}"
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
START=$(date +%s)
STAGES=()
CODES=()
SECONDS_TAKEN=()

# run_stage NAME MAX_SECONDS CMD...: run CMD with a timeout of MAX_SECONDS, or of what is left of the budget
# (less 15 s for the summary) if that is less; its output goes to the terminal and the log.
run_stage() {
  local name="$1" max_s="$2"
  shift 2
  local left=$((BUDGET_S - ($(date +%s) - START) - 15))
  local limit=$((max_s < left ? max_s : left))
  local t0 rc
  t0=$(date +%s)
  if ((limit < 10)); then
    echo "=== $name: skipped, ${left}s of the budget left" | tee -a "$LOG"
    rc=125
  else
    echo "=== $name (timeout ${limit}s): $*" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
  fi
  STAGES+=("$name")
  CODES+=("$rc")
  SECONDS_TAKEN+=($(($(date +%s) - t0)))
  echo "=== $name: exit $rc after ${SECONDS_TAKEN[-1]}s" | tee -a "$LOG"
}

SANITIZER="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
# Only our kernels are instrumented where this compute-sanitizer can filter by name (torch's and cuBLAS's
# kernels would multiply the run time); --error-exitcode makes a finding fail the stage.
SANITIZER_FLAGS=(--error-exitcode 1 --print-limit 20)
if "$SANITIZER" --help 2>/dev/null | grep -q -- '--kernel-name'; then
  SANITIZER_FLAGS+=(--kernel-name kns=lstm_persistent)
fi

# Builds for sm_80 and sm_90 (torch's CMake config would otherwise probe the GPU for its own list).
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
export PYTHONUNBUFFERED=1 PIP_ROOT_USER_ACTION=ignore

run_stage environment 30 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; \
  command -v nvcc && nvcc --version | tail -n 2; echo \"compute-sanitizer: $SANITIZER\"; \
  $PYTHON -c 'import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(0))'"

# Editable, as scripts/setup.sh installs it: the tests import fused_s2s from this checkout (python -m pytest
# puts the repo root first on sys.path) and the editable install maps fused_s2s._C to the build it made.
run_stage build 300 "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -e .

run_stage cuda_kernels_registered 30 "$PYTHON" -c "from fused_s2s.ops import lstm_cuda
assert lstm_cuda.cuda_kernels_built(), 'fused_s2s._C has no CUDA kernels: see the build stage'
print('fused_s2s::cuda_lstm_layer_fwd/_bwd have CUDA kernels')"

# The CUDA ops on the GPU first; the rest of tests/test_cuda_*.py (CPU harness, dispatch, the nvcc check that
# skips on a CUDA torch) also run in CPU CI, so they come after the sanitizers and the benchmark.
run_stage cuda_gpu_tests 150 "$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/test_cuda_lstm.py
OTHER_CUDA_TESTS=()
for f in tests/test_cuda_*.py; do
  [[ "$f" == tests/test_cuda_lstm.py ]] || OTHER_CUDA_TESTS+=("$f")
done

# PYTORCH_NO_CUDA_MEMORY_CACHING: every tensor its own cudaMalloc, so memcheck sees an access past a tensor
# instead of into a neighbour in torch's cached block.
run_stage memcheck 120 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck "${SANITIZER_FLAGS[@]}" \
  "$PYTHON" scripts/cuda_lstm_smoke.py
run_stage racecheck 120 "$SANITIZER" --tool racecheck "${SANITIZER_FLAGS[@]}" "$PYTHON" scripts/cuda_lstm_smoke.py

run_stage benchmark 150 "$PYTHON" -m fused_s2s.bench.gpu_check --out "$OUT_DIR" --repeats 5 --warmup 2 \
  --budget-s 2

run_stage cuda_other_tests 120 "$PYTHON" -m pytest -q -p no:cacheprovider -rs "${OTHER_CUDA_TESTS[@]}"

# The Triton tests compiled and run on the GPU (scripts/test.sh's third run), last: the least new here.
run_stage triton_gpu_tests 240 "$PYTHON" -m pytest -q -p no:cacheprovider -m triton_interpret tests

{
  echo "gpu_check summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(($(date +%s) - START))s of ${BUDGET_S}s)"
  printf '%-26s %6s %8s\n' stage exit seconds
  failed=0
  for i in "${!STAGES[@]}"; do
    note=""
    case "${CODES[$i]}" in
      0) ;;
      124 | 137) note="  (timed out)" ;;
      125) note="  (skipped: budget spent)" ;;
    esac
    [[ "${CODES[$i]}" == 0 ]] || failed=$((failed + 1))
    printf '%-26s %6s %8s%s\n' "${STAGES[$i]}" "${CODES[$i]}" "${SECONDS_TAKEN[$i]}" "$note"
  done
  echo "$failed of ${#STAGES[@]} stages failed"
} | tee "$OUT_DIR/summary.txt" | tee -a "$LOG"
grep -q "^0 of " "$OUT_DIR/summary.txt"
