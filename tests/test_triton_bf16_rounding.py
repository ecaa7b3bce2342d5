"""A Triton store of fp32 into bf16 rounds to nearest even, as torch does: on a GPU natively, and under the
interpreter through tests/interpreter_rounding.py. The bf16 accuracy bounds of the other Triton tests assume
it; if a triton upgrade moves the interpreter's cast, this test fails rather than those bounds drifting."""
import os

import pytest
import torch

pytestmark = pytest.mark.triton_interpret

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


def test_fp32_to_bf16_store_rounds_to_nearest():
    import triton
    import triton.language as tl

    @triton.jit
    def copy_kernel(SRC, DST, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(DST + offs, tl.load(SRC + offs))

    n = 1024
    # values with low bits set on both sides of the halfway point, where truncation and rounding differ
    x = torch.randn(n, device=DEVICE) * torch.logspace(-3, 3, n, device=DEVICE)
    out = torch.empty(n, dtype=torch.bfloat16, device=DEVICE)
    copy_kernel[(1,)](x, out, N=n)
    want = x.to(torch.bfloat16)
    mismatched = int((out.view(torch.int16) != want.view(torch.int16)).sum())
    assert mismatched == 0, f"{mismatched} of {n} fp32 → bf16 stores differ from round-to-nearest"
