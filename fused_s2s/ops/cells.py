"""The one-layer, one-direction GRU and Elman RNN ops: public functions, fake kernels, autograd, dispatch.

Every backend computes exactly `fused_s2s.reference.cells.gru_layer` / `rnn_layer` (same lengths and reverse
semantics as the LSTM op). The C++ ops (schemas in csrc/cell_ops.cpp):
    fused_s2s::gru_layer_fwd(..., save) -> y, h_n, saved ([T, B, 4H]: r, z, n and W_hn h + b_hn; empty unless
                                           save, which the dispatcher sets only when autograd will need it)
    fused_s2s::gru_layer_bwd           -> dx, dh0, dw_ih, dw_hh, db_ih, db_hh
    fused_s2s::rnn_layer_fwd(..., nonlinearity) -> y, h_n (backward needs only y)
    fused_s2s::rnn_layer_bwd           -> dx, dh0, dw_ih, dw_hh, db (the gradient of both biases)
dx is empty unless needed, the weight gradients are empty when every weight is frozen.

Backends: "cpu" (the C++ kernels) and "reference". There are no Triton or CUDA C++ GRU/RNN kernels yet:
`auto` runs CUDA tensors on the reference (plain torch ops on the GPU), and `backend="triton"` is an error.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fused_s2s.ops.lstm import _C_ERROR, BACKENDS, resolve_backend
from fused_s2s.reference import cells as _reference

__all__ = ["gru_layer", "rnn_layer", "resolve_cell_backend"]


def resolve_cell_backend(backend: str, device: torch.device) -> str:
    """The concrete backend of a GRU/RNN layer on `device`, or an error that says why it cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton":
        raise RuntimeError("backend 'triton' has no GRU/RNN kernels yet: FusedGRU and FusedRNN run on 'cpu' "
                           "(the C++ kernels) or 'reference'")
    if backend == "auto" and device.type != "cpu":
        return "reference"  # no GPU kernels for these cells yet: plain torch ops on the device
    resolved = resolve_backend(backend, device)
    return "reference" if resolved == "triton" else resolved  # FUSED_S2S_BACKEND=triton on a CPU run


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
    if x.dtype in (torch.bfloat16, torch.float16):
        y, h_n = rnn_layer(*_upcast(x, h0, w_ih, w_hh, b_ih, b_hh), lengths, reverse, nonlinearity, backend)
        return y.to(x.dtype), h_n.to(x.dtype)
    return torch.ops.fused_s2s.rnn_layer_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity)


if _C_ERROR is None:

    # ---- fake (meta) kernels: shapes only ----

    @torch.library.register_fake("fused_s2s::gru_layer_fwd")
    def _gru_fwd_fake(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        return x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty((T, B, 4 * H) if save else (0,))

    @torch.library.register_fake("fused_s2s::rnn_layer_fwd")
    def _rnn_fwd_fake(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        return x.new_empty(T, B, H), x.new_empty(B, H)

    def _weight_grad_fakes(x, w_ih, w_hh, need_dx, need_dw, n_bias):
        dx = x.new_empty(x.shape) if need_dx else x.new_empty(0)
        if not need_dw:
            return dx, (x.new_empty(0), x.new_empty(0)) + tuple(x.new_empty(0) for _ in range(n_bias))
        return dx, (w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape)) + tuple(
            x.new_empty(w_hh.shape[0]) for _ in range(n_bias))

    @torch.library.register_fake("fused_s2s::gru_layer_bwd")
    def _gru_bwd_fake(dy, dh_n, x, h0, w_ih, w_hh, lengths, reverse, y, saved, need_dx, need_dw):
        dx, weights = _weight_grad_fakes(x, w_ih, w_hh, need_dx, need_dw, 2)
        return (dx, h0.new_empty(h0.shape)) + weights

    @torch.library.register_fake("fused_s2s::rnn_layer_bwd")
    def _rnn_bwd_fake(dy, dh_n, x, h0, w_ih, w_hh, lengths, reverse, y, nonlinearity, need_dx, need_dw):
        dx, weights = _weight_grad_fakes(x, w_ih, w_hh, need_dx, need_dw, 1)
        return (dx, h0.new_empty(h0.shape)) + weights

    # ---- autograd ----
    # Inputs of both forward ops: x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, and save / nonlinearity.

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

    def _grads(ctx, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, need_dw):
        if not need_dw:
            return (dx, dh0) + (None,) * 7
        return (dx, dh0, dw_ih, dw_hh, db_ih if ctx.has_bias[0] else None, db_hh if ctx.has_bias[1] else None,
                None, None, None)

    def _gru_backward(ctx, dy, dh_n, _dsaved):
        x, h0, w_ih, w_hh, lengths, y, saved = ctx.saved_tensors
        need_dx, need_dw = ctx.needs_input_grad[0], any(ctx.needs_input_grad[2:6])
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh = torch.ops.fused_s2s.gru_layer_bwd(
            dy, dh_n, x, h0, w_ih, w_hh, lengths, ctx.reverse, y, saved, need_dx, need_dw)
        return _grads(ctx, dx if need_dx else None, dh0, dw_ih, dw_hh, db_ih, db_hh, need_dw)

    def _rnn_backward(ctx, dy, dh_n):
        x, h0, w_ih, w_hh, lengths, y, _ = ctx.saved_tensors
        need_dx, need_dw = ctx.needs_input_grad[0], any(ctx.needs_input_grad[2:6])
        dx, dh0, dw_ih, dw_hh, db = torch.ops.fused_s2s.rnn_layer_bwd(
            dy, dh_n, x, h0, w_ih, w_hh, lengths, ctx.reverse, y, ctx.last, need_dx, need_dw)
        return _grads(ctx, dx if need_dx else None, dh0, dw_ih, dw_hh, db, db, need_dw)

    torch.library.register_autograd("fused_s2s::gru_layer_fwd", _gru_backward, setup_context=_setup_context)
    torch.library.register_autograd("fused_s2s::rnn_layer_fwd", _rnn_backward, setup_context=_setup_context)

    # The backward ops have no derivative: without a registration torch would only warn and record the last
    # ATen call inside them, giving a silently wrong double backward.
    def _no_setup(ctx, inputs, output):
        pass

    def _not_differentiable(name):
        def backward(ctx, *grads):
            raise RuntimeError(f"fused_s2s::{name} is not differentiable: double backward (create_graph=True) "
                               "through the fused GRU/RNN is not supported; use backend='reference' for it")
        return backward

    for _name in ("gru_layer_bwd", "rnn_layer_bwd"):
        torch.library.register_autograd(f"fused_s2s::{_name}", _not_differentiable(_name), setup_context=_no_setup)
