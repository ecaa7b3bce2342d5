"""The CUDA C++ kernels of csrc/cuda, executed on the CPU through the harness (DESIGN.md §2).

The same lstm_persistent.cu that nvcc compiles for sm_80/sm_90 is compiled here with g++ -std=c++20
-DFS2S_CPU_HARNESS -fsanitize=address,undefined into a small program (csrc/cuda/harness/main.cpp) that runs
every CUDA thread of a small grid as a std::thread. The program reads its inputs from files and writes its
outputs (NaN-filled before the kernel runs, so an element never written fails), so ASan needs no runtime
preloaded into Python, and an out-of-bounds index anywhere in a kernel stops it with a non-zero exit.

Results are compared with fused_s2s.reference.lstm.lstm_layer in float64: fp32 W_hh within fp32 tolerance;
bf16/fp16 W_hh against torch's own error in that dtype (DESIGN.md §5). Gradients: the kernel's dgates turned
into dx, dW_ih, dW_hh, db with torch, as the op layer will, against autograd of the reference.

What this cannot show (cuda_compat.cuh lists it): GPU timing and occupancy, weak memory ordering, lock-step
warps, the hardware's mma rounding. The build (tests/cuda_harness_build.py) is cached once per test process.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fused_s2s.reference.lstm import lstm_layer
from tests.cuda_harness_build import DTYPE_CODE, build_harness, run_harness
from tests.utils import assert_close, case_id, tolerance


@pytest.fixture(scope="session")
def harness() -> Path:
    """The ASan/UBSan harness program (tests/cuda_harness_build.py), built once per test process."""
    return build_harness()


# ---------------------------------------------------------------------------------------------------------------
# The building blocks: 16-bit rounding, the fragment layout, the fragment product, the sanitizer itself.
# ---------------------------------------------------------------------------------------------------------------

def test_sanitizer_catches_an_out_of_bounds_index(harness, tmp_path):
    proc = run_harness(harness, tmp_path, "oob_selftest", {}, {}, {}, expect_ok=False)
    assert proc.returncode != 0 and "heap-buffer-overflow" in proc.stderr, \
        f"reading past the block's shared memory did not stop the program (rc {proc.returncode}):\n{proc.stderr}"


def test_compat_shuffles_atomics_and_barriers(harness, tmp_path):
    """cuda_compat's primitives themselves (see fs2s_harness_compat_selftest): block 1's second warp exits at
    once; the others reduce over the warp, broadcast lane 3, count with atomicAdd and meet at the grid barrier."""
    out = run_harness(harness, tmp_path, "compat_selftest", {}, {}, {"out": ((128, 3), torch.int32)})["out"]
    g = torch.arange(128)
    running = g < 96
    warp_base = g // 32 * 32
    want = torch.stack([warp_base * 32 + 31 * 32 // 2, warp_base + 3, torch.full((128,), 96)], 1)
    assert torch.equal(out[running], want[running].to(torch.int32)), out[running][:4]
    assert torch.all(out[~running] == -1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_16bit_rounding_is_torchs(harness, tmp_path, dtype):
    """from_float/to_float of the harness' bf16/half structs round to nearest even, as torch (and the GPU) do."""
    info = torch.finfo(dtype)
    x = torch.cat([
        torch.randn(4000) * torch.logspace(-9, 5, 4000),                     # every magnitude, both signs
        torch.tensor([0.0, -0.0, float("inf"), -float("inf"), info.max, -info.max, info.tiny, info.tiny / 8,
                      65504.0, 65519.0, 65520.0, 1e-8, 2.0 ** -25, 2.0 ** -24, 3 * 2.0 ** -25, 1.0 + 2.0 ** -8,
                      1.0 + 3 * 2.0 ** -8, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 3.0e38]),
        (torch.randn(1000) * 100).to(dtype).float() + torch.randint(-1, 2, (1000,)) * 2.0 ** -20,  # near ties
    ]).float()
    out = run_harness(harness, tmp_path, "round", {"dtype": DTYPE_CODE[dtype], "n": x.numel()}, {"x": x},
                      {"out": ((x.numel(),), torch.float32)})["out"]
    want = x.to(dtype).float()
    bad = (out != want) & ~(out.isnan() & want.isnan())
    assert not bad.any(), f"{int(bad.sum())} roundings differ, e.g. {x[bad][:5].tolist()} -> " \
                          f"{out[bad][:5].tolist()} (torch {want[bad][:5].tolist()})"
    assert torch.equal(out.isnan(), want.isnan())


def isa_fragment_layout() -> torch.Tensor:
    """PTX ISA, "Matrix fragments for mma.m16n8k16 with floating point type", transcribed from its tables:
    per lane A's a0..a7 (row, col), B's b0..b3 (row k, col n), C's c0..c3 (row, col)."""
    layout = torch.empty(32, 16, 2, dtype=torch.int32)
    for lane in range(32):
        group, tig = lane >> 2, lane % 4
        for i in range(8):  # A: row groupID for a0, a1, a4, a5, groupID + 8 for a2, a3, a6, a7
            row = group if i in (0, 1, 4, 5) else group + 8
            col = tig * 2 + (i & 1) if i < 4 else tig * 2 + (i & 1) + 8
            layout[lane, i] = torch.tensor([row, col])
        for i in range(4):  # B: row (tig * 2) + (i & 1) for b0, b1, + 8 for b2, b3; col groupID
            k = tig * 2 + (i & 1) if i < 2 else tig * 2 + (i & 1) + 8
            layout[lane, 8 + i] = torch.tensor([k, group])
        for i in range(4):  # C: row groupID for c0, c1, groupID + 8 for c2, c3; col tig * 2 + (i & 1)
            row = group if i < 2 else group + 8
            layout[lane, 12 + i] = torch.tensor([row, tig * 2 + (i & 1)])
    return layout


def test_fragment_layout_is_the_ptx_isas(harness, tmp_path):
    got = run_harness(harness, tmp_path, "layout", {}, {}, {"layout": ((32, 16, 2), torch.int32)})["layout"]
    want = isa_fragment_layout()
    bad = (got != want).any(-1).nonzero().tolist()
    assert not bad, f"(lane, element) pairs whose (row, col) differ from the ISA: {bad[:8]}"
    # Each matrix is covered exactly once by the warp.
    for lo, hi, shape in ((0, 8, (16, 16)), (8, 12, (16, 8)), (12, 16, (16, 8))):
        cover = torch.zeros(shape, dtype=torch.int32)
        for rc in got[:, lo:hi].reshape(-1, 2).tolist():
            cover[rc[0], rc[1]] += 1
        assert torch.all(cover == 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("mnk", [(16, 8, 16), (48, 24, 64)], ids=lambda s: "M{}-N{}-K{}".format(*s))
def test_mma_fragments_multiply_like_torch(harness, tmp_path, dtype, mnk):
    """load_a_frag / load_b_frag / mma_16x8x16 / store_c_frag: the product of random 16-bit matrices, exactly
    up to fp32 summation order (products of 16-bit values are exact in fp32)."""
    M, N, K = mnk
    a = torch.randn(M, K).to(dtype)
    bt = torch.randn(N, K).to(dtype)
    c = run_harness(harness, tmp_path, "mma", {"dtype": DTYPE_CODE[dtype], "M": M, "N": N, "K": K, "threads": 64},
                    {"a": a, "bt": bt}, {"c": ((M, N), torch.float32)})["c"]
    want = a.double() @ bt.double().T
    assert_close(c.double(), want, "mma product", rtol=1e-6, atol=1e-5 * K ** 0.5)


# ---------------------------------------------------------------------------------------------------------------
# The persistent LSTM kernels against the reference.
# ---------------------------------------------------------------------------------------------------------------

I = 5  # input size of the made-up layer (the kernels see only gx = x·W_ihᵀ + b)


def make_problem(T: int, B: int, H: int, dtype: torch.dtype, lengths: bool):
    """Layer inputs in float64, rounded to the storage dtype (for 16-bit: every tensor, as torch would hold them)."""
    bound = H ** -0.5
    store = dtype if dtype != torch.float32 else torch.float32

    def draw(*shape, scale=1.0, uniform=False):
        t = (torch.rand(*shape, dtype=torch.float64) * 2 - 1) * bound if uniform else torch.randn(*shape) * scale
        return t.to(store).double()

    p = dict(x=draw(T, B, I), h0=draw(B, H, scale=0.5), c0=draw(B, H, scale=0.5),
             w_ih=draw(4 * H, I, uniform=True), w_hh=draw(4 * H, H, uniform=True),
             b_ih=draw(4 * H, uniform=True), b_hh=draw(4 * H, uniform=True))
    p["lengths"] = None
    if lengths:
        lens = torch.randint(1, T + 1, (B,))
        lens[0] = T          # a full row ...
        lens[-1] = max(1, T // 2)  # ... and one that stops early, wherever the draw lands
        p["lengths"] = lens.to(torch.int64)
    return p


def reference(p, reverse, dtype=torch.float64):
    """y, h_n, c_n and the gradients of (x, h0, c0, w_ih, w_hh, b_ih, b_hh) for upstream (dy, dh_n, dc_n)."""
    names = ["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"]
    leaves = {k: p[k].detach().to(dtype, copy=True).requires_grad_() for k in names}
    y, h_n, c_n = lstm_layer(leaves["x"], leaves["h0"], leaves["c0"], leaves["w_ih"], leaves["w_hh"], leaves["b_ih"],
                             leaves["b_hh"], None, lengths=p["lengths"], reverse=reverse)
    ups = [p["dy"], p["dh_n"], p["dc_n"]]
    grads = torch.autograd.grad([y, h_n, c_n], [leaves[k] for k in names], [u.to(dtype) for u in ups])
    return dict(y=y, h_n=h_n, c_n=c_n, **{f"d{k}": g for k, g in zip(names, grads)})


def run_kernels(harness, workdir: Path, p, dtype, reverse: bool, units: int, threads: int = 64):
    """Forward then backward through the harness; the weight and input gradients from dgates with torch."""
    T, B, H = p["x"].shape[0], p["x"].shape[1], p["h0"].shape[1]
    gx = (p["x"] @ p["w_ih"].T + p["b_ih"] + p["b_hh"]).float()
    w_hh = p["w_hh"].to(dtype)
    common = {"dtype": DTYPE_CODE[dtype], "T": T, "B": B, "H": H, "units_per_cta": units, "threads": threads,
              "reverse": int(reverse), "has_lengths": int(p["lengths"] is not None)}
    extra = {"lengths": p["lengths"]} if p["lengths"] is not None else {}
    fwd = run_harness(harness, workdir / "fwd", "fwd", common,
                      {"gx": gx, "w_hh": w_hh, "h0": p["h0"].float(), "c0": p["c0"].float(), **extra},
                      {"y": ((T, B, H), torch.float32), "h_n": ((B, H), torch.float32),
                       "c_n": ((B, H), torch.float32), "gates": ((T, B, 4 * H), torch.float32),
                       "c": ((T, B, H), torch.float32)})
    bwd = run_harness(harness, workdir / "bwd", "bwd", {**common, "has_dy": 1},
                      {"dy": p["dy"].float(), "dh_n": p["dh_n"].float(), "dc_n": p["dc_n"].float(),
                       "gates": fwd["gates"], "c": fwd["c"], "c0": p["c0"].float(), "w_hh": w_hh, **extra},
                      {"dgates": ((T, B, 4 * H), torch.float32), "dh0": ((B, H), torch.float32),
                       "dc0": ((B, H), torch.float32)})
    # What the op layer does with dgates: h_{t-1} of each step is y of the forward's previous step where that
    # step was active, else h0 (reverse: a row's first step follows steps it skipped); rows inactive at t have
    # dgates 0, so their h_{t-1} does not matter.
    dg = bwd["dgates"].double()
    y = fwd["y"].double()
    lens = p["lengths"] if p["lengths"] is not None else torch.full((B,), T)
    t_prev = torch.arange(T) + (1 if reverse else -1)
    prev_active = ((t_prev >= 0) & (t_prev < T))[:, None] & (t_prev[:, None] < lens[None, :])  # [T, B]
    h_prev = torch.where(prev_active[..., None], y[t_prev.clamp(0, T - 1)], p["h0"].float().double()[None])
    db = dg.sum((0, 1))
    return dict(y=y, h_n=fwd["h_n"].double(), c_n=fwd["c_n"].double(),
                dx=dg @ p["w_ih"], dh0=bwd["dh0"].double(), dc0=bwd["dc0"].double(),
                dw_ih=dg.reshape(-1, 4 * H).T @ p["x"].reshape(-1, I), dw_hh=dg.reshape(-1, 4 * H).T @ h_prev.reshape(-1, H),
                db_ih=db, db_hh=db)


OUTPUTS = ["y", "h_n", "c_n", "dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"]

CASES_FP32 = [
    dict(T=7, B=3, H=24, U=8, lengths=False, reverse=False),
    dict(T=7, B=5, H=40, U=16, lengths=True, reverse=False),
    dict(T=7, B=5, H=24, U=12, lengths=False, reverse=True),
    dict(T=7, B=3, H=40, U=16, lengths=True, reverse=True),
    dict(T=1, B=5, H=24, U=8, lengths=False, reverse=False),
]


@pytest.mark.parametrize("case", CASES_FP32, ids=[case_id(**c) for c in CASES_FP32])
def test_persistent_lstm_fp32_matches_reference(harness, tmp_path, case):
    T, B, H = case["T"], case["B"], case["H"]
    p = make_problem(T, B, H, torch.float32, case["lengths"])
    p.update(dy=torch.randn(T, B, H, dtype=torch.float64), dh_n=torch.randn(B, H, dtype=torch.float64),
             dc_n=torch.randn(B, H, dtype=torch.float64))
    if p["lengths"] is not None:  # y is 0 where a row is inactive: an upstream gradient there must not matter
        p["dy"] = torch.where(torch.arange(T)[:, None, None] < p["lengths"][None, :, None], p["dy"], 0.0)
    p = {k: (v.float().double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in p.items()}
    got = run_kernels(harness, tmp_path, p, torch.float32, case["reverse"], case["U"])
    want = reference(p, case["reverse"])
    rtol, atol = tolerance(torch.float32)
    for name in OUTPUTS:
        assert_close(got[name], want[name].detach(), name, rtol=rtol, atol=atol)


CASES_16 = [
    dict(T=7, B=5, H=40, U=16, lengths=True, reverse=False),
    dict(T=7, B=9, H=24, U=8, lengths=True, reverse=True),
    dict(T=1, B=3, H=24, U=4, lengths=False, reverse=False),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES_16, ids=[case_id(**c) for c in CASES_16])
def test_persistent_lstm_16bit_as_accurate_as_torch_in_that_dtype(harness, tmp_path, case, dtype):
    """|kernel − ref64| ≤ 2·|reference in the same dtype − ref64| + floor (DESIGN.md §5), outputs and grads."""
    T, B, H = case["T"], case["B"], case["H"]
    p = make_problem(T, B, H, dtype, case["lengths"])
    p.update(dy=torch.randn(T, B, H).to(dtype).double(), dh_n=torch.randn(B, H).to(dtype).double(),
             dc_n=torch.randn(B, H).to(dtype).double())
    got = run_kernels(harness, tmp_path, p, dtype, case["reverse"], case["U"])
    want = reference(p, case["reverse"])
    own = reference(p, case["reverse"], dtype=dtype)
    for name in OUTPUTS:
        w = want[name].detach()
        assert not got[name].isnan().any(), f"{name}: NaN in the kernel's result"
        err = (got[name] - w).abs().max().item()
        own_err = (own[name].detach().double() - w).abs().max().item()
        floor = 2e-3 * (1 + w.abs().max().item())
        assert err <= 2 * own_err + floor, f"{name}: error {err:.3e} vs torch-{dtype} error {own_err:.3e}"


def test_saved_tensors_follow_the_lengths_contract(harness, tmp_path):
    """Inactive steps: y = 0, saved gates = 0, saved c = the kept c, dgates = 0 (lstm_persistent.cuh)."""
    T, B, H = 6, 3, 24
    p = make_problem(T, B, H, torch.float32, lengths=True)
    p["lengths"] = torch.tensor([6, 1, 3])
    p.update(dy=torch.randn(T, B, H, dtype=torch.float64), dh_n=torch.randn(B, H, dtype=torch.float64),
             dc_n=torch.randn(B, H, dtype=torch.float64))
    for reverse in (False, True):
        w = tmp_path / f"rev{int(reverse)}"
        common = {"dtype": 0, "T": T, "B": B, "H": H, "units_per_cta": 8, "threads": 64, "reverse": int(reverse),
                  "has_lengths": 1}
        gx = (p["x"] @ p["w_ih"].T + p["b_ih"] + p["b_hh"]).float()
        fwd = run_harness(harness, w / "fwd", "fwd", common,
                          {"gx": gx, "w_hh": p["w_hh"].float(), "h0": p["h0"].float(), "c0": p["c0"].float(),
                           "lengths": p["lengths"]},
                          {"y": ((T, B, H), torch.float32), "h_n": ((B, H), torch.float32),
                           "c_n": ((B, H), torch.float32), "gates": ((T, B, 4 * H), torch.float32),
                           "c": ((T, B, H), torch.float32)})
        bwd = run_harness(harness, w / "bwd", "bwd", {**common, "has_dy": 0},
                          {"dh_n": p["dh_n"].float(), "dc_n": p["dc_n"].float(), "gates": fwd["gates"],
                           "c": fwd["c"], "c0": p["c0"].float(), "w_hh": p["w_hh"].float(),
                           "lengths": p["lengths"]},
                          {"dgates": ((T, B, 4 * H), torch.float32), "dh0": ((B, H), torch.float32),
                           "dc0": ((B, H), torch.float32)})
        inactive = torch.arange(T)[:, None] >= p["lengths"][None, :]  # [T, B]
        assert torch.all(fwd["y"][inactive] == 0) and torch.all(fwd["gates"][inactive] == 0)
        assert torch.all(bwd["dgates"][inactive] == 0)
        # Row 1 (length 1) runs one step: forward, c_n is its c at t = 0 and later steps keep it; reverse, the
        # steps before its start keep c0.
        if reverse:
            assert torch.equal(fwd["c"][1:, 1], p["c0"].float()[1].expand(T - 1, H))
        else:
            assert torch.equal(fwd["c"][1:, 1], fwd["c"][0, 1].expand(T - 1, H))
        assert torch.equal(fwd["c_n"][1], fwd["c"][0, 1])
        # No dy: every gradient comes from (dh_n, dc_n) through the recurrence, the reference agrees.
        want = reference({**p, "dy": torch.zeros(T, B, H, dtype=torch.float64)}, reverse)
        rtol, atol = tolerance(torch.float32)
        assert_close(bwd["dh0"].double(), want["dh0"].detach(), "dh0 (no dy)", rtol=rtol, atol=atol)
        assert_close(bwd["dc0"].double(), want["dc0"].detach(), "dc0 (no dy)", rtol=rtol, atol=atol)


def test_zero_steps_pass_the_state_through(harness, tmp_path):
    B, H = 3, 24
    h0, c0, dh_n, dc_n = (torch.randn(B, H) for _ in range(4))
    w_hh = torch.randn(4 * H, H)
    common = {"dtype": 0, "T": 0, "B": B, "H": H, "units_per_cta": 8, "threads": 64, "reverse": 0, "has_lengths": 0}
    fwd = run_harness(harness, tmp_path / "fwd", "fwd", common,
                      {"gx": torch.empty(0), "w_hh": w_hh, "h0": h0, "c0": c0},
                      {"h_n": ((B, H), torch.float32), "c_n": ((B, H), torch.float32)})
    assert torch.equal(fwd["h_n"], h0) and torch.equal(fwd["c_n"], c0)
    bwd = run_harness(harness, tmp_path / "bwd", "bwd", {**common, "has_dy": 0},
                      {"dh_n": dh_n, "dc_n": dc_n, "gates": torch.empty(0), "c": torch.empty(0), "c0": c0,
                       "w_hh": w_hh}, {"dh0": ((B, H), torch.float32), "dc0": ((B, H), torch.float32)})
    assert torch.equal(bwd["dh0"], dh_n) and torch.equal(bwd["dc0"], dc_n)


# ---------------------------------------------------------------------------------------------------------------
# The host plan (sizes of an H100: 132 SMs, 227 KB opt-in shared memory per block).
# ---------------------------------------------------------------------------------------------------------------

def plan(harness, tmp_path, backward, B, H, elem_bytes, sm_count=132, smem=232448, threads=256):
    out = run_harness(harness, tmp_path, "plan",
                      dict(backward=int(backward), B=B, H=H, elem_bytes=elem_bytes, sm_count=sm_count,
                           max_smem_per_cta=smem, threads=threads), {},
                      {"plan": ((2,), torch.int32), "smem": ((1,), torch.int64), "reason": ((-1,), torch.uint8)})
    reason = bytes(out["reason"].tolist()).decode()
    return int(out["plan"][0]), int(out["plan"][1]), int(out["smem"][0]), reason


def test_plan_fits_h768_on_an_h100_and_says_why_not_when_too_big(harness, tmp_path):
    units, grid, smem, reason = plan(harness, tmp_path / "a", False, 16, 768, 2)
    assert reason == "" and units == 8 and grid == 96 and smem <= 232448
    units, grid, smem, reason = plan(harness, tmp_path / "b", True, 16, 768, 2)
    assert reason == "" and grid <= 132
    # The backward stages all of dgates_{t+1} [B, 4H] per CTA: B = 64 at H = 768 does not fit.
    units, grid, smem, reason = plan(harness, tmp_path / "c", True, 64, 768, 2)
    assert smem > 232448 and "shared memory" in reason and "allows 232448" in reason
    _, _, _, reason = plan(harness, tmp_path / "d", False, 16, 768, 3)
    assert "fp32, bf16 or fp16" in reason
