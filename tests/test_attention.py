"""The fused attention op (fused_s2s.ops.attention, C++ CPU kernel) against the plain-PyTorch reference:
every kind, forward and gradients, masks from all-but-one position masked to none, lengths 1..S, the batched
(T > 1), single-step (T = 1) and 2-D query forms, gradcheck, opcheck, NaN and bad input."""
from __future__ import annotations

import pytest
import torch

from fused_s2s.ops.attention import KINDS, attention
from fused_s2s.reference.attention import attention as reference
from tests.utils import assert_close, case_id


def make_params(kind: str, Dq: int, M: int, A: int, dtype=torch.float32) -> dict:
    g = dict(dtype=dtype, requires_grad=True)
    if kind == "general":
        return {"w": torch.randn(M, Dq, **g)}
    if kind == "additive":
        return {"w_query": torch.randn(A, Dq, **g), "b_query": torch.randn(A, **g), "w_memory": torch.randn(A, M, **g),
                "v": torch.randn(A, **g)}
    return {}


def make_case(kind, B, T, S, Dq, M, lengths, dtype=torch.float32, A=5):
    if kind in ("dot", "scaled_dot"):
        Dq = M
    query = torch.randn(B, T, Dq, dtype=dtype, requires_grad=True) if T else torch.randn(B, Dq, dtype=dtype,
                                                                                          requires_grad=True)
    memory = torch.randn(B, S, M, dtype=dtype, requires_grad=True)
    lens = None
    if lengths == "random":
        lens = torch.randint(1, S + 1, (B,))
        lens[0] = S
    elif lengths == "one":  # all but one position masked
        lens = torch.ones(B, dtype=torch.long)
    elif lengths == "each":  # 1..S across the batch
        lens = torch.arange(B) % S + 1
    return query, memory, lens, make_params(kind, Dq, M, A, dtype)


CASES = [dict(B=3, T=4, S=7, Dq=6, M=6), dict(B=5, T=1, S=9, Dq=5, M=11), dict(B=4, T=0, S=3, Dq=8, M=4),
         dict(B=6, T=3, S=6, Dq=9, M=9)]


@pytest.mark.parametrize("lengths", [None, "random", "one", "each"], ids=str)
@pytest.mark.parametrize("case", CASES, ids=[case_id(**c) for c in CASES])
@pytest.mark.parametrize("kind", KINDS)
def test_fused_attention_matches_reference(kind, case, lengths):
    assert_attention_matches_reference(kind, *make_case(kind, **case, lengths=lengths), backend="cpu")


def assert_attention_matches_reference(kind, query, memory, lens, params, backend: str) -> None:
    """Context, weights and the gradients of query, memory and every parameter equal the reference's."""
    ctx, w = attention(query, memory, lens, kind, params, return_weights=True, backend=backend)
    ctx_r, w_r = reference(query, memory, lens, kind, params, return_weights=True)
    assert_close(ctx, ctx_r, "context")
    assert_close(w, w_r, "weights")
    inputs = [query, memory] + list(params.values())
    g = torch.randn_like(ctx_r)
    for k, (a, e) in enumerate(zip(torch.autograd.grad(ctx, inputs, g), torch.autograd.grad(ctx_r, inputs, g))):
        assert_close(a, e, f"grad of input {k}")


@pytest.mark.parametrize("kind", KINDS)
def test_fused_attention_gradcheck_float64(kind):
    query, memory, lens, params = make_case(kind, B=3, T=2, S=4, Dq=3, M=3, lengths="each", dtype=torch.float64)
    names = list(params)

    def fn(q, m, *ps):
        return attention(q, m, lens, kind, dict(zip(names, ps)), backend="cpu")[0]

    assert torch.autograd.gradcheck(fn, (query, memory, *params.values()))


@pytest.mark.parametrize("additive", [False, True], ids=["dot", "additive"])
def test_attention_opcheck(additive):
    B, T, S, D, M = 2, 3, 4, 5, 6
    q, k = torch.randn(B, T, D, dtype=torch.float64), torch.randn(B, S, D, dtype=torch.float64)
    values = torch.randn(B, S, M, dtype=torch.float64, requires_grad=True)
    v = torch.randn(D, dtype=torch.float64, requires_grad=True) if additive else None
    args = (q.requires_grad_(), k.requires_grad_(), values, torch.tensor([4, 2]), v, 0.5, True)
    torch.library.opcheck(torch.ops.fused_s2s.attention_fwd.default, args)


def test_precomputed_keys_give_the_same_result():
    query, memory, lens, params = make_case("additive", B=3, T=2, S=5, Dq=4, M=6, lengths="random")
    keys = torch.nn.functional.linear(memory, params["w_memory"])
    a, _ = attention(query, memory, lens, "additive", params, keys=keys, backend="cpu")
    b, _ = attention(query, memory, lens, "additive", params, backend="cpu")
    assert_close(a, b, "context")


def test_nan_in_means_nan_out_but_padding_never_leaks():
    query, memory, _, _ = make_case("dot", B=3, T=2, S=5, Dq=4, M=4, lengths=None)
    memory = memory.detach().clone()
    lens = torch.tensor([5, 3, 5])
    memory[0, 1, 0] = float("nan")   # inside sequence 0: its context is NaN
    memory[1, 4, :] = float("nan")   # padding of sequence 1: must not reach its context
    ctx, _ = attention(query, memory, lens, "dot", backend="cpu")
    ref, _ = reference(query, memory, lens, "dot")
    assert_close(ctx, ref, "context")
    assert ctx[0].isnan().any() and not ctx[1:].isnan().any()


def test_bad_input_errors():
    query, memory, _, params = make_case("general", B=2, T=3, S=4, Dq=5, M=6, lengths=None)
    with pytest.raises(ValueError, match="unknown attention kind 'luong'"):
        attention(query, memory, None, "luong", params)
    with pytest.raises(ValueError, match=r"memory length must be in \[1, 4\]"):
        attention(query, memory, torch.tensor([5, 1]), "general", params)
    with pytest.raises(ValueError, match=r"memory length must be in \[1, 4\]"):
        attention(query, memory, torch.tensor([0, 1]), "general", params)
    with pytest.raises(ValueError, match=r"memory_lengths must be \[2\]"):
        attention(query, memory, torch.tensor([1, 2, 3]), "general", params)
    with pytest.raises(ValueError, match="batch sizes disagree"):
        attention(query[:1], memory, None, "general", params)
    with pytest.raises(ValueError, match="query size == memory size"):
        attention(query, memory, None, "dot")
    with pytest.raises(ValueError, match="backend must be one of"):
        attention(query, memory, None, "general", params, backend="cudnn")
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.fused_s2s.attention_fwd(query.detach(), query.detach().double(), memory.detach()[:, :3], None,
                                          None, 1.0, False)


def test_auto_on_cuda_uses_triton_only_for_feature_sizes_its_kernels_hold():
    """The choice alone (no GPU needed): wider features go to torch ops instead of failing in the kernel."""
    import importlib

    ops = importlib.import_module("fused_s2s.ops.attention")
    from fused_s2s.triton import limits

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert ops._resolve("auto", cuda, ops.triton_fits("general", 512, 512)) == "reference"
    assert ops._resolve("auto", cuda, ops.triton_fits("additive", 300, 64)) == "reference"
    assert ops._resolve("auto", cpu, ops.triton_fits("general", 512, 512)) == "cpu"
    assert ops.triton_fits("dot", limits.ATTENTION_DOT_MAX_FEATURES, 0)
    assert not ops.triton_fits("scaled_dot", limits.ATTENTION_DOT_MAX_FEATURES + 1, 0)
    assert ops.triton_fits("additive", limits.ATTENTION_ADDITIVE_MAX_FEATURES, limits.ATTENTION_ADDITIVE_MAX_FEATURES)
    assert not ops.triton_fits("additive", 16, limits.ATTENTION_ADDITIVE_MAX_FEATURES + 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_16bit_inputs_compute_in_fp32(kind, dtype):
    """16-bit inputs run the fp32 kernel: the result is the fp32 reference's, rounded to the dtype."""
    query, memory, lens, params = make_case(kind, B=3, T=4, S=6, Dq=5, M=5, lengths="random", dtype=dtype)
    ctx, w = attention(query, memory, lens, kind, params, return_weights=True, backend="cpu")
    up = lambda t: t.detach().float()  # noqa: E731
    ctx_r, w_r = reference(up(query), up(memory), lens, kind, {k: up(p) for k, p in params.items()},
                           return_weights=True)
    assert ctx.dtype == dtype and w.dtype == dtype
    assert_close(ctx, ctx_r.to(dtype), "context")
    assert_close(w, w_r.to(dtype), "weights")
    grads = torch.autograd.grad(ctx.float().sum(), [query, memory, *params.values()])
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)


def test_decoder_in_bfloat16_forward_and_step():
    from fused_s2s import FusedDecoder

    dec = FusedDecoder(5, 6, 7, dtype=torch.bfloat16)
    x, memory, lengths = torch.randn(2, 3, 5, dtype=torch.bfloat16), torch.randn(2, 4, 7, dtype=torch.bfloat16), \
        torch.tensor([4, 2])
    out, attn, _ = dec(x, memory, lengths, return_attention=True)
    assert out.dtype == attn.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().sum().backward()
    with torch.no_grad():
        o, _, a = dec.step(x[:, 0], dec.zero_state(2, x), memory, lengths)
    assert o.dtype == a.dtype == torch.bfloat16
    assert_close(o, out[:, 0].detach(), "step vs forward")
