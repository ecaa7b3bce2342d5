#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh), then benchmark FusedLSTM against torch.nn.LSTM (and the reference)
# on whatever device is present (CUDA if available, else CPU): a markdown table on stdout, JSON and a PNG plot
# (default benchmarks/results/<grid>.json and .png). Arguments go to benchmarks.report: --quick (the CI-sized
# grid), --json PATH, --png PATH, --cases TEXT, --dtypes LIST, --repeats N, --warmup N, --budget SECONDS.
# Usage: bash scripts/bench.sh [--quick]   (from any directory)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
PYTHON="${PYTHON:-python}"

bash scripts/setup.sh
"$PYTHON" -m benchmarks.report "$@"
