#!/usr/bin/env bash
# Build the C++ CPU extension with AddressSanitizer and UndefinedBehaviorSanitizer (its own build and install
# folders under build/sanitize/, the editable build is left alone), then run the C++-backed tests against
# that build with the sanitizer runtimes preloaded. Any report fails the run (halt_on_error).
#
# Usage: bash scripts/sanitize.sh [--quick] [PYTEST ARGS...]
#   --quick   only the op-level bad-input tests and one LSTM/attention/decoder-step test file (CI runs this)
# Python itself is not instrumented, so leak checking is off (the interpreter "leaks" by design).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
PYTHON="${PYTHON:-python}"
QUICK=0
if [[ "${1:-}" == "--quick" ]]; then QUICK=1; shift; fi

LIB="build/sanitize/lib"
FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
echo "sanitize: building the extension with $FLAGS into $LIB"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps --no-compile \
  --upgrade --target "$LIB" \
  --config-settings=build-dir=build/sanitize/cmake \
  --config-settings=cmake.build-type=RelWithDebInfo \
  "--config-settings=cmake.define.CMAKE_CXX_FLAGS=$FLAGS" \
  "--config-settings=cmake.define.CMAKE_MODULE_LINKER_FLAGS=-fsanitize=address,undefined" \
  "--config-settings=cmake.define.CMAKE_SHARED_LINKER_FLAGS=-fsanitize=address,undefined" .

ASAN_RT="$(g++ -print-file-name=libasan.so)"
UBSAN_RT="$(g++ -print-file-name=libubsan.so)"
if [[ "$QUICK" == 1 ]]; then
  TESTS=(tests/test_op_bad_input.py tests/test_edges.py tests/test_attention.py tests/test_cells.py
         -k "not longer_than and not 1000_calls and not torch_compile")
else
  TESTS=(tests/test_op_bad_input.py tests/test_edges.py tests/test_fused_lstm.py tests/test_ops.py
         tests/test_attention.py tests/test_decoder_step.py tests/test_decoder.py tests/test_properties.py
         tests/test_cells.py)
fi
echo "sanitize: running ${TESTS[*]} against $LIB"
# The tests must load the sanitized build, not the editable one: scripts/with_build.py removes the editable
# finder and puts $LIB first on sys.path (and checks where fused_s2s came from).
LD_PRELOAD="$ASAN_RT $UBSAN_RT" \
ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1" \
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
FUSED_S2S_POISON_BUFFERS=1 \
  "$PYTHON" scripts/with_build.py "$LIB" -m pytest -q -p no:cacheprovider "${TESTS[@]}" "$@"
