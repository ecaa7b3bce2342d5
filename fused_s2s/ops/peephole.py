"""The one-layer, one-direction peephole-LSTM op (FusedLSTM(peephole=True)): public function, fake kernels,
autograd, dispatch.

Every backend computes `fused_s2s.reference.lstm.peephole_lstm_layer`. The C++ ops (csrc/cell_ops.cpp):
    fused_s2s::peephole_lstm_layer_fwd(..., w_c, lengths, reverse, save) -> y, h_n, c_n, gates, cells
    fused_s2s::peephole_lstm_layer_bwd -> dx, dh0, dc0, dw_ih, dw_hh, db, dw_c
w_c is [w_ci; w_cf; w_co] ([3H]); gates and cells (what backward needs) are empty unless save. The Triton ops
fused_s2s::triton_peephole_lstm_layer_fwd/_bwd (fused_s2s/ops/lstm_triton.py: the LSTM kernels with their PEEPHOLE
flag) have the same schemas; one autograd formula serves both. Backends: "cpu" (C++), "triton" (CUDA tensors, or
CPU tensors under TRITON_INTERPRET=1) and "reference"; `auto` runs CPU tensors on "cpu" and CUDA tensors on
"triton" where triton can run there, else on the reference. There are no CUDA C++ peephole kernels ("cuda" is an
error).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fused_s2s.ops import lstm as _lstm_ops
from fused_s2s.ops import lstm_triton  # noqa: F401  (registers the fused_s2s::triton_peephole_lstm_* ops)
from fused_s2s.ops.lstm import _C_ERROR, BACKENDS, resolve_backend, triton_unavailable_reason, zeros_if_none
from fused_s2s.reference import lstm as _reference

__all__ = ["peephole_lstm_layer"]


def _resolve(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cuda":
        raise RuntimeError("backend 'cuda' has no peephole-LSTM kernels: FusedLSTM(peephole=True) runs on 'triton' "
                           "(CUDA tensors; 'auto' picks it), 'cpu' (the C++ kernels) or 'reference'")
    # FUSED_S2S_BACKEND=cuda picks the CUDA C++ LSTM kernels for a run; peephole layers keep auto's choice.
    if backend == "auto" and _lstm_ops.ENV_BACKEND in ("auto", "cuda") and device.type != "cpu":
        return "triton" if triton_unavailable_reason(device) is None else "reference"
    return resolve_backend(backend, device)  # "triton" asked for where it cannot run: an error saying why


def peephole_lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                        b_hh: Optional[Tensor], w_ci: Tensor, w_cf: Tensor, w_co: Tensor, lengths: Optional[Tensor],
                        reverse: bool, backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """One peephole-LSTM layer in one direction over x [T, B, I] -> (y [T, B, H], h_n [B, H], c_n [B, H])."""
    backend = _resolve(backend, x.device)
    if backend == "reference":
        return _reference.peephole_lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co, lengths, reverse)
    if backend == "cpu" and x.dtype in (torch.bfloat16, torch.float16):  # the fp32 kernel, rounded back
        up = [None if t is None else t.float() for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ci, w_cf, w_co)]
        return tuple(t.to(x.dtype) for t in peephole_lstm_layer(*up, lengths, reverse, backend))
    # Triton runs 16-bit natively (fp32 accumulation, cell state and saved gates inside the kernels).
    w_c = torch.cat([w_ci, w_cf, w_co])
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_c)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    op = torch.ops.fused_s2s.triton_peephole_lstm_layer_fwd if backend == "triton" else \
        torch.ops.fused_s2s.peephole_lstm_layer_fwd
    y, h_n, c_n, _gates, _cells = op(*tensors, lengths, reverse, save)
    return y, h_n, c_n


if _C_ERROR is None:

    @torch.library.register_fake("fused_s2s::peephole_lstm_layer_fwd")
    def _fwd_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_c, lengths, reverse, save):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        return (x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty(B, H),
                x.new_empty((T, B, 4 * H) if save else (0,)), x.new_empty((T, B, H) if save else (0,)))

    @torch.library.register_fake("fused_s2s::peephole_lstm_layer_bwd")
    def _bwd_fake(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_c, lengths, reverse, y, gates, cells, need_dx, need_dw):
        none = x.new_empty(0)
        dx = x.new_empty(x.shape) if need_dx else x.new_empty(0)
        if not need_dw:
            return dx, h0.new_empty(h0.shape), c0.new_empty(c0.shape), none, x.new_empty(0), x.new_empty(0), x.new_empty(0)
        return (dx, h0.new_empty(h0.shape), c0.new_empty(c0.shape), w_ih.new_empty(w_ih.shape),
                w_hh.new_empty(w_hh.shape), x.new_empty(w_hh.shape[0]), w_c.new_empty(w_c.shape))


# ---- autograd: one formula for the C++ and the Triton forward op, each calling its own backward op ----

def _setup_context(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_c, lengths, reverse, _save = inputs
    y, _h, _c, gates, cells = output
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_c, lengths, y, gates, cells)
    ctx.reverse = reverse
    ctx.has_bias = (b_ih is not None, b_hh is not None)
    ctx.mark_non_differentiable(gates, cells)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for gates and cells (zeros_if_none)


def _backward_with(bwd_op):
    def backward(ctx, dy, dh_n, dc_n, _dgates, _dcells):
        x, h0, c0, w_ih, w_hh, w_c, lengths, y, gates, cells = ctx.saved_tensors
        dy, dh_n, dc_n = zeros_if_none(dy, y), zeros_if_none(dh_n, h0), zeros_if_none(dc_n, c0)
        need_dx, need_dw = ctx.needs_input_grad[0], any(ctx.needs_input_grad[3:8])
        dx, dh0, dc0, dw_ih, dw_hh, db, dw_c = bwd_op(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_c, lengths, ctx.reverse,
                                                       y, gates, cells, need_dx, need_dw)
        dx = dx if need_dx else None
        if not need_dw:
            return (dx, dh0, dc0) + (None,) * 8
        return (dx, dh0, dc0, dw_ih, dw_hh, db if ctx.has_bias[0] else None, db if ctx.has_bias[1] else None, dw_c,
                None, None, None)

    return backward


def _no_setup(ctx, inputs, output):
    pass


def _not_differentiable(name: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"fused_s2s::{name} is not differentiable: double backward through the fused peephole "
                           "LSTM is not supported; use backend='reference' for it")

    return backward


def _register_autograd(prefix: str) -> None:
    """prefix "" (the C++ ops) or "triton_"."""
    bwd_op = getattr(torch.ops.fused_s2s, f"{prefix}peephole_lstm_layer_bwd")
    torch.library.register_autograd(f"fused_s2s::{prefix}peephole_lstm_layer_fwd", _backward_with(bwd_op),
                                    setup_context=_setup_context)
    name = f"{prefix}peephole_lstm_layer_bwd"
    torch.library.register_autograd(f"fused_s2s::{name}", _not_differentiable(name), setup_context=_no_setup)


_register_autograd("triton_")
if _C_ERROR is None:
    _register_autograd("")
