"""The Triton backend of the one-layer LSTM op: torch.library ops around fused_s2s/triton/lstm.py.

    fused_s2s::triton_lstm_layer_fwd -> y, h_n, c_n, gates, cells   (gates/cells empty when save=False)
    fused_s2s::triton_lstm_layer_bwd -> dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr   (the C++ bwd op's schema)

The input projection (one GEMM for all steps) and the weight/input gradients (one GEMM each over all steps)
are torch ops here; the recurrences are the Triton kernels. triton is imported on first use only, so
defining these ops never needs it. Autograd is registered in fused_s2s/ops/lstm.py, shared with the C++ ops.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _kernels():
    from fused_s2s.triton import lstm as kernels  # lazy: imports triton

    return kernels


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' cell-state dtype (fused_s2s.triton.lstm.acc_dtype, without importing triton)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _step_mask(lengths: Tensor, T: int) -> Tensor:
    """[T, B, 1] bool: True where step t is inside sequence b."""
    return (torch.arange(T, device=lengths.device)[:, None] < lengths[None, :])[..., None]


_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_inputs(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                 b_hh: Optional[Tensor], w_hr: Optional[Tensor], lengths: Optional[Tensor]) -> None:
    """The C++ op's checks (csrc/cpu/lstm_layer.cpp check_inputs), word for word: the kernels trust shapes."""
    if x.dim() != 3:
        raise RuntimeError(f"lstm_layer: x must be [T, B, I], got {list(x.shape)}")
    T, B, I = x.shape
    if w_ih.dim() != 2 or w_ih.shape[0] % 4 != 0 or w_ih.shape[1] != I:
        raise RuntimeError(f"lstm_layer: w_ih must be [4H, {I}], got {list(w_ih.shape)}")
    H = w_ih.shape[0] // 4
    if H <= 0:
        raise RuntimeError("lstm_layer: hidden_size must be greater than zero")
    if w_hr is not None and (w_hr.dim() != 2 or w_hr.shape[1] != H):
        raise RuntimeError(f"lstm_layer: w_hr must be [P, {H}], got {list(w_hr.shape)}")
    P = w_hr.shape[0] if w_hr is not None else H
    for name, t, shape in (("w_hh", w_hh, (4 * H, P)), ("h0", h0, (B, P)), ("c0", c0, (B, H)),
                           ("b_ih", b_ih, (4 * H,)), ("b_hh", b_hh, (4 * H,))):
        if t is not None and tuple(t.shape) != shape:
            raise RuntimeError(f"lstm_layer: {name} must be {list(shape)}, got {list(t.shape)}")
    if x.dtype not in _DTYPES:
        raise RuntimeError(f"lstm_layer: the Triton kernels take float32, float16, bfloat16 or float64, got {x.dtype}")
    for t in (h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise RuntimeError(f"lstm_layer: every tensor must match x's dtype and device ({x.dtype}, {x.device}), "
                               f"got {t.dtype}, {t.device}")
    if lengths is not None:
        if lengths.dim() != 1 or lengths.shape[0] != B:
            raise RuntimeError(f"lstm_layer: lengths must be [{B}], got {list(lengths.shape)}")
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise RuntimeError(f"lstm_layer: lengths must be an integer tensor, got {lengths.dtype}")
        bad = ((lengths < 1) | (lengths > T)).nonzero()
        if bad.numel():
            b = int(bad[0, 0])
            raise RuntimeError(f"lstm_layer: every length must be in [1, {T}], got lengths[{b}] = {int(lengths[b])}")


@torch.library.custom_op("fused_s2s::triton_lstm_layer_fwd", mutates_args=())
def triton_lstm_layer_fwd(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                          b_hh: Optional[Tensor], w_hr: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
                          save: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    check_inputs(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths)
    T, B, I = x.shape
    G = w_ih.shape[0]
    bias = None
    if b_ih is not None or b_hh is not None:
        bias = (b_ih if b_ih is not None else 0) + (b_hh if b_hh is not None else 0)
    x2 = x.reshape(T * B, I)
    xp = (torch.addmm(bias, x2, w_ih.t()) if bias is not None else x2 @ w_ih.t()).view(T, B, G)
    lengths = lengths.to(x.device) if lengths is not None else None
    y, h_n, c_n, gates, cells = _kernels().lstm_fwd(
        xp, h0.contiguous(), c0.contiguous(), w_hh.contiguous(), None if w_hr is None else w_hr.contiguous(),
        lengths, reverse, save)
    if not save:
        gates, cells = x.new_empty(0), x.new_empty(0, dtype=_acc_dtype(x.dtype))
    return y, h_n, c_n, gates, cells


def fwd_fake_outputs(x: Tensor, c0: Tensor, w_ih: Tensor, w_hr: Optional[Tensor], save: bool) -> tuple[Tensor, ...]:
    """The shapes and dtypes both save-flag forward ops return (Triton's and CUDA C++'s, lstm_cuda.py)."""
    T, B, _ = x.shape
    H = w_ih.shape[0] // 4
    P = w_hr.shape[0] if w_hr is not None else H
    gates = x.new_empty((T, B, 4 * H) if save else (0,), dtype=_acc_dtype(x.dtype) if save else x.dtype)
    cells = x.new_empty((T, B, H) if save else (0,), dtype=_acc_dtype(x.dtype))
    return x.new_empty(T, B, P), x.new_empty(B, P), c0.new_empty(B, H), gates, cells


@triton_lstm_layer_fwd.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, save):
    return fwd_fake_outputs(x, c0, w_ih, w_hr, save)


@torch.library.custom_op("fused_s2s::triton_lstm_layer_bwd", mutates_args=())
def triton_lstm_layer_bwd(dy: Tensor, dh_n: Tensor, dc_n: Tensor, x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor,
                          w_hh: Tensor, w_hr: Optional[Tensor], lengths: Optional[Tensor], reverse: bool, y: Tensor,
                          gates: Tensor, cells: Tensor, need_dx: bool, need_dw: bool = True
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B, I = x.shape
    G = gates.shape[2]
    P = w_hh.shape[1]
    lengths = lengths.to(x.device) if lengths is not None else None
    dg, dh0, dc0, dht = _kernels().lstm_bwd(
        dy.contiguous(), dh_n.contiguous(), dc_n.contiguous(), c0.contiguous(), w_hh.contiguous(),
        None if w_hr is None else w_hr.contiguous(), lengths, reverse, gates, cells)
    dg2 = dg.view(T * B, G)
    dx = (dg2 @ w_ih).view(T, B, I) if need_dx else x.new_empty(0)
    if not need_dw:  # frozen weights: no weight GEMMs
        return (dx, dh0.to(h0.dtype), dc0.to(c0.dtype), *(x.new_empty(0) for _ in range(4)))  # no aliases
    valid = _step_mask(lengths, T) if lengths is not None else None
    # Padding steps have dG = 0, but x may hold NaN there (NaN·0 = NaN): keep it out of dW_ih.
    x_used = torch.where(valid, x, 0) if valid is not None else x
    dw_ih = dg2.t() @ x_used.reshape(T * B, I)
    db = dg2.sum(0, dtype=torch.float32).to(dg.dtype)
    # h_{t-1} of every step: the previous output in reading order, h0 at each sequence's first step.
    if not reverse:
        h_prev = torch.cat([h0[None], y[:-1]])
    else:
        h_prev = torch.cat([y[1:], h0[None]])
        if lengths is not None:
            first = (torch.arange(T, device=x.device)[:, None] + 1 >= lengths[None, :])[..., None]
            h_prev = torch.where(first, h0[None], h_prev)
    dw_hh = dg2.t() @ h_prev.reshape(T * B, P)
    if w_hr is not None:
        h_raw = gates[..., 3 * (G // 4):] * torch.tanh(cells)  # zero at padding positions (o = c = 0 there)
        dw_hr = (dht.view(T * B, P).t() @ h_raw.view(T * B, G // 4)).to(w_hr.dtype)
    else:
        dw_hr = x.new_empty(0)
    return dx, dh0.to(h0.dtype), dc0.to(c0.dtype), dw_ih, dw_hh, db, dw_hr


def bwd_fake_outputs(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
                     need_dx: bool, need_dw: bool) -> tuple[Tensor, ...]:
    """The shapes both LSTM backward ops return (the C++ and the Triton one): an unneeded gradient is empty."""
    # new_empty, not empty_like: the ops return contiguous tensors whatever the inputs' strides; and a new
    # empty tensor per missing gradient, since outputs must not alias
    dx = x.new_empty(x.shape if need_dx else (0,))
    if not need_dw:
        return (dx, h0.new_empty(h0.shape), c0.new_empty(c0.shape), *(x.new_empty(0) for _ in range(4)))
    dw_hr = x.new_empty(w_hr.shape if w_hr is not None else (0,))
    return (dx, h0.new_empty(h0.shape), c0.new_empty(c0.shape), x.new_empty(w_ih.shape), x.new_empty(w_hh.shape),
            x.new_empty(w_ih.shape[0]), dw_hr)


@triton_lstm_layer_bwd.register_fake
def _(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, reverse, y, gates, cells, need_dx, need_dw=True):
    return bwd_fake_outputs(x, h0, c0, w_ih, w_hh, w_hr, need_dx, need_dw)
