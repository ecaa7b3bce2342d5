"""The one-layer, one-direction GRU and Elman RNN ops: public functions, fake kernels, autograd, dispatch.

Every backend computes exactly `fused_s2s.reference.cells.gru_layer` / `rnn_layer` (same lengths and reverse
semantics as the LSTM op). The C++ ops (schemas in csrc/cell_ops.cpp):
    fused_s2s::gru_layer_fwd(..., save) -> y, h_n, saved ([T, B, 4H]: r, z, n and W_hn h + b_hn; empty unless
                                           save, which the dispatcher sets only when autograd will need it)
    fused_s2s::gru_layer_bwd           -> dx, dh0, dw_ih, dw_hh, db_ih, db_hh
    fused_s2s::rnn_layer_fwd(..., nonlinearity) -> y, h_n (backward needs only y)
    fused_s2s::rnn_layer_bwd           -> dx, dh0, dw_ih, dw_hh, db (the gradient of both biases)
dx is empty unless needed, the weight gradients are empty when every weight is frozen. The Triton ops
(fused_s2s/ops/cells_triton.py) have the same schemas under a triton_ prefix (the GRU's saved buffer is fp32
for 16-bit inputs); autograd for both families is registered here, from one set of functions.

Backends: "cpu" (the C++ kernels), "triton" (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1) and
"reference". `auto` runs CPU tensors on "cpu" and CUDA tensors on "triton" where triton can run there, else
on the reference (plain torch ops on the device).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fused_s2s.ops import cells_triton  # noqa: F401  (registers the fused_s2s::triton_gru/rnn_* ops)
from fused_s2s.ops import lstm as _lstm_ops
from fused_s2s.ops.cells_triton import bwd_fake_outputs, gru_fwd_fake_outputs, rnn_fwd_fake_outputs
from fused_s2s.ops.lstm import _C_ERROR, BACKENDS, resolve_backend, triton_unavailable_reason, zeros_if_none
from fused_s2s.reference import cells as _reference

__all__ = ["gru_layer", "rnn_layer", "resolve_cell_backend", "NO_CUDA_CELLS"]

NO_CUDA_CELLS = ("backend 'cuda' has CUDA C++ kernels for the LSTM only: run GRU and Elman RNN layers with "
                 "backend='triton' (or 'auto')")


def resolve_cell_backend(backend: str, device: torch.device) -> str:
    """The concrete backend of a GRU/RNN layer on `device`, or an error that says why it cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cuda":
        raise RuntimeError(NO_CUDA_CELLS)
    # FUSED_S2S_BACKEND=cuda picks the CUDA C++ LSTM kernels for a run; GRU and RNN layers keep auto's choice.
    if backend == "auto" and _lstm_ops.ENV_BACKEND in ("auto", "cuda") and device.type != "cpu":
        # the Triton kernels where triton can run on the device, else plain torch ops there
        return "triton" if triton_unavailable_reason(device) is None else "reference"
    return resolve_backend(backend, device)  # "triton" asked for where it cannot run: an error saying why


def _needs_backward(tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _upcast(x: Tensor, *tensors: Optional[Tensor]):
    """16-bit inputs run the fp32 kernel (fp32 products and state), as the LSTM op does on the CPU."""
    return tuple(None if t is None else t.float() for t in (x, *tensors))


def gru_layer(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
              lengths: Optional[Tensor], reverse: bool, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """One GRU layer in one direction over x [T, B, I] -> (y [T, B, H], h_n [B, H]).

    lengths ([B] int64 on the CPU, each in 1..T) marks where each sequence ends, as in lstm_layer.
    """
    backend = resolve_cell_backend(backend, x.device)
    if backend == "reference":
        return _reference.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
    if backend == "triton":  # fp16/bf16 run natively (fp32 accumulation and state inside the kernels)
        save = _needs_backward((x, h0, w_ih, w_hh, b_ih, b_hh))
        y, h_n, _saved = torch.ops.fused_s2s.triton_gru_layer_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                                                                  save)
        return y, h_n
    if x.dtype in (torch.bfloat16, torch.float16):
        y, h_n = gru_layer(*_upcast(x, h0, w_ih, w_hh, b_ih, b_hh), lengths, reverse, backend)
        return y.to(x.dtype), h_n.to(x.dtype)
    save = _needs_backward((x, h0, w_ih, w_hh, b_ih, b_hh))
    y, h_n, _saved = torch.ops.fused_s2s.gru_layer_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save)
    return y, h_n


def rnn_layer(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
              lengths: Optional[Tensor], reverse: bool, nonlinearity: str = "tanh",
              backend: str = "auto") -> tuple[Tensor, Tensor]:
    """One Elman RNN layer (nonlinearity "tanh" or "relu") in one direction -> (y [T, B, H], h_n [B, H])."""
    if nonlinearity not in _reference.NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    backend = resolve_cell_backend(backend, x.device)
    if backend == "reference":
        return _reference.rnn_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity)
    if backend == "triton":
        return torch.ops.fused_s2s.triton_rnn_layer_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                                                        nonlinearity)
    if x.dtype in (torch.bfloat16, torch.float16):
        y, h_n = rnn_layer(*_upcast(x, h0, w_ih, w_hh, b_ih, b_hh), lengths, reverse, nonlinearity, backend)
        return y.to(x.dtype), h_n.to(x.dtype)
    return torch.ops.fused_s2s.rnn_layer_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity)


# ---- fake (meta) kernels of the C++ ops: shapes only (the Triton ops register theirs in cells_triton.py) ----

if _C_ERROR is None:

    @torch.library.register_fake("fused_s2s::gru_layer_fwd")
    def _gru_fwd_fake(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save):
        return gru_fwd_fake_outputs(x, w_hh, save, x.dtype)

    @torch.library.register_fake("fused_s2s::rnn_layer_fwd")
    def _rnn_fwd_fake(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity):
        return rnn_fwd_fake_outputs(x, w_hh)

    @torch.library.register_fake("fused_s2s::gru_layer_bwd")
    def _gru_bwd_fake(dy, dh_n, x, h0, w_ih, w_hh, lengths, reverse, y, saved, need_dx, need_dw):
        return bwd_fake_outputs(x, h0, w_ih, w_hh, need_dx, need_dw, n_bias=2)

    @torch.library.register_fake("fused_s2s::rnn_layer_bwd")
    def _rnn_bwd_fake(dy, dh_n, x, h0, w_ih, w_hh, lengths, reverse, y, nonlinearity, need_dx, need_dw):
        return bwd_fake_outputs(x, h0, w_ih, w_hh, need_dx, need_dw, n_bias=1)


# ---- autograd, one set of functions for the C++ and the Triton ops ----
# Inputs of every forward op: x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, and save / nonlinearity.

def _setup_context(ctx, inputs, output):
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, last = inputs
    y = output[0]
    saved = output[2] if len(output) == 3 else None
    ctx.save_for_backward(x, h0, w_ih, w_hh, lengths, y, saved)
    ctx.reverse = reverse
    ctx.last = last  # GRU: save; RNN: the nonlinearity
    ctx.has_bias = (b_ih is not None, b_hh is not None)
    if saved is not None:
        ctx.mark_non_differentiable(saved)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the saved tensor (zeros_if_none)


def _grads(ctx, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, need_dw):
    if not need_dw:
        return (dx, dh0) + (None,) * 7
    return (dx, dh0, dw_ih, dw_hh, db_ih if ctx.has_bias[0] else None, db_hh if ctx.has_bias[1] else None,
            None, None, None)


def _gru_backward(bwd_op):
    """The backward of a GRU forward op whose gradients `bwd_op` (gru_layer_bwd's schema) computes."""
    def backward(ctx, dy, dh_n, _dsaved):
        x, h0, w_ih, w_hh, lengths, y, saved = ctx.saved_tensors
        dy, dh_n = zeros_if_none(dy, y), zeros_if_none(dh_n, h0)
        need_dx, need_dw = ctx.needs_input_grad[0], any(ctx.needs_input_grad[2:6])
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh = bwd_op(dy, dh_n, x, h0, w_ih, w_hh, lengths, ctx.reverse, y, saved,
                                                     need_dx, need_dw)
        return _grads(ctx, dx if need_dx else None, dh0, dw_ih, dw_hh, db_ih, db_hh, need_dw)
    return backward


def _rnn_backward(bwd_op):
    """The backward of an RNN forward op whose gradients `bwd_op` (rnn_layer_bwd's schema) computes."""
    def backward(ctx, dy, dh_n):
        x, h0, w_ih, w_hh, lengths, y, _ = ctx.saved_tensors
        dy, dh_n = zeros_if_none(dy, y), zeros_if_none(dh_n, h0)
        need_dx, need_dw = ctx.needs_input_grad[0], any(ctx.needs_input_grad[2:6])
        dx, dh0, dw_ih, dw_hh, db = bwd_op(dy, dh_n, x, h0, w_ih, w_hh, lengths, ctx.reverse, y, ctx.last, need_dx,
                                           need_dw)
        return _grads(ctx, dx if need_dx else None, dh0, dw_ih, dw_hh, db, db, need_dw)
    return backward


# The backward ops have no derivative: without a registration torch would only warn and record the last
# ATen call inside them, giving a silently wrong double backward.
def _no_setup(ctx, inputs, output):
    pass


def _not_differentiable(name):
    def backward(ctx, *grads):
        raise RuntimeError(f"fused_s2s::{name} is not differentiable: double backward (create_graph=True) "
                           "through the fused GRU/RNN is not supported; use backend='reference' for it")
    return backward


def _register_autograd(prefix: str) -> None:
    """Autograd of fused_s2s::{prefix}gru_layer_fwd / {prefix}rnn_layer_fwd and their backward ops."""
    ops = torch.ops.fused_s2s
    torch.library.register_autograd(f"fused_s2s::{prefix}gru_layer_fwd",
                                    _gru_backward(getattr(ops, f"{prefix}gru_layer_bwd")), setup_context=_setup_context)
    torch.library.register_autograd(f"fused_s2s::{prefix}rnn_layer_fwd",
                                    _rnn_backward(getattr(ops, f"{prefix}rnn_layer_bwd")), setup_context=_setup_context)
    for name in (f"{prefix}gru_layer_bwd", f"{prefix}rnn_layer_bwd"):
        torch.library.register_autograd(f"fused_s2s::{name}", _not_differentiable(name), setup_context=_no_setup)


_register_autograd("triton_")
if _C_ERROR is None:
    _register_autograd("")
