#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh), then benchmark FusedLSTM against torch.nn.LSTM on whatever device
# is present (CUDA if available, else CPU). Prints a markdown table and writes JSON
# (default benchmarks/results/lstm_speed.json). Arguments go to benchmarks.lstm_speed: --quick, --json PATH,
# --repeats N, --warmup N.
# Usage: bash scripts/bench.sh [--quick]   (from any directory)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
PYTHON="${PYTHON:-python}"

bash scripts/setup.sh
"$PYTHON" -m benchmarks.lstm_speed "$@"
