import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Every test draws fresh random inputs, but reproducibly per test id (printed on failure)."""
    seed = abs(hash(request.node.nodeid)) % (2**31)
    torch.manual_seed(seed)
    yield
