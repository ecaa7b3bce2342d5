"""Fresh random inputs on every run, reproducible from the seed printed in pytest's header:
FUSED_S2S_TEST_SEED=<seed> python -m pytest ... replays a run."""
import os
import random
import shutil
import tempfile
import zlib

import pytest

# Before fused_s2s is imported: buffers the C++ kernels allocate start as NaN, so an element a kernel never
# writes fails a test instead of passing with whatever the memory held.
os.environ.setdefault("FUSED_S2S_POISON_BUFFERS", "1")
# A fresh torch.compile cache per run: inductor's cache key does not hold custom op schemas or our autograd
# rules, so a warm cache could run graphs compiled against an older fused_s2s instead of testing this one.
_OWN_INDUCTOR_CACHE = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _OWN_INDUCTOR_CACHE = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fused_s2s_test_inductor_")

import torch  # noqa: E402

if os.environ.get("TRITON_INTERPRET") == "1":
    from tests.interpreter_rounding import patch_interpreter_bf16_rounding

    # interpreted kernels round fp32 → bf16 to nearest, as a GPU does (see that module)
    patch_interpreter_bf16_rounding()

RUN_SEED = int(os.environ.get("FUSED_S2S_TEST_SEED", random.randrange(2**31)))


def pytest_sessionfinish(session, exitstatus):
    if _OWN_INDUCTOR_CACHE is not None:
        shutil.rmtree(_OWN_INDUCTOR_CACHE, ignore_errors=True)


def pytest_report_header(config):
    return f"fused_s2s test seed: FUSED_S2S_TEST_SEED={RUN_SEED}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # -q (as scripts/test.sh runs) hides the header: a failed run still names the seed that replays it
    if exitstatus != 0:
        terminalreporter.write_line(f"fused_s2s test seed: FUSED_S2S_TEST_SEED={RUN_SEED}")


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    torch.manual_seed(RUN_SEED ^ zlib.crc32(request.node.nodeid.encode()))
    yield


def pytest_collection_modifyitems(config, items):
    # Triton tests need either a GPU or the interpreter, which must be on before triton is imported: they run
    # in their own process with TRITON_INTERPRET=1 (scripts/test.sh). Anywhere else they skip, saying why.
    if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="Triton tests need CUDA or TRITON_INTERPRET=1 (see scripts/test.sh)")
    for item in items:
        if "triton_interpret" in item.keywords:
            item.add_marker(skip)
