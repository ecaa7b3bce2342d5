"""backend="cuda" for the attention and decoder-step ops on machines without a GPU: every error path and its
message, each dispatch decision (which op runs, whether 16-bit inputs reach it natively, the warned fallback),
the shared-memory limit against attention.cuh's own plan, the fake kernels' dtypes, and FusedDecoder's choice.

The CUDA kernels are registered for the existing ops fused_s2s::attention_fwd / attention_bwd / decoder_step
under the CUDA dispatch key (csrc/cuda_bindings/attention_cuda.cu, decoder_step_cuda.cu), so backend="cuda"
calls the same op as backend="cpu". Here the "CUDA kernels are built" checks are monkeypatched, so a CPU tensor
that passes them reaches that op's CPU kernel: which shows the op called and the tensors it was given. The
kernels run in tests/test_cuda_harness_attention.py (CPU harness) and tests/test_cuda_attention.py (GPU).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import fused_s2s.ops.attention  # noqa: F401  (the module; fused_s2s.ops.attention is also the function's name)
import fused_s2s.ops.decoder_step  # noqa: F401
from fused_s2s.nn import FusedDecoder
from fused_s2s.nn import decoder as decoder_module
from fused_s2s.ops import lstm as lstm_ops
from fused_s2s.ops import lstm_cuda
from fused_s2s.reference.attention import attention as reference_attention
from tests.test_attention import make_case
from tests.test_decoder_step import assert_step_matches_reference, make_step_case
from tests.utils import assert_close

attn_ops = sys.modules["fused_s2s.ops.attention"]
step_ops = sys.modules["fused_s2s.ops.decoder_step"]

REPO_ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
H100_SMEM = 232448  # cudaDevAttrMaxSharedMemoryPerBlockOptin


@pytest.fixture(autouse=True)
def _fresh_fallback_warnings(monkeypatch):
    monkeypatch.setattr(attn_ops, "_FALLBACK_WARNED", set())
    monkeypatch.setattr(lstm_ops, "_FALLBACK_WARNED", set())


@pytest.fixture
def pretend_cuda(monkeypatch):
    """Pretend backend 'cuda' can run on these (CPU) tensors: the op then dispatches by device, to the CPU
    kernel, which shows what backend='cuda' called and with which tensors."""
    monkeypatch.setattr(attn_ops, "cuda_unavailable_reason", lambda device: None)
    monkeypatch.setattr(step_ops, "cuda_unavailable_reason", lambda device: None)
    monkeypatch.setattr(lstm_cuda, "cuda_unavailable_reason", lambda device, c_error, built=None: None)


# ---- "cuda" is a backend of both op families ----

def test_cuda_is_an_attention_backend():
    assert "cuda" in attn_ops.BACKENDS
    with pytest.raises(ValueError, match=r"attention backend must be one of \('auto', 'cpu', 'triton', 'cuda', "
                                         r"'reference'\)"):
        attn_ops.attention(*make_case("dot", 2, 1, 3, 4, 4, None)[:3], "dot", backend="cudnn")


def test_auto_on_cuda_stays_triton_or_reference():
    """No GPU has measured the CUDA kernels: "auto" on CUDA tensors is Triton (or torch ops for features the
    Triton kernels do not hold), never "cuda"."""
    cuda = torch.device("cuda", 0)
    assert attn_ops._resolve("auto", cuda, fits_triton=True) in ("triton",)
    assert attn_ops._resolve("auto", cuda, fits_triton=False) == "reference"
    assert attn_ops._resolve("auto", CPU) == "cpu"


# ---- errors: which part is missing, in words (lstm.py's) ----

def test_attention_cuda_on_cpu_without_a_cuda_build_names_both_reasons():
    if attn_ops.cuda_kernels_built():
        pytest.skip("this extension has CUDA kernels")
    query, memory, lens, params = make_case("general", 2, 3, 5, 4, 6, "random")
    with pytest.raises(RuntimeError) as e:
        attn_ops.attention(query, memory, lens, "general", params, backend="cuda")
    msg = str(e.value)
    assert msg.startswith("attention backend 'cuda' is unavailable: fused_s2s._C was built without the CUDA kernels")
    assert "rebuild with `pip install --no-build-isolation .` against a CUDA torch" in msg
    assert msg.endswith("the CUDA kernels need CUDA tensors, got tensors on cpu")
    if torch.version.cuda is None:
        assert "torch is a CPU build, torch.version.cuda is None" in msg


def test_attention_cuda_build_with_cpu_tensors_names_only_the_device(monkeypatch):
    monkeypatch.setattr(attn_ops, "cuda_kernels_built", lambda: True)
    query, memory, lens, params = make_case("dot", 2, 3, 5, 4, 4, None)
    with pytest.raises(RuntimeError, match=r"^attention backend 'cuda' is unavailable: the CUDA kernels need CUDA "
                                           r"tensors, got tensors on cpu$"):
        attn_ops.attention(query, memory, lens, "dot", backend="cuda")
    assert attn_ops.cuda_unavailable_reason(torch.device("cuda", 0)) is None


def test_attention_cuda_without_the_extension_says_so(monkeypatch):
    monkeypatch.setattr(attn_ops, "_C_ERROR", "the C++ extension fused_s2s._C is not built (boom)")
    assert attn_ops.cuda_unavailable_reason(torch.device("cuda", 0)) == \
        "the C++ extension fused_s2s._C is not built (boom)"


def test_kernels_built_reads_each_ops_own_cuda_registration(monkeypatch):
    asked = []

    def has_kernel(op, key):
        asked.append((op, key))
        return False

    monkeypatch.setattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", has_kernel)
    assert not attn_ops.cuda_kernels_built() and not step_ops.cuda_kernels_built()
    assert asked == [("fused_s2s::attention_fwd", "CUDA"), ("fused_s2s::decoder_step", "CUDA")]


def test_decoder_step_cuda_on_cpu_tensors_raises_lstms_error():
    if step_ops.cuda_kernels_built():
        pytest.skip("this extension has CUDA kernels")
    x, feed, h, c, weights, memory, lens = make_step_case()
    with torch.no_grad(), pytest.raises(RuntimeError) as e:
        step_ops.decoder_step(x, feed, h, c, weights, memory, lens, backend="cuda")
    msg = str(e.value)
    assert msg.startswith("backend 'cuda' is unavailable: fused_s2s._C was built without the CUDA kernels")
    assert msg.endswith("the CUDA kernels need CUDA tensors, got tensors on cpu")


def test_decoder_step_names_its_own_missing_kernel(monkeypatch):
    """An extension with the LSTM's CUDA kernels but not the step's (a partial build) says so for the step."""
    monkeypatch.setattr(lstm_cuda, "cuda_unavailable_reason",
                        lambda device, c_error, built=None: None if built is None else "no step kernel")
    x, feed, h, c, weights, memory, lens = make_step_case()
    with torch.no_grad(), pytest.raises(RuntimeError, match="^decoder_step backend 'cuda' is unavailable: "
                                                            "no step kernel$"):
        step_ops.decoder_step(x, feed, h, c, weights, memory, lens, backend="cuda")


def test_env_backend_cuda_reaches_the_step(monkeypatch):
    """FUSED_S2S_BACKEND=cuda overrides "auto" for the step as for the LSTM (resolve_backend)."""
    monkeypatch.setattr(lstm_ops, "ENV_BACKEND", "cuda")
    x, feed, h, c, weights, memory, lens = make_step_case()
    with torch.no_grad(), pytest.raises(RuntimeError, match="backend 'cuda' is unavailable"):
        step_ops.decoder_step(x, feed, h, c, weights, memory, lens)


# ---- dispatch decisions ----

@pytest.mark.parametrize("kind", ["dot", "scaled_dot", "general", "additive"])
def test_attention_cuda_calls_the_shared_op(kind, pretend_cuda):
    """backend='cuda' calls fused_s2s::attention_fwd (the CPU kernel here: same op, device picks the kernel),
    forward and backward through its registered autograd, with the reference's results."""
    query, memory, lens, params = make_case(kind, 3, 4, 7, 6, 6, "random")
    ctx, w = attn_ops.attention(query, memory, lens, kind, params, return_weights=True, backend="cuda")
    ctx_r, w_r = reference_attention(query, memory, lens, kind, params, return_weights=True)
    assert_close(ctx, ctx_r, "context")
    assert_close(w, w_r, "weights")
    g = torch.randn_like(ctx_r)
    inputs = [query, memory, *params.values()]
    for k, (a, e) in enumerate(zip(torch.autograd.grad(ctx, inputs, g), torch.autograd.grad(ctx_r, inputs, g))):
        assert_close(a, e, f"grad of input {k}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_attention_cuda_hands_16bit_tensors_to_the_op_natively(dtype, pretend_cuda):
    """The CUDA kernels hold 16-bit tensors themselves: no upcast to fp32 on the way (the CPU and Triton paths
    upcast). Here the op's CPU kernel receives them, and refuses them by name."""
    query, memory, lens, params = make_case("dot", 2, 3, 5, 4, 4, None, dtype=dtype)
    with pytest.raises(RuntimeError, match=f"the CPU kernel takes float32 or float64, got "
                                           f"{'BFloat16' if dtype == torch.bfloat16 else 'Half'}"):
        attn_ops.attention(query, memory, lens, "dot", backend="cuda")
    ctx, _ = attn_ops.attention(query, memory, lens, "dot", backend="cpu")  # "cpu" upcasts
    assert ctx.dtype == dtype


def test_attention_cuda_float64_falls_back_with_a_warning_once(pretend_cuda):
    query, memory, lens, params = make_case("additive", 2, 3, 5, 4, 6, "each", dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"backend 'cuda' runs this attention on 'cpu' instead: the CUDA attention "
                                         r"kernels take float32, bfloat16 or float16, got torch.float64"):
        ctx, _ = attn_ops.attention(query, memory, lens, "additive", params, backend="cuda")
    assert_close(ctx, reference_attention(query, memory, lens, "additive", params)[0], "context")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stated once per kind of reason
        attn_ops.attention(query, memory, lens, "additive", params, backend="cuda")


def test_cuda_fallback_warns_once_per_kind():
    with pytest.warns(UserWarning, match="runs this attention on 'triton' instead: attention: D=5"):
        assert attn_ops.cuda_fallback("attention: D=5 M=6 T=1 needs 9 bytes", "attention", "triton") == "triton"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attn_ops.cuda_fallback("attention: D=7 M=9 T=2 needs 10 bytes", "attention", "triton")
    with pytest.warns(UserWarning, match="runs this decoder step on 'reference'"):
        attn_ops.cuda_fallback("attention: D=5 M=6 T=1 needs 9 bytes", "decoder step", "reference")


@pytest.mark.parametrize("kind", ["dot", "scaled_dot", "general", "additive"])
@pytest.mark.parametrize("keys", [True, "project_query"], ids=["keys", "projected"])
def test_decoder_step_cuda_calls_the_shared_op(kind, keys, pretend_cuda):
    """backend='cuda' calls fused_s2s::decoder_step (the CPU kernel here) with the same arguments as 'cpu'."""
    with torch.no_grad():
        assert_step_matches_reference(make_step_case(kind=kind, L=2), "cuda", precomputed_keys=keys)


def test_decoder_step_cuda_hands_16bit_tensors_to_the_op_natively(pretend_cuda):
    x, feed, h, c, weights, memory, lens = make_step_case(dtype=torch.bfloat16)
    with torch.no_grad(), pytest.raises(RuntimeError, match="CPU kernel supports float32 and float64, got BFloat16"):
        step_ops.decoder_step(x, feed, h, c, weights, memory, lens, backend="cuda")


def test_decoder_step_cuda_float64_falls_back_with_a_warning(pretend_cuda, monkeypatch):
    monkeypatch.setattr(step_ops, "_kernels_take", lambda x, memory: False)  # the fallback: the reference
    case = make_step_case(kind="additive", dtype=torch.float64)
    with torch.no_grad(), pytest.warns(UserWarning, match=r"runs this decoder step on 'reference' instead: the CUDA "
                                                          r"attention kernels take float32, bfloat16 or float16"):
        assert_step_matches_reference(case, "cuda", torch.float64)


def test_decoder_step_cuda_still_refuses_grad(pretend_cuda):
    x, feed, h, c, weights, memory, lens = make_step_case()
    with pytest.raises(RuntimeError, match="inference only"):
        step_ops.decoder_step(x.requires_grad_(), feed, h, c, weights, memory, lens, backend="cuda")


# ---- the shared-memory limit: the Python copy against attention.cuh's attention_plan ----

@pytest.mark.parametrize("kind, D", [("dot", "H"), ("scaled_dot", "H"), ("general", "H"), ("additive", "A")])
def test_decoder_step_scores_over_the_kernels_feature_size(kind, D, monkeypatch):
    seen = []
    monkeypatch.setattr(step_ops, "cuda_unsupported_reason", lambda dtype, device, T, D, M: seen.append((T, D, M)))
    H, M, A = 6, 7, 4
    x, feed, h, c, weights, memory, lens = make_step_case(kind=kind, H=H, M=M, A=A)
    M = memory.shape[-1]
    keys = step_ops.attention_keys(kind, weights.attn_params, memory)
    step_ops._cuda_unsupported_reason(x, memory, weights, keys)
    assert seen[-1] == (1, {"H": H, "A": A}[D], M)
    if kind == "general":  # the query projected by w, scored against memory itself
        step_ops._cuda_unsupported_reason(x, memory, weights, None)
        step_ops._cuda_unsupported_reason(x, memory, weights, step_ops.attention_keys(kind, weights.attn_params,
                                                                                      memory, project_query=True))
        assert seen[-2:] == [(1, M, M), (1, M, M)]


_PLAN_MAIN = r"""
#include <cstdio>
#include "attention.cuh"
// One plan per stdin line "B Tq S D M sm_count max_smem": "fits fwd_smem bwd_smem".
int main() {
  int B, Tq, S, D, M, sm;
  long long smem;
  while (std::scanf("%d %d %d %d %d %d %lld", &B, &Tq, &S, &D, &M, &sm, &smem) == 7) {
    const auto p = fused_s2s::cuda::attention_plan(B, Tq, S, D, M, sm, static_cast<std::size_t>(smem));
    std::printf("%d %zu %zu\n", p.fits() ? 1 : 0, p.fwd_smem, p.bwd_smem);
  }
}
"""

PLAN_SHAPES = [(2, 1, 50, 512, 512), (64, 1, 50, 1024, 1024), (4, 100, 30, 256, 512), (1, 1, 1, 1, 1),
               (2, 3, 9, 13000, 13000), (2, 3, 9, 7000, 7000), (2, 40000, 9, 3, 3), (2, 60000, 9, 3, 3),
               (8, 17, 33, 6900, 7000)]


def test_python_shared_memory_limit_is_the_headers_plan(tmp_path, monkeypatch):
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler: cannot compile attention.cuh's plan")
    (tmp_path / "plan.cpp").write_text(_PLAN_MAIN)
    exe = tmp_path / "plan"
    proc = subprocess.run([cxx, "-std=c++20", "-O1", "-DFS2S_CPU_HARNESS", "-pthread",
                           f"-I{REPO_ROOT / 'csrc' / 'cuda'}", f"-I{REPO_ROOT / 'csrc' / 'include'}",
                           str(tmp_path / "plan.cpp"), "-o", str(exe)], capture_output=True, text=True)
    if proc.returncode != 0 and "barrier" in proc.stderr:
        pytest.skip(f"{cxx} lacks C++20 <barrier> (cuda_compat.cuh's harness path needs it)")
    assert proc.returncode == 0, proc.stderr
    stdin = "".join(f"{B} {T} {S} {D} {M} 132 {H100_SMEM}\n" for B, T, S, D, M in PLAN_SHAPES)
    out = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True).stdout.splitlines()
    monkeypatch.setattr(lstm_cuda, "_device_limits", lambda device: (132, H100_SMEM))
    cuda = torch.device("cuda", 0)
    fits = []
    for (B, T, S, D, M), line in zip(PLAN_SHAPES, out, strict=True):
        ok, fwd, bwd = map(int, line.split())
        reason = attn_ops.cuda_unsupported_reason(torch.float32, cuda, T, D, M)
        assert (reason is None) == bool(ok), (B, T, S, D, M, reason)
        if reason is not None:
            assert f"needs {max(fwd, bwd)} bytes of shared memory per CTA; the device allows {H100_SMEM}" in reason
        fits.append(bool(ok))
    assert any(fits) and not all(fits)  # the comparison covers refusals


def test_unsupported_reason_names_the_dtype_and_sizes():
    assert "got torch.float64" in attn_ops.cuda_unsupported_reason(torch.float64, CPU, 1, 4, 4)
    assert "feature sizes >= 1" in attn_ops.cuda_unsupported_reason(torch.float32, CPU, 1, 0, 4)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert attn_ops.cuda_unsupported_reason(dtype, CPU, 1, 4, 4) is None


# ---- the ops' fake kernels: lse is float32 for the 16-bit inputs only the CUDA kernels take ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_attention_fake_outputs(dtype):
    B, T, S, D, M = 2, 3, 5, 4, 6
    meta = dict(device="meta", dtype=dtype)
    ctx, lse, w = torch.ops.fused_s2s.attention_fwd(torch.empty(B, T, D, **meta), torch.empty(B, S, D, **meta),
                                                    torch.empty(B, S, M, **meta), None, None, 1.0, True)
    assert (ctx.shape, lse.shape, w.shape) == ((B, T, M), (B, T), (B, T, S))
    assert ctx.dtype == w.dtype == dtype
    assert lse.dtype == (dtype if dtype in (torch.float32, torch.float64) else torch.float32)


def test_attention_autograd_wiring_on_meta_bf16():
    """The registered autograd of attention_fwd hands back one gradient per differentiable input, in their
    dtype, for 16-bit inputs too (the CUDA kernels' case), with a float32 lse in between."""
    B, T, S, D, M = 2, 3, 5, 4, 6
    meta = dict(device="meta", dtype=torch.bfloat16, requires_grad=True)
    q, k, vals, v = (torch.empty(B, T, D, **meta), torch.empty(B, S, D, **meta), torch.empty(B, S, M, **meta),
                     torch.empty(D, **meta))
    ctx, lse, _ = torch.ops.fused_s2s.attention_fwd(q, k, vals, None, v, 1.0, False)
    assert not lse.requires_grad
    grads = torch.autograd.grad(ctx.sum(), (q, k, vals, v))
    assert [(g.shape, g.dtype) for g in grads] == [(t.shape, t.dtype) for t in (q, k, vals, v)]


# ---- FusedDecoder(backend="cuda") ----

def test_decoder_ops_backend_follows_the_ops_cuda_kernels(monkeypatch):
    assert decoder_module._ops_backend("triton") == "triton" and decoder_module._ops_backend("auto") == "auto"
    for attention_built, step_built, want in ((True, True, "cuda"), (True, False, "auto"), (False, True, "auto"),
                                              (False, False, "auto")):
        monkeypatch.setattr(decoder_module, "attention_has_cuda_kernels", lambda b=attention_built: b)
        monkeypatch.setattr(decoder_module, "decoder_step_has_cuda_kernels", lambda b=step_built: b)
        assert decoder_module._ops_backend("cuda") == want
        assert FusedDecoder(3, 4, 4, backend="cuda")._ops_backend == want


def test_decoder_built_with_cuda_on_cpu_tensors_says_why(monkeypatch):
    """With CUDA kernels registered, FusedDecoder(backend="cuda") hands "cuda" to its attention op, which refuses
    CPU tensors by name (as its LSTM does)."""
    monkeypatch.setattr(decoder_module, "attention_has_cuda_kernels", lambda: True)
    monkeypatch.setattr(decoder_module, "decoder_step_has_cuda_kernels", lambda: True)
    monkeypatch.setattr(attn_ops, "cuda_kernels_built", lambda: True)
    decoder = FusedDecoder(3, 4, 4, attention="general", backend="cuda")
    with pytest.raises(RuntimeError, match=r"^attention backend 'cuda' is unavailable: the CUDA kernels need CUDA "
                                           r"tensors, got tensors on cpu$"):
        decoder._attend(torch.randn(2, 1, 4), torch.randn(2, 5, 4), None)
