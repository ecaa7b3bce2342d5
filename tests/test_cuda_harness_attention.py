"""The CUDA C++ attention and decoder-step kernels (csrc/cuda/attention.cu, decoder_step.cu) run on the CPU
through the harness (DESIGN.md §2; build and runner in tests/cuda_harness_build.py), under ASan/UBSan.

Forward and backward against fused_s2s.reference.attention in float64 for every kind, with the projections the
op layer runs outside the kernels (general's projected query, additive's projected query and keys) done here in
torch, and the backward chained through them to the gradients of query, memory and every parameter, compared
with autograd of the reference. fp32 within fp32 rounding; bf16/fp16 within twice torch's own error in that
dtype plus a floor (DESIGN.md §5). Padded memory rows hold NaN in the kernels' inputs (the reference gets finite
ones): NaN reaching any result fails. Outputs start NaN, so an element never written fails too. The decoder
step is checked as the launcher will run it (GEMMs in torch, cell, cell+attention, combine tanh in the kernels)
against fused_s2s.reference.decoder.decoder_step.

Shapes are small and odd (B 3/5, S 1/7/33, M 24/40, D 24/40, A 16); splits 1, 2, 3 and splits with no
positions (S = 1, 3 splits), a length-1 row, Tq = 2 (the batched form), and S = 150 in one split, three
tiles of 64 positions with scores ascending (the online softmax's rescale of the running context).
What the harness cannot show: GPU timing, occupancy, weak memory ordering, lock-step warps, the GPU's exp/tanh.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fused_s2s.reference.attention import attention as ref_attention
from fused_s2s.reference.attention import scores as ref_scores
from fused_s2s.reference.decoder import decoder_step as ref_decoder_step
from tests.cuda_harness_build import DTYPE_CODE, build_harness, run_harness
from tests.utils import assert_close, case_id

A = 16  # additive attention size


@pytest.fixture(scope="session")
def harness() -> Path:
    return build_harness()


def make_lengths(B: int, S: int) -> torch.Tensor:
    lens = torch.randint(1, S + 1, (B,))
    lens[0] = 1  # a length-1 row
    lens[-1] = S  # and a full one
    return lens.to(torch.int64)


def make_problem(kind: str, B: int, Tq: int, S: int, Dq: int, M: int, dtype: torch.dtype, lengths: bool,
                 ascending: bool = False):
    """Inputs in float64, each rounded to the storage dtype (as torch would hold them). ascending (Tq = 1): the
    memory rows of each batch row's valid positions reordered so that their scores increase with s."""
    def draw(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype).double()

    dq = M if kind in ("dot", "scaled_dot") else Dq
    p = dict(kind=kind, query=draw(B, Tq, dq, scale=0.5), memory=draw(B, S, M),
             lengths=make_lengths(B, S) if lengths else None, params={})
    if kind == "general":
        p["params"] = {"w": draw(M, dq, scale=dq ** -0.5)}
    elif kind == "additive":
        p["params"] = {"w_query": draw(A, dq, scale=dq ** -0.5), "b_query": draw(A, scale=0.1),
                       "w_memory": draw(A, M, scale=M ** -0.5), "v": draw(A)}
    if ascending:  # a position's score depends on its own memory row only, so a permutation reorders the scores
        sc = ref_scores(p["query"], p["memory"], kind, p["params"])[:, 0]  # [B, S]
        lens = p["lengths"] if p["lengths"] is not None else torch.full((B,), S)
        for b in range(B):
            n = int(lens[b])
            p["memory"][b, :n] = p["memory"][b, sc[b, :n].argsort()]
    return p


def reference(p, d_context, dtype=torch.float64):
    """context, weights, lse and the gradients of (query, memory, params...) for upstream d_context."""
    query = p["query"].to(dtype).requires_grad_()
    memory = p["memory"].to(dtype).requires_grad_()
    params = {k: v.to(dtype).requires_grad_() for k, v in p["params"].items()}
    context, weights = ref_attention(query, memory, p["lengths"], p["kind"], params, return_weights=True)
    leaves = [query, memory, *params.values()]
    grads = torch.autograd.grad(context, leaves, d_context.to(dtype))
    out = dict(context=context.detach(), weights=weights.detach(), d_query=grads[0], d_memory=grads[1])
    out.update({f"d_{k}": g for k, g in zip(params, grads[2:])})
    return out


def reference_lse(p) -> torch.Tensor:
    """log Σ_s exp(score) over the valid positions, float64."""
    s = ref_scores(p["query"], p["memory"], p["kind"], p["params"])
    if p["lengths"] is not None:
        pad = torch.arange(s.shape[-1]) >= p["lengths"][:, None]
        s = s.masked_fill(pad[:, None, :], float("-inf"))
    return torch.logsumexp(s, -1)


def kernel_inputs(p, dtype):
    """What the op layer hands the kernels: (query', keys, values, v, scale), the projections done in float64
    and rounded to the storage dtype (the GEMMs outside), and NaN in every padded memory/key row."""
    kind, q, mem, prm = p["kind"], p["query"], p["memory"], p["params"]
    v, scale = None, 1.0
    if kind == "general":
        q = q @ prm["w"].T
    elif kind == "additive":
        q = q @ prm["w_query"].T + prm["b_query"]
        v = prm["v"]
    elif kind == "scaled_dot":
        scale = 1.0 / math.sqrt(mem.shape[-1])
    keys = mem @ prm["w_memory"].T if kind == "additive" else mem
    keys, values = keys.to(dtype).clone(), mem.to(dtype).clone()
    if p["lengths"] is not None:
        pad = torch.arange(mem.shape[1]) >= p["lengths"][:, None]
        keys[pad] = float("nan")
        values[pad] = float("nan")
    return q.to(dtype), keys, values, (v.to(dtype) if v is not None else None), scale


def run_attention(harness, workdir: Path, p, d_context, dtype, splits: int, threads: int, return_weights=True):
    """Forward then backward through the harness; the gradients chained through the projections (float64)."""
    q, keys, values, v, scale = kernel_inputs(p, dtype)
    B, Tq, D = q.shape
    S, M = values.shape[1], values.shape[2]
    additive = p["kind"] == "additive"
    args = dict(dtype=DTYPE_CODE[dtype], additive=int(additive), B=B, Tq=Tq, S=S, D=D, M=M, splits=splits,
                threads=threads, has_lengths=int(p["lengths"] is not None), return_weights=int(return_weights))
    inputs = dict(query=q, keys=keys, values=values, scale=torch.tensor([scale], dtype=torch.float32))
    if v is not None:
        inputs["v"] = v
    if p["lengths"] is not None:
        inputs["lengths"] = p["lengths"]
    fwd = run_harness(harness, workdir / "fwd", "attn_fwd", args, inputs,
                      dict(context=((B, Tq, M), dtype), lse=((B, Tq), torch.float32),
                           weights=((B, Tq, S) if return_weights else (0,), dtype)))
    bwd = run_harness(harness, workdir / "bwd", "attn_bwd", args,
                      {**inputs, "d_context": d_context.to(dtype), "context": fwd["context"], "lse": fwd["lse"]},
                      dict(d_query=((B, Tq, D), dtype), d_keys=((B, S, D), dtype), d_values=((B, S, M), dtype),
                           d_v=(((D,) if additive else (0,)), dtype)))
    got = {k: t.double() for k, t in {**fwd, **bwd}.items()}
    # The chain rule through the projections the op layer runs as GEMMs (what the binding's autograd does).
    kind, prm, query, memory = p["kind"], p["params"], p["query"], p["memory"]
    dq, dk = got["d_query"], got["d_keys"]
    if kind == "general":
        got["d_w"] = torch.einsum("btm,btd->md", dq, query)
        dq = dq @ prm["w"]
    elif kind == "additive":
        got["d_w_query"] = torch.einsum("bta,btd->ad", dq, query)
        got["d_b_query"] = dq.sum((0, 1))
        got["d_w_memory"] = torch.einsum("bsa,bsm->am", dk, memory)
        dq, dk = dq @ prm["w_query"], dk @ prm["w_memory"]
    got["d_memory"] = got["d_values"] + dk
    got["d_query_in"] = dq
    return got


GRAD_NAMES = {"dot": [], "scaled_dot": [], "general": ["d_w"], "additive": ["d_w_query", "d_b_query", "d_w_memory",
                                                                              "d_v"]}


def compare(got, want, kind, check, with_weights=True):
    check("context", got["context"], want["context"])
    if with_weights:
        check("weights", got["weights"], want["weights"])
    check("d_query", got["d_query_in"], want["d_query"])
    check("d_memory", got["d_memory"], want["d_memory"])
    for name in GRAD_NAMES[kind]:
        check(name, got[name], want[name])


KINDS = ["dot", "scaled_dot", "general", "additive"]
SHAPES = [
    dict(B=3, Tq=1, S=7, M=24, lengths=True, splits=3, threads=64),
    dict(B=5, Tq=1, S=33, M=40, lengths=False, splits=1, threads=64, weights=False),  # no score workspace
    dict(B=3, Tq=2, S=33, M=24, lengths=True, splits=2, threads=96),
    dict(B=5, Tq=1, S=1, M=40, lengths=True, splits=3, threads=32),  # S = 1: splits 1 and 2 hold no position
    # 150 positions in one split: tiles of 64, 64, 22 positions, with the scores of each row's valid positions in
    # ascending order, so that every tile raises the running max (the online softmax must rescale the context).
    dict(B=3, Tq=1, S=150, M=24, lengths=True, splits=1, threads=64, ascending=True),
]
DQ = 40  # query size before the projection (general, additive)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=[case_id(**s) for s in SHAPES])
def test_attention_fp32_matches_reference(harness, tmp_path, kind, shape):
    B, Tq, S, M = shape["B"], shape["Tq"], shape["S"], shape["M"]
    p = make_problem(kind, B, Tq, S, DQ, M, torch.float32, shape["lengths"], shape.get("ascending", False))
    d_context = torch.randn(B, Tq, M, dtype=torch.float64).float().double()
    with_weights = shape.get("weights", True)
    got = run_attention(harness, tmp_path, p, d_context, torch.float32, shape["splits"], shape["threads"],
                        return_weights=with_weights)
    want = reference(p, d_context)

    def check(name, a, e):
        assert_close(a, e, f"{kind} {name}", rtol=1e-5, atol=1e-5 * (1 + e.abs().max().item()))

    compare(got, want, kind, check, with_weights)
    assert_close(got["lse"], reference_lse(p), f"{kind} lse", rtol=1e-5, atol=1e-5)
    if p["lengths"] is not None:  # padding: weight 0 and gradient 0 exactly
        pad = torch.arange(S) >= p["lengths"][:, None]
        if with_weights:
            assert torch.all(got["weights"][pad[:, None, :].expand(B, Tq, S)] == 0)
        assert torch.all(got["d_values"][pad] == 0) and torch.all(got["d_keys"][pad] == 0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
# a decoder step (Tq = 1), and teacher forcing with more query rows than D + M: the 16-bit backward sums its
# row terms in passes of D + M query rows (attention_bwd_kernel), here two or three
@pytest.mark.parametrize("B,Tq,S,M", [(5, 1, 33, 40), (3, 30, 9, 6)], ids=["step", "Tq30-passes"])
def test_attention_16bit_as_accurate_as_torch_in_that_dtype(harness, tmp_path, kind, dtype, B, Tq, S, M):
    """|kernel − ref64| ≤ 2·|reference in the same dtype − ref64| + floor (DESIGN.md §5), outputs and grads."""
    p = make_problem(kind, B, Tq, S, DQ, M, dtype, lengths=True)
    d_context = torch.randn(B, Tq, M, dtype=torch.float64).to(dtype).double()
    got = run_attention(harness, tmp_path, p, d_context, dtype, splits=2, threads=64)
    want, own = reference(p, d_context), reference(p, d_context, dtype=dtype)

    def check(name, a, e):
        assert not a.isnan().any(), f"{kind} {name}: NaN in the kernel's result"
        err = (a - e).abs().max().item()
        own_err = (own[name].double() - e).abs().max().item()
        floor = 2e-3 * (1 + e.abs().max().item())
        assert err <= 2 * own_err + floor, f"{kind} {name}: error {err:.3e} vs torch-{dtype} error {own_err:.3e}"

    compare(got, want, kind, check)


def test_attention_plan(harness, tmp_path):
    """The host plan (H100-like: 132 SMs, 227 KB): every split gets positions, and too much shared memory is
    reported with the sizes."""
    def plan(B, Tq, S, D, M, smem=232448, threads=128):
        out = run_harness(harness, tmp_path / f"{B}-{Tq}-{S}-{D}-{M}-{smem}", "attn_plan",
                          dict(B=B, Tq=Tq, S=S, D=D, M=M, sm_count=132, max_smem_per_cta=smem, threads=threads), {},
                          dict(ints=((2,), torch.int32), sizes=((4,), torch.int64), reason=((-1,), torch.uint8)))
        return out["ints"].tolist(), out["sizes"].tolist(), bytes(out["reason"].tolist()).decode()

    (splits, chunk), _, reason = plan(1, 1, 50, 512, 512)
    assert reason == "" and splits == 2 and chunk == 25  # 50 positions: at most ceil(50 / 32) CTAs
    (splits, chunk), _, reason = plan(1, 1, 1000, 512, 512)
    assert reason == "" and (splits - 1) * chunk < 1000 <= splits * chunk and chunk >= 32
    (splits, chunk), _, reason = plan(64, 1, 50, 512, 512)
    assert reason == "" and splits == 2 and chunk == 25  # 64 rows x 2 CTAs: still under 2 CTAs per SM
    (splits, chunk), _, reason = plan(300, 1, 50, 512, 512)
    assert reason == "" and splits == 1 and chunk == 50  # 300 rows already fill the GPU
    _, (fwd_smem, bwd_smem, _, _), reason = plan(8, 1, 50, 4096, 4096, smem=48 * 1024)
    assert bwd_smem > 48 * 1024 and "shared memory" in reason and str(bwd_smem) in reason
    _, _, reason = plan(8, 1, 50, 64, 64, threads=1024)
    assert "threads must be a multiple of 32" in reason


# ---------------------------------------------------------------------------------------------------------------
# The decoder step, run as the launcher will (decoder_step.cuh), against the reference decoder step.
# ---------------------------------------------------------------------------------------------------------------

def make_decoder(kind: str, B: int, S: int, H: int, M: int, E: int, dtype: torch.dtype):
    def draw(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype).double()

    L = 2
    k = H ** -0.5
    lstm_weights = []
    for layer in range(L):
        in_l = E + H if layer == 0 else H  # input feeding on layer 0
        lstm_weights.append((draw(4 * H, in_l, scale=k), draw(4 * H, H, scale=k), draw(4 * H, scale=k),
                             draw(4 * H, scale=k)))
    if kind == "general":
        params = {"w": draw(M, H, scale=H ** -0.5)}
    elif kind == "additive":
        params = {"w_query": draw(A, H, scale=k), "b_query": draw(A, scale=0.1),
                  "w_memory": draw(A, M, scale=M ** -0.5), "v": draw(A)}
    else:
        params = {}
    return dict(x=draw(B, E), feed=draw(B, H, scale=0.5), h=draw(L, B, H, scale=0.5), c=draw(L, B, H, scale=0.5),
                lstm_weights=lstm_weights, kind=kind, params=params, w_out=draw(H, M + H, scale=(M + H) ** -0.5),
                b_out=draw(H, scale=0.1), memory=draw(B, S, M), lengths=make_lengths(B, S))


def run_decoder_step(harness, workdir: Path, d, dtype, splits: int):
    """The launch sequence of decoder_step.cuh, GEMMs in torch (float64, rounded to the storage dtype)."""
    B, H = d["x"].shape[0], d["h"].shape[2]
    S, M = d["memory"].shape[1], d["memory"].shape[2]
    code = DTYPE_CODE[dtype]
    lens = d["lengths"]
    pad = torch.arange(S) >= lens[:, None]
    values = d["memory"].to(dtype).clone()
    values[pad] = float("nan")

    def gemm(x, w_ih, w_hh, b_ih, b_hh, h):
        return (torch.cat([x, h], 1) @ torch.cat([w_ih, w_hh], 1).T + b_ih + b_hh).to(dtype)

    # layer 0: GEMM over [x; feed; h_0], then the cell kernel
    w_ih, w_hh, b_ih, b_hh = d["lstm_weights"][0]
    g0 = gemm(torch.cat([d["x"], d["feed"]], 1), w_ih, w_hh, b_ih, b_hh, d["h"][0])
    l0 = run_harness(harness, workdir / "cell0", "dec_cell",
                     dict(dtype=code, B=B, H=H, ld_h_copy=0, blocks=2, threads=32),
                     dict(gates=g0, c=d["c"][0].to(dtype)), dict(h_new=((B, H), dtype), c_new=((B, H), dtype)))
    # top layer
    w_ih, w_hh, b_ih, b_hh = d["lstm_weights"][1]
    g1 = gemm(l0["h_new"].double(), w_ih, w_hh, b_ih, b_hh, d["h"][1])
    c1 = d["c"][1].to(dtype)
    kind, prm = d["kind"], d["params"]
    if kind == "additive":  # cell kernel, query projection GEMM, additive attention kernel
        cell = run_harness(harness, workdir / "cell1", "dec_cell",
                           dict(dtype=code, B=B, H=H, ld_h_copy=M + H, blocks=1, threads=64), dict(gates=g1, c=c1),
                           dict(h_new=((B, H), dtype), c_new=((B, H), dtype), h_copy=((B, M + H), dtype)))
        q = (cell["h_new"].double() @ prm["w_query"].T + prm["b_query"]).to(dtype)
        keys = (d["memory"] @ prm["w_memory"].T).to(dtype)
        keys[pad] = float("nan")
        attn = run_harness(harness, workdir / "attn", "attn_fwd",
                           dict(dtype=code, additive=1, B=B, Tq=1, S=S, D=A, M=M, splits=splits, threads=64,
                                has_lengths=1, return_weights=1),
                           dict(query=q, keys=keys, values=values, v=prm["v"].to(dtype), lengths=lens,
                                scale=torch.tensor([1.0])),
                           dict(context=((B, M), dtype), weights=((B, S), dtype)))
        # The binding passes h_copy = ctx_h + M and the attention's context = ctx_h with ldc = M + H; here the
        # harness' h_copy is a [B, M + H] buffer of its own whose columns [0, H) the cell fills.
        assert cell["h_copy"][:, H:].isnan().all(), "the cell kernel wrote past its H columns of h_copy"
        ctx_h = torch.cat([attn["context"], cell["h_copy"][:, :H]], 1)
        h_top, c_top, weights = cell["h_new"], cell["c_new"], attn["weights"]
    else:  # one launch: cell + attention (+ combine when splits > 1)
        keys = (d["memory"] @ prm["w"]).to(dtype) if kind == "general" else d["memory"].to(dtype)
        keys = keys.clone()
        keys[pad] = float("nan")
        scale = 1.0 / math.sqrt(M) if kind == "scaled_dot" else 1.0
        step = run_harness(harness, workdir / "step", "dec_step",
                           dict(dtype=code, B=B, S=S, H=H, M=M, splits=splits, threads=64, has_lengths=1),
                           dict(gates=g1, c=c1, keys=keys, values=values, lengths=lens,
                                scale=torch.tensor([scale], dtype=torch.float32)),
                           dict(h_new=((B, H), dtype), c_new=((B, H), dtype), ctx_h=((B, M + H), dtype),
                                weights=((B, S), dtype), lse=((B,), torch.float32)))
        ctx_h, h_top, c_top, weights = step["ctx_h"], step["h_new"], step["c_new"], step["weights"]
        assert torch.equal(ctx_h[:, M:], h_top), "ctx_h's h part is not the stored h'"
    pre = (ctx_h.double() @ d["w_out"].T).to(dtype)  # the combine GEMM, no concat
    out = run_harness(harness, workdir / "tanh", "dec_tanh",
                      dict(dtype=code, B=B, H=H, has_bias=1, blocks=1, threads=32),
                      dict(pre=pre, b_out=d["b_out"].to(dtype)), dict(out=((B, H), dtype)))["out"]
    return dict(out=out.double(), h=torch.stack([l0["h_new"], h_top]).double(),
                c=torch.stack([l0["c_new"], c_top]).double(), weights=weights.double())


DECODER_CASES = [dict(kind=k, splits=s) for k, s in
                 (("dot", 1), ("scaled_dot", 3), ("general", 2), ("additive", 3))]


@pytest.mark.parametrize("case", DECODER_CASES, ids=[case_id(**c) for c in DECODER_CASES])
def test_decoder_step_fp32_matches_reference(harness, tmp_path, case):
    kind = case["kind"]
    B, S, H, E = 3, 7, 24, 5
    M = H if kind in ("dot", "scaled_dot") else 40
    d = make_decoder(kind, B, S, H, M, E, torch.float32)
    got = run_decoder_step(harness, tmp_path, d, torch.float32, case["splits"])
    out, h, c, weights = ref_decoder_step(d["x"], d["feed"], d["h"], d["c"], d["lstm_weights"], kind, d["params"],
                                          d["w_out"], d["b_out"], d["memory"], d["lengths"])
    for name, e in (("out", out), ("h", h), ("c", c), ("weights", weights)):
        assert_close(got[name], e, f"decoder {kind} {name}", rtol=1e-5, atol=1e-5 * (1 + e.abs().max().item()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_decoder_step_16bit_as_accurate_as_torch(harness, tmp_path, dtype):
    B, S, H, M, E = 5, 33, 24, 40, 5
    d = make_decoder("general", B, S, H, M, E, dtype)
    got = run_decoder_step(harness, tmp_path, d, dtype, splits=2)
    args = lambda t: (d["x"].to(t), d["feed"].to(t), d["h"].to(t), d["c"].to(t),  # noqa: E731
                      [tuple(w.to(t) for w in lw) for lw in d["lstm_weights"]], "general",
                      {k: v.to(t) for k, v in d["params"].items()}, d["w_out"].to(t), d["b_out"].to(t),
                      d["memory"].to(t), d["lengths"])
    want = dict(zip(("out", "h", "c", "weights"), ref_decoder_step(*args(torch.float64))))
    own = dict(zip(("out", "h", "c", "weights"), ref_decoder_step(*args(dtype))))
    for name in want:
        e = want[name]
        assert not got[name].isnan().any(), f"{name}: NaN in the kernels' result"
        err = (got[name] - e).abs().max().item()
        own_err = (own[name].double() - e).abs().max().item()
        floor = 2e-3 * (1 + e.abs().max().item())
        assert err <= 2 * own_err + floor, f"decoder {name}: error {err:.3e} vs torch-{dtype} error {own_err:.3e}"


def test_decoder_cell_kernel_strides_over_the_grid(harness, tmp_path):
    """decoder_lstm_cell_kernel with fewer threads than units (grid-stride loop) and an h copy with a row stride:
    every unit written, the copy's other columns untouched."""
    B, H, ld = 3, 40, 50
    gates, c = torch.randn(B, 4 * H), torch.randn(B, H)
    out = run_harness(harness, tmp_path, "dec_cell", dict(dtype=0, B=B, H=H, ld_h_copy=ld, blocks=1, threads=32),
                      dict(gates=gates, c=c), dict(h_new=((B, H), torch.float32), c_new=((B, H), torch.float32),
                                                   h_copy=((B, ld), torch.float32)))
    i, f, g, o = gates.double().chunk(4, 1)
    c_new = torch.sigmoid(f) * c.double() + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    assert_close(out["c_new"].double(), c_new, "c_new", rtol=1e-5, atol=1e-6)
    assert_close(out["h_new"].double(), h_new, "h_new", rtol=1e-5, atol=1e-6)
    assert torch.equal(out["h_copy"][:, :H], out["h_new"]) and out["h_copy"][:, H:].isnan().all()
