"""backend="cuda" on machines without a GPU: every error path and its message, the Python copy of the kernels'
host plan against the C++ one, the fallback rule, the ops' fake kernels and autograd wiring (on meta tensors).

The kernels themselves run in tests/test_cuda_harness.py (CPU harness) and tests/test_cuda_lstm.py (GPU).
"""
from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fused_s2s import FusedLSTM, FusedLSTMEncoder
from fused_s2s.nn import FusedDecoder, FusedGRU, FusedRNN
from fused_s2s.ops import cells as cell_ops
from fused_s2s.ops import lstm as lstm_ops
from fused_s2s.ops import lstm_cuda
from fused_s2s.ops.lstm import lstm_layer
from tests.test_ops import make_layer_args

REPO_ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
H100 = dict(sm_count=132, max_smem_per_cta=232448)  # cudaDevAttrMultiProcessorCount, ...SharedMemoryPerBlockOptin


@pytest.fixture(autouse=True)
def _fresh_fallback_warnings(monkeypatch):
    monkeypatch.setattr(lstm_ops, "_FALLBACK_WARNED", set())


@pytest.fixture
def kernels_built(monkeypatch):
    """Pretend the extension registered its CUDA kernels, to reach the checks behind that one."""
    monkeypatch.setattr(lstm_cuda, "cuda_kernels_built", lambda: True)


# ---- "cuda" is a backend everywhere a backend is named ----

def test_cuda_is_a_backend_the_lstm_modules_accept():
    assert "cuda" in lstm_ops.BACKENDS
    for module in (FusedLSTM(3, 4, backend="cuda"), FusedLSTMEncoder(3, 4, bidirectional=True, backend="cuda"),
                   FusedDecoder(3, 4, 4, backend="cuda")):
        assert module.backend == "cuda"
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'cpu', 'triton', 'cuda', 'reference'\)"):
        FusedLSTM(3, 4, backend="cudnn")


def test_decoder_runs_attention_and_step_on_cuda_where_those_ops_have_cuda_kernels():
    """FusedDecoder(backend="cuda") gives "cuda" to its LSTM; its attention and step ops get "cuda" where the
    extension registered their CUDA kernels, else "auto" (any CPU build), so they never see a backend they
    reject. The choice itself: tests/test_cuda_attention_dispatch.py."""
    import fused_s2s.ops.attention  # noqa: F401  (the modules: their names are also the public functions')
    import fused_s2s.ops.decoder_step  # noqa: F401

    built = (sys.modules["fused_s2s.ops.attention"].cuda_kernels_built()
             and sys.modules["fused_s2s.ops.decoder_step"].cuda_kernels_built())
    decoder = FusedDecoder(3, 4, 4, backend="cuda")
    assert decoder.lstm.backend == "cuda" and decoder._ops_backend == ("cuda" if built else "auto")
    assert FusedDecoder(3, 4, 4, backend="triton")._ops_backend == "triton"


# ---- errors: which part is missing, in words ----

def test_cuda_on_cpu_tensors_without_a_cuda_build_names_both_reasons():
    if lstm_cuda.cuda_kernels_built():
        pytest.skip("this extension has CUDA kernels")
    with pytest.raises(RuntimeError) as e:
        lstm_ops.resolve_backend("cuda", CPU)
    msg = str(e.value)
    assert msg.startswith("backend 'cuda' is unavailable: fused_s2s._C was built without the CUDA kernels")
    assert "rebuild with `pip install --no-build-isolation .` against a CUDA torch" in msg
    assert msg.endswith("the CUDA kernels need CUDA tensors, got tensors on cpu")
    if torch.version.cuda is None:
        assert "torch is a CPU build, torch.version.cuda is None" in msg


def test_cuda_build_without_gpu_tensors_names_only_the_device(kernels_built):
    with pytest.raises(RuntimeError, match=r"^backend 'cuda' is unavailable: the CUDA kernels need CUDA tensors, "
                                           r"got tensors on cpu$"):
        lstm_ops.resolve_backend("cuda", CPU)
    assert lstm_cuda.cuda_unavailable_reason(torch.device("cuda", 0), None) is None


def test_cuda_without_the_extension_says_so(monkeypatch):
    monkeypatch.setattr(lstm_ops, "_C_ERROR", "the C++ extension fused_s2s._C is not built (no module)")
    with pytest.raises(RuntimeError, match=r"^backend 'cuda' is unavailable: the C\+\+ extension fused_s2s._C is not "
                                           r"built \(no module\); the CUDA kernels need CUDA tensors"):
        lstm_ops.resolve_backend("cuda", CPU)


def test_cuda_torch_without_kernels_asks_whether_nvcc_was_found(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    reason = lstm_cuda.cuda_unavailable_reason(torch.device("cuda", 0), None)
    if lstm_cuda.cuda_kernels_built():
        pytest.skip("this extension has CUDA kernels")
    assert reason.startswith("fused_s2s._C was built without the CUDA kernels (torch has CUDA 13.0, but the "
                             "extension was built without it: was nvcc found?)")


def test_lstm_layer_and_module_on_cpu_tensors_raise_the_same_error():
    args = make_layer_args(T=3, B=2, I=3, H=4, P=0)
    with pytest.raises(RuntimeError, match="^backend 'cuda' is unavailable: .*need CUDA tensors, got tensors on cpu"):
        lstm_layer(*args, backend="cuda")
    with pytest.raises(RuntimeError, match="^backend 'cuda' is unavailable: .*need CUDA tensors, got tensors on cpu"):
        FusedLSTM(3, 4, backend="cuda")(torch.randn(5, 2, 3))


def test_env_backend_cuda_overrides_auto(monkeypatch):
    monkeypatch.setattr(lstm_ops, "ENV_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="^backend 'cuda' is unavailable: .*got tensors on cpu"):
        lstm_ops.resolve_backend("auto", CPU)


def test_gru_and_rnn_have_no_cuda_kernels_and_say_what_to_use():
    want = re.escape("backend 'cuda' has CUDA C++ kernels for the LSTM only: run GRU and Elman RNN layers with "
                     "backend='triton' (or 'auto')")
    for make in (lambda: FusedGRU(3, 4, backend="cuda"), lambda: FusedRNN(3, 4, backend="cuda"),
                 lambda: FusedDecoder(3, 4, 4, cell="gru", backend="cuda")):
        with pytest.raises(ValueError, match=want):
            make()
    with pytest.raises(RuntimeError, match=want):
        cell_ops.resolve_cell_backend("cuda", torch.device("cuda", 0))


def test_env_backend_cuda_leaves_gru_on_autos_choice(monkeypatch):
    monkeypatch.setattr(lstm_ops, "ENV_BACKEND", "cuda")
    assert cell_ops.resolve_cell_backend("auto", torch.device("cuda", 0)) in ("triton", "reference")


def test_peephole_has_no_cuda_kernels():
    lstm = FusedLSTM(3, 4, peephole=True, backend="cuda")
    with pytest.raises(RuntimeError, match="^backend 'cuda' has no peephole-LSTM kernels"):
        lstm(torch.randn(5, 2, 3))


# ---- what the kernels take: the plan (Python copy of lstm_persistent_plan) and the other limits ----

_PLAN_MAIN = r"""
#include <cstdio>
#include "lstm_persistent.cuh"
// One plan per stdin line "backward B H elem_bytes sm_count max_smem threads": "U grid smem|reason".
int main() {
  int backward, B, H, elem, sm, threads;
  long long smem;
  while (std::scanf("%d %d %d %d %d %lld %d", &backward, &B, &H, &elem, &sm, &smem, &threads) == 7) {
    const auto p = fused_s2s::cuda::lstm_persistent_plan(backward != 0, B, H, elem, sm, smem, threads);
    std::printf("%d %d %zu|%s\n", p.units_per_cta, p.grid, p.smem_bytes, p.reason.c_str());
  }
}
"""

PLAN_SHAPES = [
    *itertools.product((0, 1), (1, 5, 16, 64), (1, 37, 256, 512, 768, 1024, 2048), (2, 4), (132,), (232448,),
                       (256,)),
    (0, 16, 768, 2, 108, 166912, 256),   # an A100
    (1, 3, 100, 4, 7, 20000, 64),        # a small made-up device
    (0, 0, 8, 2, 132, 232448, 256),      # refused: B 0
    (0, 2, 8, 3, 132, 232448, 256),      # refused: 3-byte elements
    (0, 2, 8, 2, 132, 232448, 100),      # refused: threads
    (0, 2, 8, 2, 0, 232448, 256),        # refused: no SMs
]


@pytest.fixture(scope="module")
def cxx_plans(tmp_path_factory):
    """lstm_persistent_plan from the header itself (compiled as C++20 for the CPU, as the harness does)."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler: cannot compile lstm_persistent.cuh's plan")
    build = tmp_path_factory.mktemp("plan")
    (build / "plan.cpp").write_text(_PLAN_MAIN)
    exe = build / "plan"
    proc = subprocess.run([cxx, "-std=c++20", "-O1", "-DFS2S_CPU_HARNESS", "-pthread",
                           f"-I{REPO_ROOT / 'csrc' / 'cuda'}", f"-I{REPO_ROOT / 'csrc' / 'include'}",
                           str(build / "plan.cpp"), "-o", str(exe)], capture_output=True, text=True)
    if proc.returncode != 0 and "barrier" in proc.stderr:
        pytest.skip(f"{cxx} lacks C++20 <barrier> (cuda_compat.cuh's harness path needs it)")
    assert proc.returncode == 0, proc.stderr
    stdin = "".join(" ".join(map(str, s)) + "\n" for s in PLAN_SHAPES)
    out = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True).stdout
    plans = []
    for line in out.splitlines():
        nums, reason = line.split("|", 1)
        U, grid, smem = map(int, nums.split())
        plans.append(lstm_cuda.PersistentPlan(U, grid, smem, reason))
    assert len(plans) == len(PLAN_SHAPES)
    return plans


def test_python_plan_is_the_headers_plan(cxx_plans):
    for shape, want in zip(PLAN_SHAPES, cxx_plans):
        backward, B, H, elem, sm, smem, threads = shape
        got = lstm_cuda.persistent_plan(bool(backward), B, H, elem, sm, smem, threads)
        if want.reason.startswith("persistent LSTM: "):  # refused before sizing: only the reason is defined
            assert got.reason == want.reason, shape
        else:
            assert got == want, shape
    assert any(p.reason and "shared memory" in p.reason for p in cxx_plans)  # the comparison covers refusals
    assert any(not p.reason for p in cxx_plans)


def test_device_limits_read_the_opt_in_shared_memory(monkeypatch):
    from types import SimpleNamespace
    h100 = SimpleNamespace(multi_processor_count=132, shared_memory_per_block_optin=232448,
                           shared_memory_per_multiprocessor=233472)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: h100)
    assert lstm_cuda._device_limits(torch.device("cuda", 0)) == (132, 232448)
    del h100.shared_memory_per_block_optin  # an older torch: the SM's shared memory less the per-block 1 KB
    assert lstm_cuda._device_limits(torch.device("cuda", 0)) == (132, 232448)


def _meta_args(B, H, dtype, P=0, I=8, T=3):
    x = torch.empty(T, B, I, dtype=dtype, device="meta")
    w_hh = torch.empty(4 * H, P or H, dtype=dtype, device="meta")
    w_hr = torch.empty(P, H, dtype=dtype, device="meta") if P else None
    return x, w_hh, w_hr


def test_unsupported_reason_names_proj_size_dtype_and_shared_memory(monkeypatch):
    monkeypatch.setattr(lstm_cuda, "_device_limits", lambda device: (H100["sm_count"], H100["max_smem_per_cta"]))
    assert lstm_cuda.unsupported_reason(*_meta_args(4, 16, torch.float32, P=8), True) == \
        "proj_size is not supported by the CUDA kernels"
    assert lstm_cuda.unsupported_reason(*_meta_args(4, 16, torch.float64), False) == \
        "the CUDA kernels take float32, bfloat16 or float16, got torch.float64"
    for dtype in (torch.bfloat16, torch.float16):  # the anchor shape, B 16 × H 768, trains in 16-bit
        assert lstm_cuda.unsupported_reason(*_meta_args(16, 768, dtype), True) is None, dtype
    # fp32 W_hh slices are twice the bytes: its forward fits, its backward (4H x U fp32 + B x 4H fp32) not.
    assert lstm_cuda.unsupported_reason(*_meta_args(16, 768, torch.float32), False) is None
    assert "backward: B=16 H=768" in lstm_cuda.unsupported_reason(*_meta_args(16, 768, torch.float32), True)
    # B 64 × H 768 bf16: the forward fits, the backward's staged dgates [B, 4H] do not.
    assert lstm_cuda.unsupported_reason(*_meta_args(64, 768, torch.bfloat16), False) is None
    reason = lstm_cuda.unsupported_reason(*_meta_args(64, 768, torch.bfloat16), True)
    assert reason.startswith("persistent LSTM backward: B=64 H=768 needs ") and reason.endswith("allows 232448")


def test_unsupported_reason_routes_gpus_older_than_sm80_to_triton(monkeypatch):
    """The kernels are built for sm_80 and sm_90 only (CMakeLists.txt): an older GPU gets the stated fallback
    instead of a "no kernel image" launch error."""
    from types import SimpleNamespace
    monkeypatch.setattr(lstm_cuda, "_device_limits", lambda device: (H100["sm_count"], H100["max_smem_per_cta"]))
    x, w_hh, w_hr = _meta_args(4, 16, torch.bfloat16)
    on_gpu = SimpleNamespace(dtype=x.dtype, shape=x.shape, dim=x.dim, device=torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (7, 5))
    assert lstm_cuda.unsupported_reason(on_gpu, w_hh, w_hr, True) == \
        "the CUDA kernels are built for compute capability 8.0 and 9.0 (mma.sync on bf16), this GPU is 7.5"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert lstm_cuda.unsupported_reason(on_gpu, w_hh, w_hr, True) is None


def test_fallback_without_triton_is_an_error_naming_both_reasons(monkeypatch):
    """backend="cuda" on a layer it cannot take goes to Triton; where Triton cannot run either, say both."""
    monkeypatch.setattr(lstm_cuda, "cuda_unavailable_reason", lambda device, c_error: None)
    monkeypatch.setattr(lstm_ops, "triton_unavailable_reason", lambda device: "triton is not installed")
    args = make_layer_args(T=3, B=2, I=3, H=4, P=2)
    with pytest.raises(RuntimeError, match=r"^backend 'cuda' cannot run this layer \(proj_size is not supported by "
                                           r"the CUDA kernels\) and its fallback 'triton' is unavailable: triton is "
                                           r"not installed$"):
        lstm_layer(*args, backend="cuda")


def test_fallback_warns_once_per_kind_of_reason(monkeypatch):
    monkeypatch.setattr(lstm_ops, "triton_unavailable_reason", lambda device: None)
    with pytest.warns(UserWarning, match="^fused_s2s: backend 'cuda' runs this LSTM layer on Triton instead: "
                                         "proj_size is not supported by the CUDA kernels$"):
        assert lstm_ops._cuda_fallback("proj_size is not supported by the CUDA kernels", CPU) == "triton"
    plan_reason = "persistent LSTM backward: B={} H=768 needs 300000 bytes of shared memory per CTA"
    with pytest.warns(UserWarning, match="B=64 H=768"):
        lstm_ops._cuda_fallback(plan_reason.format(64), CPU)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same kinds again, other batch sizes: silent
        lstm_ops._cuda_fallback("proj_size is not supported by the CUDA kernels", CPU)
        lstm_ops._cuda_fallback(plan_reason.format(96), CPU)


# ---- the ops: schemas, fakes and autograd without a GPU (meta tensors run the fake kernels) ----

def test_cuda_ops_have_the_triton_ops_schemas():
    for suffix in ("fwd", "bwd"):
        cuda = getattr(torch.ops.fused_s2s, f"cuda_lstm_layer_{suffix}").default._schema
        triton = getattr(torch.ops.fused_s2s, f"triton_lstm_layer_{suffix}").default._schema
        assert str(cuda).split("(", 1)[1] == str(triton).split("(", 1)[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("save", [True, False], ids=["save", "nosave"])
def test_cuda_fwd_fake_outputs(dtype, save):
    T, B, I, H = 5, 3, 4, 6
    meta = dict(device="meta", dtype=dtype)
    out = torch.ops.fused_s2s.cuda_lstm_layer_fwd(
        torch.empty(T, B, I, **meta), torch.empty(B, H, **meta), torch.empty(B, H, **meta),
        torch.empty(4 * H, I, **meta), torch.empty(4 * H, H, **meta), None, None, None, None, False, save)
    shapes = [tuple(o.shape) for o in out]
    assert shapes[:3] == [(T, B, H), (B, H), (B, H)] and all(o.dtype == dtype for o in out[:3])
    if save:  # the kernels save fp32 gates and c whatever x's dtype
        assert shapes[3:] == [(T, B, 4 * H), (T, B, H)] and out[3].dtype == out[4].dtype == torch.float32
    else:
        assert shapes[3:] == [(0,), (0,)]


def test_cuda_autograd_wiring_on_meta_tensors():
    """Autograd of cuda_lstm_layer_fwd calls cuda_lstm_layer_bwd and hands back one gradient per input, shaped
    like it; frozen weights skip the weight gradients; the backward op itself refuses double backward."""
    T, B, I, H = 4, 3, 5, 6
    meta = dict(device="meta", dtype=torch.float32)
    leaves = [torch.empty(*s, **meta).requires_grad_() for s in ((T, B, I), (B, H), (B, H), (4 * H, I), (4 * H, H),
                                                                 (4 * H,), (4 * H,))]
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = leaves
    y, h_n, c_n, gates, cells = torch.ops.fused_s2s.cuda_lstm_layer_fwd(x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, None,
                                                                        False, True)
    assert not gates.requires_grad and not cells.requires_grad
    grads = torch.autograd.grad((y.sum(), h_n.sum(), c_n.sum()), leaves)
    assert [g.shape for g in grads] == [t.shape for t in leaves]
    frozen = torch.ops.fused_s2s.cuda_lstm_layer_fwd(x, h0, c0, w_ih.detach(), w_hh.detach(), None, None, None, None,
                                                     True, True)
    gx, gh0, gc0 = torch.autograd.grad(frozen[0].sum(), (x, h0, c0))
    assert gx.shape == x.shape and gh0.shape == h0.shape and gc0.shape == c0.shape


@pytest.mark.triton_interpret
def test_fallback_runs_triton_and_matches_the_reference(monkeypatch):
    """The whole fallback path (under the Triton interpreter, CPU tensors): a proj_size layer asked for on
    'cuda' warns and runs the Triton op, forward and backward, with the reference's results."""
    from tests.test_ops import assert_layer_matches_reference

    monkeypatch.setattr(lstm_cuda, "cuda_unavailable_reason", lambda device, c_error: None)
    args = make_layer_args(T=4, B=3, I=5, H=6, P=3, lengths=True, reverse=True)
    with pytest.warns(UserWarning, match="runs this LSTM layer on Triton instead: proj_size is not supported"):
        assert_layer_matches_reference(args, "cuda")
