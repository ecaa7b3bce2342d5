"""The Triton backend of the one-layer GRU and Elman RNN ops: torch.library ops around fused_s2s/triton/cells.py.

Same schemas as the C++ ops (csrc/cell_ops.cpp), under a triton_ prefix:
    fused_s2s::triton_gru_layer_fwd -> y, h_n, saved   (saved: [T, B, 4H] r, z, n, W_hn h + b_hn in the
                                                        kernels' acc dtype, fp32 for 16-bit inputs; empty
                                                        unless save)
    fused_s2s::triton_gru_layer_bwd -> dx, dh0, dw_ih, dw_hh, db_ih, db_hh
    fused_s2s::triton_rnn_layer_fwd -> y, h_n          (backward needs only y)
    fused_s2s::triton_rnn_layer_bwd -> dx, dh0, dw_ih, dw_hh, db
dx is empty unless need_dx, the weight gradients are empty unless need_dw. fp32, fp16, bf16 and fp64 inputs
run natively (fp32 accumulation and carried state inside the kernels for 16-bit).

The input projection (one GEMM for all steps) and dx and the weight gradients (one GEMM each over all steps)
are torch ops here; the recurrences are the Triton kernels, imported on first use only, so defining these ops
never needs triton. The fake-output helpers here are shared with the C++ ops; autograd for both families is
registered in fused_s2s/ops/cells.py.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fused_s2s.ops.lstm_triton import _acc_dtype, _step_mask

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _kernels():
    from fused_s2s.triton import cells as kernels  # lazy: imports triton

    return kernels


# ---- fake outputs, shared with the C++ ops' fakes (fused_s2s/ops/cells.py) ----

def gru_fwd_fake_outputs(x: Tensor, w_hh: Tensor, save: bool, saved_dtype: torch.dtype) -> tuple[Tensor, ...]:
    """y [T, B, H], h_n [B, H] and saved ([T, B, 4H] of saved_dtype when save, else an empty x-dtype tensor)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    saved = x.new_empty((T, B, 4 * H), dtype=saved_dtype) if save else x.new_empty(0)
    return x.new_empty(T, B, H), x.new_empty(B, H), saved


def rnn_fwd_fake_outputs(x: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor]:
    T, B, _ = x.shape
    H = w_hh.shape[1]
    return x.new_empty(T, B, H), x.new_empty(B, H)


def bwd_fake_outputs(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, need_dx: bool, need_dw: bool,
                     n_bias: int) -> tuple[Tensor, ...]:
    """dx, dh0, dw_ih, dw_hh and n_bias bias gradients (2 for the GRU, 1 for the RNN); an unneeded gradient is a
    new empty tensor (outputs must not alias)."""
    dx = x.new_empty(x.shape) if need_dx else x.new_empty(0)
    if not need_dw:
        return (dx, h0.new_empty(h0.shape)) + tuple(x.new_empty(0) for _ in range(2 + n_bias))
    return (dx, h0.new_empty(h0.shape), w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape)) + tuple(
        x.new_empty(w_hh.shape[0]) for _ in range(n_bias))


# ---- checks: the C++ ops' (csrc/cpu/cell_layer.cpp), word for word where they overlap ----

def check_inputs(op: str, G: int, x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                 b_hh: Optional[Tensor], lengths: Optional[Tensor]) -> None:
    """One layer's inputs, G gate rows per unit; `op` names the op in the message. The kernels trust shapes."""
    if x.dim() != 3:
        raise RuntimeError(f"{op}: x must be [T, B, I], got {list(x.shape)}")
    T, B, I = x.shape
    if w_ih.dim() != 2 or w_ih.shape[0] % G != 0 or w_ih.shape[1] != I:
        raise RuntimeError(f"{op}: w_ih must be [{G}H, {I}], got {list(w_ih.shape)}")
    H = w_ih.shape[0] // G
    if H <= 0:
        raise RuntimeError(f"{op}: hidden_size must be greater than zero")
    if tuple(w_hh.shape) != (G * H, H):
        raise RuntimeError(f"{op}: w_hh must be [{G * H}, {H}], got {list(w_hh.shape)}")
    if tuple(h0.shape) != (B, H):
        raise RuntimeError(f"{op}: h0 must be [{B}, {H}], got {list(h0.shape)}")
    if x.dtype not in _DTYPES:
        raise RuntimeError(f"{op}: the Triton kernels take float32, float16, bfloat16 or float64, got {x.dtype}")
    for b in (b_ih, b_hh):
        if b is not None and (b.dim() != 1 or b.shape[0] != G * H):
            raise RuntimeError(f"{op}: biases must be [{G * H}], got {list(b.shape)}")
    for t in (h0, w_ih, w_hh, b_ih, b_hh):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise RuntimeError(f"{op}: every tensor must match x's dtype and device ({x.dtype}, {x.device}), "
                               f"got {t.dtype}, {t.device}")
    if lengths is not None:
        if lengths.dim() != 1 or lengths.shape[0] != B:
            raise RuntimeError(f"{op}: lengths must be [{B}], got {list(lengths.shape)}")
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise RuntimeError(f"{op}: lengths must be an integer tensor, got {lengths.dtype}")
        bad = ((lengths < 1) | (lengths > T)).nonzero()
        if bad.numel():
            b = int(bad[0, 0])
            raise RuntimeError(f"{op}: every length must be in [1, {T}], got lengths[{b}] = {int(lengths[b])}")


def check_grads(op: str, x: Tensor, H: int, dy: Tensor, dh_n: Tensor, y: Tensor, saved: Optional[Tensor]) -> None:
    """The backward's gradient inputs and saved tensors (saved: the GRU's, in the kernels' acc dtype)."""
    T, B = x.shape[0], x.shape[1]
    if tuple(dy.shape) != (T, B, H) or y.shape != dy.shape:
        raise RuntimeError(f"{op}: dy and y must be [{T}, {B}, {H}], got {list(dy.shape)} and {list(y.shape)}")
    if tuple(dh_n.shape) != (B, H):
        raise RuntimeError(f"{op}: dh_n must be [{B}, {H}], got {list(dh_n.shape)}")
    if saved is not None and (tuple(saved.shape) != (T, B, 4 * H) or saved.dtype != _acc_dtype(x.dtype)):
        raise RuntimeError(f"{op}: saved must be [{T}, {B}, {4 * H}] of {_acc_dtype(x.dtype)} (the forward's, with "
                           f"save=True), got {list(saved.shape)} of {saved.dtype}")
    for t in (dy, dh_n, y):
        if t.dtype != x.dtype or t.device != x.device:
            raise RuntimeError(f"{op}: every tensor must match x's dtype and device ({x.dtype}, {x.device}), "
                               f"got {t.dtype}, {t.device}")


# ---- the GEMMs around the kernels ----

def _input_projection(x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor]) -> Tensor:
    """x·W_ihᵀ + b_ih for all steps as one GEMM: [T, B, G·H] (the kernels add b_hh, in fp32)."""
    T, B, I = x.shape
    x2 = x.reshape(T * B, I)
    gi = torch.addmm(b_ih, x2, w_ih.t()) if b_ih is not None else x2 @ w_ih.t()
    return gi.view(T, B, w_ih.shape[0])


def _previous_states(y: Tensor, h0: Tensor, lengths: Optional[Tensor], reverse: bool) -> Tensor:
    """h_{t-1} of every row at every step [T, B, H]: the previous step's output in reading order, or h0 at each
    sequence's first step (t = 0 forward; t = length − 1 reverse). Padding positions meet a zero gradient."""
    if not reverse:
        return torch.cat([h0[None], y[:-1]])
    h_prev = torch.cat([y[1:], h0[None]])
    if lengths is not None:
        first = (torch.arange(y.shape[0], device=y.device)[:, None] + 1 == lengths[None, :])[..., None]
        h_prev = torch.where(first, h0[None], h_prev)
    return h_prev


def _grads(x: Tensor, h0: Tensor, w_ih: Tensor, y: Tensor, dgi: Tensor, dgh: Tensor, dh0: Tensor,
           lengths: Optional[Tensor], reverse: bool, need_dx: bool, need_dw: bool, n_bias: int) -> tuple[Tensor, ...]:
    """dx, dh0, dw_ih, dw_hh and n_bias bias gradients from the kernel's gate gradients dgi (of x·W_ihᵀ + b_ih) and
    dgh (of h·W_hhᵀ + b_hh), as GEMMs over all steps."""
    T, B, I = x.shape
    G, H = dgi.shape[2], y.shape[2]
    dgi2 = dgi.view(T * B, G)
    dx = (dgi2 @ w_ih).view(T, B, I) if need_dx else x.new_empty(0)
    dh0 = dh0.to(h0.dtype)
    if not need_dw:  # frozen weights: no weight GEMMs
        return (dx, dh0) + tuple(x.new_empty(0) for _ in range(2 + n_bias))
    # Padding steps have zero gate gradients, but x may hold NaN there (NaN·0 = NaN): keep it out of dW_ih.
    x_used = torch.where(_step_mask(lengths, T), x, 0) if lengths is not None else x
    dw_ih = dgi2.t() @ x_used.reshape(T * B, I)
    dgh2 = dgh.view(T * B, G)
    dw_hh = dgh2.t() @ _previous_states(y, h0, lengths, reverse).reshape(T * B, H)
    acc = _acc_dtype(x.dtype)
    biases = (dgi2.sum(0, dtype=acc).to(x.dtype),)
    if n_bias == 2:
        biases += (dgh2.sum(0, dtype=acc).to(x.dtype),)
    return (dx, dh0, dw_ih, dw_hh) + biases


def _contiguous(t: Optional[Tensor]) -> Optional[Tensor]:
    return t.contiguous() if t is not None else None


def _lengths_on(lengths: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    return lengths.to(device=x.device, dtype=torch.int64).contiguous() if lengths is not None else None


# ---- the ops ----

@torch.library.custom_op(
    "fused_s2s::triton_gru_layer_fwd", mutates_args=(),
    schema="(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? lengths, "
           "bool reverse, bool save) -> (Tensor y, Tensor h_n, Tensor saved)")
def triton_gru_layer_fwd(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                         b_hh: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
                         save: bool) -> tuple[Tensor, Tensor, Tensor]:
    check_inputs("gru_layer", 3, x, h0, w_ih, w_hh, b_ih, b_hh, lengths)
    y, h_n, saved = _kernels().cell_fwd(_input_projection(x, w_ih, b_ih), h0.contiguous(), w_hh.contiguous(),
                                        _contiguous(b_hh), _lengths_on(lengths, x), reverse, "gru", save)
    return y, h_n, saved if saved is not None else x.new_empty(0)


@triton_gru_layer_fwd.register_fake
def _(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save):
    return gru_fwd_fake_outputs(x, w_hh, save, _acc_dtype(x.dtype))


@torch.library.custom_op(
    "fused_s2s::triton_gru_layer_bwd", mutates_args=(),
    schema="(Tensor dy, Tensor dh_n, Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? lengths, bool reverse, "
           "Tensor y, Tensor saved, bool need_dx, bool need_dw) -> (Tensor dx, Tensor dh0, Tensor dw_ih, "
           "Tensor dw_hh, Tensor db_ih, Tensor db_hh)")
def triton_gru_layer_bwd(dy: Tensor, dh_n: Tensor, x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor,
                         lengths: Optional[Tensor], reverse: bool, y: Tensor, saved: Tensor, need_dx: bool,
                         need_dw: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    check_inputs("gru_layer_bwd", 3, x, h0, w_ih, w_hh, None, None, lengths)
    check_grads("gru_layer_bwd", x, w_hh.shape[1], dy, dh_n, y, saved)
    lengths = _lengths_on(lengths, x)
    y, h0 = y.contiguous(), h0.contiguous()
    dgi, dgh, dh0 = _kernels().cell_bwd(dy.contiguous(), dh_n.contiguous(), y, h0, saved.contiguous(),
                                        w_hh.contiguous(), lengths, reverse, "gru")
    return _grads(x, h0, w_ih, y, dgi, dgh, dh0, lengths, reverse, need_dx, need_dw, n_bias=2)


@triton_gru_layer_bwd.register_fake
def _(dy, dh_n, x, h0, w_ih, w_hh, lengths, reverse, y, saved, need_dx, need_dw):
    return bwd_fake_outputs(x, h0, w_ih, w_hh, need_dx, need_dw, n_bias=2)


def _check_nonlinearity(nonlinearity: str) -> None:
    if nonlinearity not in ("tanh", "relu"):
        raise RuntimeError(f"rnn_layer: Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")


@torch.library.custom_op(
    "fused_s2s::triton_rnn_layer_fwd", mutates_args=(),
    schema="(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? lengths, "
           "bool reverse, str nonlinearity) -> (Tensor y, Tensor h_n)")
def triton_rnn_layer_fwd(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                         b_hh: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
                         nonlinearity: str) -> tuple[Tensor, Tensor]:
    _check_nonlinearity(nonlinearity)
    check_inputs("rnn_layer", 1, x, h0, w_ih, w_hh, b_ih, b_hh, lengths)
    y, h_n, _ = _kernels().cell_fwd(_input_projection(x, w_ih, b_ih), h0.contiguous(), w_hh.contiguous(),
                                    _contiguous(b_hh), _lengths_on(lengths, x), reverse, nonlinearity, False)
    return y, h_n


@triton_rnn_layer_fwd.register_fake
def _(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity):
    return rnn_fwd_fake_outputs(x, w_hh)


@torch.library.custom_op(
    "fused_s2s::triton_rnn_layer_bwd", mutates_args=(),
    schema="(Tensor dy, Tensor dh_n, Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? lengths, bool reverse, "
           "Tensor y, str nonlinearity, bool need_dx, bool need_dw) -> (Tensor dx, Tensor dh0, Tensor dw_ih, "
           "Tensor dw_hh, Tensor db)")
def triton_rnn_layer_bwd(dy: Tensor, dh_n: Tensor, x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor,
                         lengths: Optional[Tensor], reverse: bool, y: Tensor, nonlinearity: str, need_dx: bool,
                         need_dw: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    _check_nonlinearity(nonlinearity)
    check_inputs("rnn_layer_bwd", 1, x, h0, w_ih, w_hh, None, None, lengths)
    check_grads("rnn_layer_bwd", x, w_hh.shape[1], dy, dh_n, y, None)
    lengths = _lengths_on(lengths, x)
    y, h0 = y.contiguous(), h0.contiguous()
    da, _, dh0 = _kernels().cell_bwd(dy.contiguous(), dh_n.contiguous(), y, h0, None, w_hh.contiguous(), lengths,
                                     reverse, nonlinearity)
    return _grads(x, h0, w_ih, y, da, da, dh0, lengths, reverse, need_dx, need_dw, n_bias=1)


@triton_rnn_layer_bwd.register_fake
def _(dy, dh_n, x, h0, w_ih, w_hh, lengths, reverse, y, nonlinearity, need_dx, need_dw):
    return bwd_fake_outputs(x, h0, w_ih, w_hh, need_dx, need_dw, n_bias=1)
