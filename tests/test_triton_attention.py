"""The Triton fused attention (backend="triton") against the reference: every kind, forward and all
gradients, masks from all-but-one position masked to none, batched / single-step / 2-D queries, gradcheck in
fp64, opcheck. Under TRITON_INTERPRET=1 on CPU tensors (own process, scripts/test.sh) or on CUDA."""
from __future__ import annotations

import os

import pytest
import torch

from fused_s2s.ops.attention import KINDS, attention
from tests.test_attention import assert_attention_matches_reference, make_case
from tests.utils import case_id

pytestmark = pytest.mark.triton_interpret

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


def on_device(query, memory, lens, params):
    move = lambda t: t.detach().to(DEVICE).requires_grad_()  # noqa: E731
    return move(query), move(memory), lens, {k: move(p) for k, p in params.items()}


CASES = [dict(B=3, T=20, S=19, Dq=6, M=6), dict(B=2, T=1, S=33, Dq=5, M=11), dict(B=4, T=0, S=3, Dq=8, M=4)]
# feature sizes past the dot kernels' 128: only the additive kernels take them (up to 256; A is additive's D)
WIDE = dict(B=2, T=17, S=5, Dq=150, M=200, A=180)


@pytest.mark.parametrize("lengths", [None, "random", "one", "each"], ids=str)
@pytest.mark.parametrize("case", CASES, ids=[case_id(**c) for c in CASES])
@pytest.mark.parametrize("kind", KINDS)
def test_triton_attention_matches_reference(kind, case, lengths):
    assert_attention_matches_reference(kind, *on_device(*make_case(kind, **case, lengths=lengths)),
                                       backend="triton")


@pytest.mark.parametrize("lengths", [None, "each"], ids=str)
def test_triton_additive_attention_wide_features(lengths):
    # fp64: with 150-180 features the fp32 rounding of the two sides differs by more than the fp32 floor
    case = make_case("additive", **WIDE, lengths=lengths, dtype=torch.float64)
    assert_attention_matches_reference("additive", *on_device(*case), backend="triton")


def test_triton_attention_feature_limits():
    query, memory, lens, params = on_device(*make_case("general", **WIDE, lengths=None))
    with pytest.raises(RuntimeError, match="feature sizes up to 128"):
        attention(query, memory, lens, "general", params, backend="triton")
    query, memory, lens, params = on_device(*make_case("additive", **dict(WIDE, M=300), lengths=None))
    with pytest.raises(RuntimeError, match="additive Triton kernel holds feature sizes up to 256"):
        attention(query, memory, lens, "additive", params, backend="triton")


@pytest.mark.parametrize("kind", KINDS)
def test_triton_attention_gradcheck_float64(kind):
    query, memory, lens, params = on_device(*make_case(kind, B=2, T=3, S=5, Dq=3, M=3, lengths="each",
                                                       dtype=torch.float64))
    names = list(params)

    def fn(q, m, *ps):
        return attention(q, m, lens, kind, dict(zip(names, ps)), backend="triton")[0]

    assert torch.autograd.gradcheck(fn, (query, memory, *params.values()))


def test_triton_attention_opcheck():
    B, T, S, D, M = 2, 3, 4, 5, 6
    g = dict(dtype=torch.float64, device=DEVICE, requires_grad=True)
    args = (torch.randn(B, T, D, **g), torch.randn(B, S, D, **g), torch.randn(B, S, M, **g), torch.tensor([4, 2]),
            None, 0.5, True)
    torch.library.opcheck(torch.ops.fused_s2s.triton_attention_fwd.default, args)
