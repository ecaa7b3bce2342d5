"""Fresh random inputs on every run, reproducible from the seed printed in pytest's header:
FUSED_S2S_TEST_SEED=<seed> python -m pytest ... replays a run."""
import os
import random
import zlib

import pytest

# Before fused_s2s is imported: buffers the C++ kernels allocate start as NaN, so an element a kernel never
# writes fails a test instead of passing with whatever the memory held.
os.environ.setdefault("FUSED_S2S_POISON_BUFFERS", "1")

import torch  # noqa: E402

RUN_SEED = int(os.environ.get("FUSED_S2S_TEST_SEED", random.randrange(2**31)))


def pytest_report_header(config):
    return f"fused_s2s test seed: FUSED_S2S_TEST_SEED={RUN_SEED}"


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
