"""The CUDA C++ attention and decoder-step kernels (backend="cuda": csrc/cuda/attention.cu, decoder_step.cu through
csrc/cuda_bindings/attention_cuda.cu, decoder_step_cuda.cu) against the reference: attention forward and every
gradient for all four kinds, lengths (CPU and device), 2-D / single-step / batched queries, splits of a long
source, wide features, fp32/bf16/fp16; the decoder step against the reference step; FusedDecoder(backend="cuda")
step, greedy decoding and training forward against backend="reference"; the ops' direct errors; opcheck.

Needs a CUDA GPU and fused_s2s._C built against a CUDA torch (scripts/gpu_check.sh does both); elsewhere the
whole module skips, saying which is missing. The CPU-side dispatch and its errors are tested in
tests/test_cuda_attention_dispatch.py; the kernels themselves also run on the CPU in
tests/test_cuda_harness_attention.py. Written without a GPU (2026-12-05): these tests had not run on one when
they were committed.

Tolerances (DESIGN.md §5): |ours − ref64| ≤ max(dtype floor, 2·|torch in the same dtype − ref64|), where ref64 is
the reference on the same values in float64.
"""
from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

import fused_s2s.ops.attention  # noqa: F401
import fused_s2s.ops.decoder_step  # noqa: F401
from fused_s2s import greedy_decode
from fused_s2s.reference.attention import attention as reference_attention
from fused_s2s.reference.decoder import decoder_step as reference_step
from tests.test_attention import make_case
from tests.test_decoder import E, H, S, T, assert_forward_and_grads_match, make, random_state
from tests.test_decoder_step import KINDS, assert_step_matches_reference, make_step_case
from tests.utils import assert_close, case_id, tolerance

attn_ops = sys.modules["fused_s2s.ops.attention"]
step_ops = sys.modules["fused_s2s.ops.decoder_step"]

if not torch.cuda.is_available():
    pytestmark = pytest.mark.skip(reason="no CUDA GPU: the CUDA C++ attention kernels run only on one")
elif not (attn_ops.cuda_kernels_built() and step_ops.cuda_kernels_built()):
    pytestmark = pytest.mark.skip(reason="fused_s2s._C has no CUDA kernels (built against a CPU torch or without "
                                         "nvcc): rebuild with `pip install --no-build-isolation .` on this machine")

DEVICE = "cuda"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]


@pytest.fixture(autouse=True)
def _fresh_fallback_warnings(monkeypatch):
    monkeypatch.setattr(attn_ops, "_FALLBACK_WARNED", set())


def _close_to_fp64(name, got, exact, own, dtype):
    """got vs the float64 reference, within the dtype's floor or twice torch's own error in that dtype."""
    rtol, atol = tolerance(dtype)
    own_err = float((own.detach().double() - exact.detach()).abs().max()) if exact.numel() else 0.0
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected {dtype}"
    assert_close(got.detach().double(), exact.detach(), name, rtol=rtol, atol=max(atol, 2 * own_err))


def _leaves(tensors, dtype):
    return [t.detach().to(DEVICE, dtype).requires_grad_() for t in tensors]


# Divisors that keep wide layers' scores O(1) (unscaled randn weights over hundreds of features make the softmax
# one-hot and the gradients large, where fp32 rounding order alone exceeds the fp32 floor).
FAN_IN = {"w": lambda c: (c["Dq"] * c["M"]) ** 0.5, "w_query": lambda c: c["Dq"] ** 0.5,
          "w_memory": lambda c: c["M"] ** 0.5, "v": lambda c: c["A"] ** 0.5, "b_query": lambda c: 1.0}


def assert_cuda_attention_matches_reference(kind, case, lengths, dtype, lengths_on_device=False, shrink=False):
    query, memory, lens, params = make_case(kind, **case, lengths=lengths)
    if shrink:
        params = {n: p.detach() / FAN_IN[n](case) for n, p in params.items()}
    names = list(params)
    if lens is not None and lengths_on_device:
        lens = lens.to(DEVICE)
    # The values rounded to the dtype once: ours and both references start from the same numbers.
    base = [t.detach().to(dtype) for t in (query, memory, *params.values())]
    q, m, *ps = _leaves(base, dtype)
    ctx, w = attn_ops.attention(q, m, lens, kind, dict(zip(names, ps)), return_weights=True, backend="cuda")
    assert ctx.device.type == DEVICE and ctx.dtype == w.dtype == dtype
    g = torch.randn(ctx.shape, device=DEVICE)
    grads = torch.autograd.grad(ctx, [q, m, *ps], g.to(dtype))
    results = {}
    for ref_dtype in (torch.float64, dtype):
        rq, rm, *rps = _leaves(base, ref_dtype)
        r_ctx, r_w = reference_attention(rq, rm, lens, kind, dict(zip(names, rps)), return_weights=True)
        r_grads = torch.autograd.grad(r_ctx, [rq, rm, *rps], g.to(ref_dtype))
        results[ref_dtype] = (r_ctx, r_w, *r_grads)
    labels = ["context", "weights", "d_query", "d_memory"] + [f"d_{n}" for n in names]
    for name, got, exact, own in zip(labels, (ctx, w, *grads), results[torch.float64], results[dtype]):
        _close_to_fp64(name, got, exact, own, dtype)
    if lens is not None:  # padding gets exactly zero weight
        pad = torch.arange(memory.shape[1], device=DEVICE) >= lens.to(DEVICE)[:, None]
        ww = w if w.dim() == 3 else w[:, None]
        assert (ww.masked_select(pad[:, None, :].expand_as(ww)) == 0).all()


# T 0 is the 2-D query [B, D]; S 70 and 200 split the source over several CTAs (attention_plan: 32+ positions per
# split) so the combine kernel and the backward's partial sums run; M 300 is past the Triton kernels' limits.
CASES = [
    dict(B=3, T=4, S=7, Dq=6, M=6),
    dict(B=5, T=1, S=9, Dq=5, M=11),
    dict(B=4, T=0, S=3, Dq=8, M=4),
    dict(B=2, T=3, S=70, Dq=9, M=33),
    dict(B=3, T=1, S=200, Dq=40, M=37),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("lengths", [None, "random", "one", "each"], ids=str)
@pytest.mark.parametrize("case", CASES, ids=[case_id(**c) for c in CASES])
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_attention_matches_reference(kind, case, lengths, dtype):
    assert_cuda_attention_matches_reference(kind, case, lengths, dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_cuda_attention_lengths_on_the_device(kind):
    assert_cuda_attention_matches_reference(kind, dict(B=4, T=2, S=70, Dq=6, M=6), "random", torch.float32,
                                            lengths_on_device=True)


@pytest.mark.parametrize("kind", ["general", "additive"])
def test_cuda_attention_wide_features(kind):
    """Feature sizes past the Triton kernels' (128 dot, 256 additive): the CUDA kernels loop over them."""
    assert_cuda_attention_matches_reference(kind, dict(B=2, T=5, S=40, Dq=150, M=300, A=280), "random", torch.float32,
                                            shrink=True)


def test_cuda_attention_op_outputs():
    """The op's own outputs: lse float32 for every dtype, weights 0 at padding, outputs fresh (no aliasing)."""
    B, Tq, S, D, M = 3, 2, 9, 5, 7
    lens = torch.tensor([9, 1, 4])
    for dtype in DTYPES:
        r = lambda *s: torch.randn(*s, device=DEVICE, dtype=dtype)  # noqa: E731
        q, k, vals, v = r(B, Tq, D), r(B, S, D), r(B, S, M), r(D)
        for vv in (None, v):
            ctx, lse, w = torch.ops.fused_s2s.attention_fwd(q, k, vals, lens, vv, 0.5, True)
            assert ctx.dtype == w.dtype == dtype and lse.dtype == torch.float32
            assert (ctx.shape, lse.shape, w.shape) == ((B, Tq, M), (B, Tq), (B, Tq, S))
            assert (w[1, :, 1:] == 0).all() and (w[2, :, 4:] == 0).all()
            sc = (torch.tanh(q.double()[:, :, None] + k.double()[:, None]) @ v.double() if vv is not None
                  else q.double() @ k.double().transpose(1, 2) * 0.5)
            sc = sc.masked_fill(torch.arange(S, device=DEVICE) >= lens.to(DEVICE)[:, None, None], float("-inf"))
            assert_close(lse.double(), torch.logsumexp(sc, -1), "lse", rtol=1e-4, atol=1e-4)
            _, _, none = torch.ops.fused_s2s.attention_fwd(q, k, vals, lens, vv, 0.5, False)
            assert none.numel() == 0


def test_cuda_attention_bad_input_is_refused_by_name():
    r = lambda *s, **kw: torch.randn(*s, device=DEVICE, **kw)  # noqa: E731
    q, k, vals = r(2, 1, 4), r(2, 5, 4), r(2, 5, 3)
    op = torch.ops.fused_s2s.attention_fwd
    with pytest.raises(RuntimeError, match=r"every memory length must be in \[1, 5\], got values in \[1, 6\]"):
        op(q, k, vals, torch.tensor([6, 1]), None, 1.0, False)
    with pytest.raises(RuntimeError, match="the CUDA kernels take float32, bfloat16 or float16, got Double"):
        op(q.double(), k.double(), vals.double(), None, None, 1.0, False)
    with pytest.raises(RuntimeError, match="every tensor must match query's dtype and device"):
        op(q, k.half(), vals, None, None, 1.0, False)
    with pytest.raises(RuntimeError, match=r"v must be \[4\]"):
        op(q, k, vals, None, r(3), 1.0, False)
    ctx, lse, _ = op(q, k, vals, None, None, 1.0, False)
    with pytest.raises(RuntimeError, match="lse must be the forward's float32 log-sum-exp"):
        torch.ops.fused_s2s.attention_bwd(torch.ones_like(ctx), q, k, vals, None, None, 1.0, ctx, lse.half())
    with pytest.raises(RuntimeError, match=r"d_context and context must be \[2, 1, 3\]"):
        torch.ops.fused_s2s.attention_bwd(ctx[:, :, :2], q, k, vals, None, None, 1.0, ctx, lse)


def test_cuda_attention_float64_falls_back_with_a_warning():
    query, memory, lens, params = make_case("additive", B=2, T=3, S=5, Dq=4, M=6, lengths="each",
                                            dtype=torch.float64)
    q, m, *ps = _leaves([query, memory, *params.values()], torch.float64)
    with pytest.warns(UserWarning, match="backend 'cuda' runs this attention on 'triton' instead"):
        ctx, _ = attn_ops.attention(q, m, lens, "additive", dict(zip(params, ps)), backend="cuda")
    assert_close(ctx, reference_attention(q, m, lens, "additive", dict(zip(params, ps)))[0], "context")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("additive", [False, True], ids=["dot", "additive"])
def test_cuda_attention_opcheck(additive, dtype):
    B, Tq, S, D, M = 2, 3, 40, 5, 6
    g = dict(dtype=dtype, device=DEVICE, requires_grad=True)
    v = torch.randn(D, **g) if additive else None
    args = (torch.randn(B, Tq, D, **g), torch.randn(B, S, D, **g), torch.randn(B, S, M, **g), torch.tensor([40, 2]),
            v, 0.5, True)
    torch.library.opcheck(torch.ops.fused_s2s.attention_fwd.default, args)


# ---- the decoder step ----

def _to_device(case):
    x, feed, h, c, w, memory, lens = case
    mv = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    weights = step_ops.prepare_decoder_weights([tuple(mv(t) for t in layer) for layer in w.lstm_weights],
                                               w.attn_kind, {k: mv(v) for k, v in w.attn_params.items()},
                                               mv(w.w_out), mv(w.b_out))
    return mv(x), mv(feed), mv(h), mv(c), weights, mv(memory), mv(lens)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("feed", [True, False])
@pytest.mark.parametrize("lengths", ["mixed", "none", "one", "all_but_one"])
def test_cuda_step_matches_reference(kind, L, feed, lengths):
    with torch.no_grad():
        assert_step_matches_reference(_to_device(make_step_case(kind=kind, L=L, feed=feed, lengths=lengths)), "cuda")


STEP_SIZES = [
    dict(B=1, E=3, H=5, M=11, S=1, L=1, A=3, bias=False, lengths="one"),
    dict(B=17, E=13, H=33, M=19, S=23, L=2, A=7, bias=True),
    dict(B=2, E=16, H=40, M=24, S=200, L=1, A=16, bias=True),  # the source split over CTAs: the combine kernel
    dict(B=9, E=200, H=157, M=300, S=70, L=2, A=64, bias=True),  # M past the Triton step's limit
]


@pytest.mark.parametrize("case", STEP_SIZES, ids=lambda c: case_id(**c))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("keys", [True, False, "project_query"], ids=["keys", "no-keys", "projected"])
def test_cuda_step_odd_sizes(case, kind, keys):
    if keys == "project_query" and kind != "general":
        pytest.skip("project_query applies to general attention only")
    with torch.no_grad():
        assert_step_matches_reference(_to_device(make_step_case(**case, kind=kind)), "cuda", precomputed_keys=keys)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L", [1, 2])
def test_cuda_16bit_step_computes_in_fp32(dtype, kind, L):
    """16-bit tensors: the fp32 reference on the same values, rounded to the dtype (the kernels round h' to the
    dtype before it is the query, as an unfused 16-bit model stores it)."""
    x, feed, h, c, w, memory, lens = _to_device(make_step_case(kind=kind, L=L, dtype=dtype))
    up = lambda t: None if t is None else t.float()  # noqa: E731
    with torch.no_grad():
        got = step_ops.decoder_step(x, feed, h, c, w, memory, lens, backend="cuda")
        want = reference_step(up(x), up(feed), up(h), up(c), [tuple(up(t) for t in layer) for layer in w.lstm_weights],
                              w.attn_kind, {k: up(p) for k, p in w.attn_params.items()}, up(w.w_out), up(w.b_out),
                              up(memory), lens)
    for name, a, e in zip(("out", "h_new", "c_new", "attn"), got, want):
        assert a.dtype == dtype, name
        assert_close(a, e.to(dtype), name)


def test_cuda_step_bad_input_is_refused_by_name():
    x, feed, h, c, weights, memory, lens = _to_device(make_step_case())
    keys = step_ops.attention_keys(weights.attn_kind, weights.attn_params, memory)
    args = [x, feed, h, c, list(weights.w_cat), list(weights.b_cat), "dot", keys.keys, 1.0, None, None, None, memory,
            lens, weights.w_out, weights.b_out]
    op = torch.ops.fused_s2s.decoder_step
    with torch.no_grad():
        bad = list(args)
        bad[13] = torch.tensor([10, 1, 1])
        with pytest.raises(RuntimeError, match=r"every memory length must be in \[1, 9\]"):
            op(*bad)
        bad = list(args)
        bad[1] = feed[:, :5]
        with pytest.raises(RuntimeError, match=r"expected feed of size \[3, 6\]"):
            op(*bad)
        bad = list(args)
        bad[12] = memory.cpu()
        with pytest.raises(RuntimeError, match="memory must be on x's device"):
            op(*bad)
        bad = list(args)
        bad[6] = "mlp"
        with pytest.raises(RuntimeError, match="score must be 'dot' or 'additive', got 'mlp'"):
            op(*bad)


def test_cuda_step_opcheck():
    x, feed, h, c, weights, memory, lens = _to_device(make_step_case(kind="additive", L=2))
    keys = step_ops.attention_keys("additive", weights.attn_params, memory)
    p = weights.attn_params
    args = (x, feed, h, c, list(weights.w_cat), list(weights.b_cat), "additive", keys.keys, 1.0, p["w_query"],
            p["b_query"], p["v"], memory, lens, weights.w_out, weights.b_out)
    torch.library.opcheck(torch.ops.fused_s2s.decoder_step.default, args)


# ---- FusedDecoder(backend="cuda") ----

def _pair(kind, layers, feeding, memory_size=H):
    """A decoder on backend "cuda" and one on "reference" with the same fp32 parameters, on the GPU."""
    dec = make(kind, layers, feeding, memory_size, dtype=torch.float32, backend="cuda").to(DEVICE)
    ref = make(kind, layers, feeding, memory_size, dtype=torch.float32, backend="reference").to(DEVICE)
    ref.load_state_dict(dec.state_dict())
    assert dec._ops_backend == "cuda"
    return dec, ref


def _on_device(state):
    return type(state)(*(None if t is None else t.to(DEVICE) for t in (state.h, state.c, state.feed)))


STEP_CASES = [(k, l, f) for k in KINDS for l in (1, 2) for f in (True, False)]


@pytest.mark.parametrize("kind,layers,feeding", STEP_CASES, ids=[case_id(att=k, L=l, feed=f) for k, l, f in STEP_CASES])
def test_cuda_decoder_step_matches_reference_decoder(kind, layers, feeding):
    B = 4
    dec, ref = _pair(kind, layers, feeding)
    memory = torch.randn(B, S, H, device=DEVICE)
    lengths = torch.tensor([S, 2, 1, 5], device=DEVICE)
    x = torch.randn(B, T, E, device=DEVICE)
    with torch.no_grad():
        s = r = _on_device(random_state(dec, B, torch.float32))
        keys = dec.precompute_keys(memory)
        for t in range(T):
            o, s, a = dec.step(x[:, t], s, memory, lengths, keys=keys if t % 2 else None)
            ro, r, ra = ref.step(x[:, t], r, memory, lengths)
            assert_close(o, ro, f"step {t} output")
            assert_close(a, ra, f"step {t} attention")
        assert_close(s.h, r.h, "h")
        assert_close(s.c, r.c, "c")


@pytest.mark.parametrize("kind", KINDS)
def test_cuda_decoder_greedy_matches_reference_decoder(kind):
    B, V, steps = 5, 11, 8
    M = H if kind in ("dot", "scaled_dot") else 9
    dec, ref = _pair(kind, 2, True, memory_size=M)
    emb = torch.nn.Embedding(V, E, device=DEVICE)
    gen = torch.nn.Linear(H, V, device=DEVICE)
    memory = torch.randn(B, 12, M, device=DEVICE)
    lengths = torch.tensor([12, 3, 1, 7, 12], device=DEVICE)

    def step_fn(decoder):
        def fn(tokens, state):
            out, state, _ = decoder.step(emb(tokens), state, memory, lengths)
            return F.log_softmax(gen(out), dim=-1), state
        return fn

    with torch.no_grad():
        got = greedy_decode(step_fn(dec), None, B, 1, 2, steps, device=DEVICE)
        want = greedy_decode(step_fn(ref), None, B, 1, 2, steps, device=DEVICE)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert_close(got[2], want[2], "scores")


@pytest.mark.parametrize("kind", KINDS)
def test_cuda_decoder_forward_and_grads(kind):
    """Teacher forcing (the CUDA LSTM and the CUDA attention op, forward and backward) against the reference
    loop, fp32."""
    B = 3
    dec = make(kind, 2, False, dtype=torch.float32, backend="cuda").to(DEVICE)
    x = torch.randn(B, T, E, device=DEVICE, requires_grad=True)
    memory = torch.randn(B, S, H, device=DEVICE, requires_grad=True)
    lengths = torch.tensor([S, 1, 4], device=DEVICE)
    assert_forward_and_grads_match(dec, x, memory, lengths, _on_device(random_state(dec, B, torch.float32)))
