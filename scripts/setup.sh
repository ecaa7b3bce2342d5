#!/usr/bin/env bash
# Set up fused_s2s on a fresh machine (Debian, Python 3.11, root): torch, build tools, test tools, then an
# editable build of the C++ extension. Idempotent: what is already at the right version is left alone.
# Usage: bash scripts/setup.sh   (from any directory)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
PYTHON="${PYTHON:-python}"
export PIP_ROOT_USER_ACTION=ignore  # quiet: root is expected here (CI, fresh machines)
PIP=("$PYTHON" -m pip install --quiet --disable-pip-version-check)

# 1. torch FIRST, pinned: 2.13.0 is a local CPU wheel here. Any unpinned `torch` requirement resolved while
#    torch is missing would download the newest CUDA build (several GB).
TORCH_OK='import sys, torch; sys.exit(0 if torch.__version__.split("+")[0] == "2.13.0" else 1)'
if ! "$PYTHON" -c "$TORCH_OK" 2>/dev/null; then
  echo "setup: installing torch==2.13.0"
  "${PIP[@]}" torch==2.13.0
fi

# 2. Build and test tools (pip skips what is already installed). CMake >= 3.24 is needed: use the system's
#    if it is recent enough, else the PyPI package.
"${PIP[@]}" scikit-build-core pybind11 ninja pytest pytest-benchmark hypothesis
# Triton (the GPU kernels; on this CPU they run under TRITON_INTERPRET=1 and are compiled ahead of time for
# sm_80/sm_90), matplotlib (the report's plot), tqdm (progress over benchmark cases) and scipy (the A/B
# gate's bootstrap interval and rank test).
"${PIP[@]}" triton==3.9.0 matplotlib tqdm scipy
cmake_ok() {  # true if `cmake` is on PATH and at least 3.24
  local v major minor
  v="$(cmake --version 2>/dev/null | head -n1 | sed -n 's/^cmake version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')"
  [[ -n "$v" ]] && read -r major minor <<<"$v" && (( major > 3 || (major == 3 && minor >= 24) ))
}
if ! cmake_ok; then
  echo "setup: cmake missing or older than 3.24, installing cmake from PyPI"
  "${PIP[@]}" "cmake>=3.24"
fi

# 3. The package itself, editable, built against the torch installed above (no isolated build env, which
#    would fetch another torch). Re-running re-configures CMake and rebuilds only what changed.
"${PIP[@]}" --no-build-isolation -e .

"$PYTHON" -c 'import torch, fused_s2s; print(f"setup: fused_s2s ready (torch {torch.__version__})")'
