"""The one-layer, one-direction LSTM op: public function, torch.library registration, dispatch.

Every backend computes exactly `fused_s2s.reference.lstm.lstm_layer` (its docstring gives the lengths and
reverse semantics). Stacks, directions and PackedSequence are composed above this, in fused_s2s.nn.

The C++ ops (schemas in csrc/ops.cpp):
    fused_s2s::lstm_layer_fwd  -> y, h_n, c_n, gates (activated, [T, B, 4H]), cells ([T, B, H])
    fused_s2s::lstm_layer_infer -> y, h_n, c_n (no grad needed: saves nothing, chunked input projection)
    fused_s2s::lstm_layer_bwd  -> dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr (dx empty unless need_dx, the weight
                                  gradients empty unless need_dw: a frozen LSTM skips the dW GEMMs)
The Triton ops (fused_s2s/ops/lstm_triton.py) mirror them: triton_lstm_layer_fwd (with a `save` flag
instead of a separate inference op) and triton_lstm_layer_bwd; the CUDA C++ ops (fused_s2s/ops/lstm_cuda.py,
cuda_lstm_layer_fwd/_bwd) have the Triton ops' schemas. gates and cells are what backward needs (cuDNN's
reserve space); they are marked non-differentiable. Autograd for all three families is registered here.

backend="cuda" runs the persistent CUDA C++ kernels; a layer they cannot take (proj_size, float64, a shape
whose W_hh slice does not fit in shared memory) runs on Triton instead, with a warning naming the reason
(once per kind of reason). "auto" keeps Triton on CUDA tensors until a GPU has measured the CUDA kernels
faster (issue 15).
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Optional

import torch
from torch import Tensor

from fused_s2s.ops import lstm_cuda
from fused_s2s.ops import lstm_triton  # noqa: F401  (registers the fused_s2s::triton_lstm_* ops)
from fused_s2s.ops.lstm_triton import bwd_fake_outputs
from fused_s2s.reference import lstm as _reference

try:  # the compiled extension registers the fused_s2s:: C++ ops when imported
    import fused_s2s._C  # noqa: F401

    _C_ERROR: Optional[str] = None
except ImportError as e:  # pragma: no cover - only on a broken install
    _C_ERROR = f"the C++ extension fused_s2s._C is not built ({e})"

BACKENDS = ("auto", "cpu", "triton", "cuda", "reference")
# Read once per process (and so constant under torch.compile): overrides backend="auto" for a whole run.
ENV_BACKEND = os.environ.get("FUSED_S2S_BACKEND", "auto")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for `backend` on `device`, or an error that says why it cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if ENV_BACKEND not in BACKENDS:
            raise ValueError(f"FUSED_S2S_BACKEND must be one of {BACKENDS}, got {ENV_BACKEND!r}")
        backend = ENV_BACKEND
    if backend == "auto":
        # CPU tensors: the C++ kernels. CUDA: Triton, until a GPU has measured the CUDA C++ kernels faster.
        backend = "cpu" if device.type == "cpu" else "triton"
    if backend == "cuda":
        reason = lstm_cuda.cuda_unavailable_reason(device, _C_ERROR)
        if reason is not None:
            raise RuntimeError(f"backend 'cuda' is unavailable: {reason}")
    if backend == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"backend 'triton' is unavailable: {reason}")
    if backend == "cpu":
        if _C_ERROR is not None:
            raise RuntimeError(f"backend 'cpu' is unavailable: {_C_ERROR}")
        if device.type != "cpu":
            raise RuntimeError(f"backend 'cpu' needs CPU tensors, got tensors on {device}")
    return backend


def triton_unavailable_reason(device: torch.device) -> Optional[str]:
    """Why the Triton kernels cannot run on `device`, or None if they can."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return ("on CPU tensors Triton runs only under its interpreter: set TRITON_INTERPRET=1 before "
                "triton is imported (the tests do); use backend='cpu' for the C++ kernels")
    return f"Triton kernels need CUDA tensors, got tensors on {device}"


def lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
               b_hh: Optional[Tensor], w_hr: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
               backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer in one direction over x [T, B, I] -> (y [T, B, P], h_n [B, P], c_n [B, H]).

    lengths ([B] int64 on the CPU, each in 1..T, any order) marks where each sequence ends: padding steps
    keep the state and output zeros. reverse=True reads each sequence backwards from its own last step.
    """
    backend = resolve_backend(backend, x.device)
    if backend == "reference":
        return _reference.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
    if backend == "cuda":
        args = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
        save = _needs_backward(args)
        reason = lstm_cuda.unsupported_reason(x, w_hh, w_hr, save)
        if reason is None:
            y, h_n, c_n, _gates, _cells = torch.ops.fused_s2s.cuda_lstm_layer_fwd(*args, save)
            return y, h_n, c_n
        backend = _cuda_fallback(reason, x.device)
    if backend == "triton":
        # fp16/bf16 run natively (fp32 accumulation and cell state inside the kernels)
        args = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
        y, h_n, c_n, _gates, _cells = torch.ops.fused_s2s.triton_lstm_layer_fwd(*args, _needs_backward(args))
        return y, h_n, c_n
    if x.dtype == torch.bfloat16 and _bf16_native(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
        # The native bf16 kernel: bf16 GEMM operands, fp32 accumulation, cell math and c (csrc/cpu/lstm_bf16_*).
        return _cpu_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
    if x.dtype in (torch.bfloat16, torch.float16):
        # Elsewhere the CPU kernel computes 16-bit inputs in fp32 (fp32 products and cell state, as the GPU
        # kernels do) and rounds the results back to the input's dtype; autograd carries the casts.
        out = _cpu_layer(*(None if t is None else t.float() for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)),
                         lengths, reverse)
        return tuple(t.to(x.dtype) for t in out)
    return _cpu_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)


def _bf16_native(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) -> bool:
    """Whether the C++ ops take these bf16 tensors natively: every one bf16, no projection, at least one
    step, and the kernel on (built with -mavx512bf16, an AVX512-BF16 CPU, FUSED_S2S_NATIVE_BF16 not 0:
    asked of the extension at every call, so the environment switch works inside a running process)."""
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    return (w_hr is None and x.dim() == 3 and x.shape[0] > 0
            and all(t is None or t.dtype == torch.bfloat16 for t in tensors)
            and torch.ops.fused_s2s.lstm_bf16_native())


# The kinds of reason already warned about: a fallback is stated once per kind, not once per call or per
# batch size (the reason's text holds the shape).
_FALLBACK_WARNED: set[str] = set()


def _cuda_fallback(reason: str, device: torch.device) -> str:
    """backend="cuda" on a layer the CUDA kernels cannot take: Triton, with a warning saying why."""
    triton_reason = triton_unavailable_reason(device)
    if triton_reason is not None:
        raise RuntimeError(f"backend 'cuda' cannot run this layer ({reason}) and its fallback 'triton' is "
                           f"unavailable: {triton_reason}")
    kind = reason.split(":")[0].split(" B=")[0]
    if kind not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add(kind)
        warnings.warn(f"fused_s2s: backend 'cuda' runs this LSTM layer on Triton instead: {reason}", stacklevel=3)
    return "triton"


def zeros_if_none(grad: Optional[Tensor], like: Tensor) -> Tensor:
    """An output's gradient as the backward ops take it. The autograd formulas set
    ctx.set_materialize_grads(False), so autograd passes None for an output nothing depends on instead of
    filling zeros for it: the saved gates ([T, B, 4H]) and cells would each cost a zero fill of their size
    per backward (0.25 ms of a 12.5 ms B16 T50 H256 step, ~1 ms at B64). The small ones are made here."""
    return torch.zeros_like(like) if grad is None else grad


def _needs_backward(args) -> bool:
    """Whether autograd will call backward: only then must the forward save gates and cells."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args[:8])


def _cpu_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse):
    args = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
    if _needs_backward(args):
        y, h_n, c_n, _gates, _cells = torch.ops.fused_s2s.lstm_layer_fwd(*args)
        return y, h_n, c_n
    # Nothing will call backward: the inference op saves nothing (no [T, B, 4H] buffer to allocate).
    return torch.ops.fused_s2s.lstm_layer_infer(*args)


# ---- fake (meta) kernels: shapes only, no data access ----

if _C_ERROR is None:

    @torch.library.register_fake("fused_s2s::lstm_layer_fwd")
    def _lstm_layer_fwd_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse):
        T, B, _ = x.shape
        H = w_ih.shape[0] // 4
        P = w_hr.shape[0] if w_hr is not None else H
        # the native bf16 kernel keeps c, and so the saved cells, in fp32
        cells_dtype = torch.float32 if x.dtype == torch.bfloat16 else x.dtype
        return (x.new_empty(T, B, P), x.new_empty(B, P), x.new_empty(B, H), x.new_empty(T, B, 4 * H),
                x.new_empty(T, B, H, dtype=cells_dtype))

    @torch.library.register_fake("fused_s2s::lstm_layer_infer")
    def _lstm_layer_infer_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse):
        T, B, _ = x.shape
        H = w_ih.shape[0] // 4
        P = w_hr.shape[0] if w_hr is not None else H
        return x.new_empty(T, B, P), x.new_empty(B, P), x.new_empty(B, H)

    @torch.library.register_fake("fused_s2s::lstm_layer_bwd")
    def _lstm_layer_bwd_fake(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, reverse, y, gates, cells,
                             need_dx, need_dw=True):
        return bwd_fake_outputs(x, h0, c0, w_ih, w_hh, w_hr, need_dx, need_dw)

    # ---- autograd ----

    def _setup_context(ctx, inputs, output):
        # inputs: the C++ op's ten, plus `save` for the Triton op
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse = inputs[:10]
        y, _h_n, _c_n, gates, cells = output
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, lengths, y, gates, cells)
        ctx.reverse = reverse
        ctx.has_bias = (b_ih is not None, b_hh is not None)
        ctx.mark_non_differentiable(gates, cells)
        ctx.set_materialize_grads(False)  # no zero-filled gradients for gates and cells (zeros_if_none)

    def _make_backward(bwd_op, n_inputs):
        def backward(ctx, dy, dh_n, dc_n, _dgates, _dcells):
            x, h0, c0, w_ih, w_hh, w_hr, lengths, y, gates, cells = ctx.saved_tensors
            dy, dh_n, dc_n = zeros_if_none(dy, y), zeros_if_none(dh_n, h0), zeros_if_none(dc_n, c0)
            need_dx = ctx.needs_input_grad[0]
            need_dw = any(ctx.needs_input_grad[3:8])  # w_ih, w_hh, b_ih, b_hh, w_hr: frozen weights skip dW
            dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr = bwd_op(
                dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, ctx.reverse, y, gates, cells, need_dx,
                need_dw)
            if not need_dw:
                return (dx if need_dx else None, dh0, dc0) + (None,) * (n_inputs - 3)
            grads = (dx if need_dx else None, dh0, dc0, dw_ih, dw_hh, db if ctx.has_bias[0] else None,
                     db if ctx.has_bias[1] else None, dw_hr if w_hr is not None else None)
            return grads + (None,) * (n_inputs - len(grads))
        return backward

    torch.library.register_autograd("fused_s2s::lstm_layer_fwd",
                                    _make_backward(torch.ops.fused_s2s.lstm_layer_bwd, 10),
                                    setup_context=_setup_context)
    torch.library.register_autograd("fused_s2s::triton_lstm_layer_fwd",
                                    _make_backward(torch.ops.fused_s2s.triton_lstm_layer_bwd, 11),
                                    setup_context=_setup_context)
    torch.library.register_autograd("fused_s2s::cuda_lstm_layer_fwd",
                                    _make_backward(torch.ops.fused_s2s.cuda_lstm_layer_bwd, 11),
                                    setup_context=_setup_context)

    # The backward and inference ops have no derivative. Without an autograd registration torch would only
    # warn and record the last ATen call inside them, giving silently wrong double backward.
    def _no_setup(ctx, inputs, output):
        pass

    def _not_differentiable(name):
        def backward(ctx, *grads):
            raise RuntimeError(
                f"fused_s2s::{name} is not differentiable: double backward (create_graph=True, gradient "
                "penalties) through the fused LSTM is not supported; use backend='reference' for it")
        return backward

    for _name in ("lstm_layer_bwd", "lstm_layer_infer", "triton_lstm_layer_bwd", "cuda_lstm_layer_bwd"):
        torch.library.register_autograd(f"fused_s2s::{_name}", _not_differentiable(_name), setup_context=_no_setup)
