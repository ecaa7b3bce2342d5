#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh), then benchmark FusedLSTM against torch.nn.LSTM (and the reference)
# on whatever device is present (CUDA if available, else CPU): a markdown table on stdout, JSON and a PNG plot
# (default fused-s2s-bench-results/<grid>.json and .png in the checkout). Arguments go to `fused-s2s-bench
# report`: --quick (the CI-sized grid), --out DIR, --json PATH, --png PATH, --cases TEXT, --dtypes LIST,
# --repeats N, --warmup N, --budget SECONDS.
# Usage: bash scripts/bench.sh [--quick]   (from any directory)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
PYTHON="${PYTHON:-python}"

bash scripts/setup.sh
"$PYTHON" -m fused_s2s.bench report "$@"
