#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the whole test suite. Exits non-zero if any run fails or collects
# no tests at all. Extra arguments go to the main pytest run, e.g. `bash scripts/test.sh -x -k proj`.
# Usage: bash scripts/test.sh   (from any directory)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
PYTHON="${PYTHON:-python}"

bash scripts/setup.sh

# run_pytest NAME ARGS...: one pytest process; "no tests collected" (exit code 5) counts as a failure.
run_pytest() {
  local name="$1"
  shift
  local rc=0
  "$PYTHON" -m pytest "$@" || rc=$?
  if [[ $rc -eq 5 ]]; then
    echo "test.sh: $name: pytest collected no tests (exit code 5): treated as a failure" >&2
  elif [[ $rc -ne 0 ]]; then
    echo "test.sh: $name: pytest failed (exit code $rc)" >&2
  fi
  return "$rc"
}

# 1. Main run: everything but the Triton-interpreter tests, which need their own process (below).
run_pytest "main" tests -q -m "not triton_interpret" "$@"

# 2. Triton kernels under the interpreter on CPU tensors (TRITON_INTERPRET=1 must be set before triton is
#    imported, so they get their own process; small shapes, the interpreter is slow).
TRITON_INTERPRET=1 run_pytest "triton_interpret" tests -q -m triton_interpret

# 3. On a machine with CUDA, the same Triton tests once more, compiled and run on the GPU.
if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  run_pytest "triton_gpu" tests -q -m triton_interpret
fi

