"""Fused attention ops: score, source-padding mask, softmax and context in one pass over the source.

    fused_s2s::attention_fwd(query [B,T,D], keys [B,S,D], values [B,S,M], lengths?, v? [D], scale,
                             return_weights) -> context [B,T,M], lse [B,T], weights [B,T,S] (or empty)
    fused_s2s::attention_bwd(d_context, query, keys, values, lengths?, v?, scale, context, lse)
                             -> d_query, d_keys, d_values, d_v
(schemas: csrc/attention_ops.cpp; C++ CPU kernel: csrc/cpu/attention.cpp). Every kind of
fused_s2s.reference.attention maps onto the one core: dot and scaled_dot score q·k·scale with keys = values
= memory; general first projects the query (q w); additive scores v·tanh(q' + k) with q' = w_query q + b_query
and keys = w_memory·memory, which a decoder computes once per source (`keys=`). T > 1 is the batched form
(teacher forcing without input feeding); T = 1 is a decoder step. The backward recomputes probabilities from
the saved log-sum-exp. The returned weights carry no gradient (use backend="reference" to differentiate them).
Backends: "auto" (CPU tensors: "cpu"; CUDA: "triton" where its kernels hold the feature sizes, up to 128 for
dot scores and 256 for additive, else "reference", i.e. torch ops), "cpu", "triton" (CUDA, or CPU tensors
under TRITON_INTERPRET=1), "cuda", "reference".

backend="cuda" runs the CUDA C++ kernels (csrc/cuda/attention.cuh), which csrc/cuda_bindings/attention_cuda.cu
registers for these same ops under the CUDA dispatch key: the op, its fake kernel and its autograd are the CPU
op's, and the tensors' device picks the kernel. They take float32, bfloat16 and float16 natively (fp32
arithmetic, lse always float32); float64, or feature sizes whose rows do not fit in shared memory, run on the
"auto" choice instead, with a warning naming the reason (once per kind). "auto" keeps Triton on CUDA tensors
until a GPU has measured the CUDA kernels (issue 15).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

import fused_s2s._C  # noqa: F401  (registers the fused_s2s::attention_* C++ ops)
from fused_s2s.lengths_check import check_lengths_in_range
from fused_s2s.ops import lstm_cuda
from fused_s2s.ops.lstm import _C_ERROR, triton_unavailable_reason
from fused_s2s.reference import attention as _reference
from fused_s2s.triton.limits import ATTENTION_ADDITIVE_MAX_FEATURES, ATTENTION_DOT_MAX_FEATURES

KINDS = _reference.KINDS
BACKENDS = ("auto", "cpu", "triton", "cuda", "reference")
CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# attention_plan (csrc/cuda/attention.cuh): the bindings launch 128 threads (4 warps) per CTA, and tiles of 64
# positions in the forward.
_CUDA_THREADS, _CUDA_TILE = 128, 64


def cuda_kernels_built() -> bool:
    """Whether the loaded extension registered the CUDA attention kernels (built against a CUDA torch)."""
    return _has_cuda_kernel("fused_s2s::attention_fwd")


def _has_cuda_kernel(op: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")
    except RuntimeError:  # the op is not defined at all (fused_s2s._C not loaded)
        return False


def cuda_unavailable_reason(device: torch.device) -> Optional[str]:
    """Why backend 'cuda' cannot run attention on `device` at all, or None (lstm_cuda's words)."""
    return lstm_cuda.cuda_unavailable_reason(device, _C_ERROR, built=cuda_kernels_built())


def cuda_unsupported_reason(dtype: torch.dtype, device: torch.device, T: int, D: int, M: int) -> Optional[str]:
    """Why the CUDA attention kernels cannot take this input (so it runs on the "auto" choice), or None.

    T query rows per batch row, D the scored feature size (the projected query's), M the memory size. The
    shared memory is attention_plan's, which the bindings check for the forward and the backward together:
    forward 4·(D + 64 + M + 4) bytes, backward 4·(T + warps·(D + M))."""
    if dtype not in CUDA_DTYPES:
        return f"the CUDA attention kernels take float32, bfloat16 or float16, got {dtype}"
    if min(D, M) < 1:
        return f"the CUDA attention kernels need feature sizes >= 1, got D={D} M={M}"
    need = 4 * max(D + _CUDA_TILE + M + 4, T + (_CUDA_THREADS // 32) * (D + M))
    if device.type == "cuda":
        _sm_count, smem = lstm_cuda._device_limits(device)
        if need > smem:
            return (f"attention: D={D} M={M} T={T} needs {need} bytes of shared memory per CTA; the device allows "
                    f"{smem}")
    return None


# The kinds of reason already warned about: a fallback is stated once per kind, not once per call.
_FALLBACK_WARNED: set[str] = set()


def cuda_fallback(reason: str, what: str, fallback: str) -> str:
    """backend="cuda" on an input the CUDA kernels cannot take: `fallback`, with a warning saying why."""
    kind = what + ":" + reason.split(",")[0].split(" D=")[0]
    if kind not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add(kind)
        warnings.warn(f"fused_s2s: backend 'cuda' runs this {what} on {fallback!r} instead: {reason}", stacklevel=3)
    return fallback


def triton_fits(kind: str, memory_size: int, score_size: int) -> bool:
    """Whether the Triton kernels hold these feature sizes (score_size: the additive attention size A; for the
    dot kinds the score runs over the memory size)."""
    if kind == "additive":
        return max(memory_size, score_size) <= ATTENTION_ADDITIVE_MAX_FEATURES
    return memory_size <= ATTENTION_DOT_MAX_FEATURES


def _resolve(backend: str, device: torch.device, fits_triton: bool = True) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":  # on CUDA: Triton, or torch ops (the reference) for features the kernels don't hold
        backend = "cpu" if device.type == "cpu" else ("triton" if fits_triton else "reference")
    if backend == "cuda":
        reason = cuda_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"attention backend 'cuda' is unavailable: {reason}")
    if backend == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"attention backend 'triton' is unavailable: {reason}")
    if backend == "cpu" and device.type != "cpu":
        raise RuntimeError(f"attention backend 'cpu' needs CPU tensors, got tensors on {device}")
    return backend


def precompute_keys(memory: Tensor, kind: str, params: Optional[dict]) -> Tensor:
    """What the core scores against: w_memory·memory for additive attention, memory itself otherwise."""
    return F.linear(memory, params["w_memory"]) if kind == "additive" else memory


def check_inputs(query: Tensor, memory: Tensor, memory_lengths: Optional[Tensor], kind: str) -> None:
    """Clear errors for an unknown kind, disagreeing sizes and out-of-range lengths."""
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; expected one of {', '.join(KINDS)}")
    if query.dim() not in (2, 3) or memory.dim() != 3:
        raise ValueError(f"attention: expected query [B, T, D] or [B, D] and memory [B, S, M], got "
                         f"{list(query.shape)} and {list(memory.shape)}")
    if query.shape[0] != memory.shape[0]:
        raise ValueError(f"attention: batch sizes disagree: query {query.shape[0]}, memory {memory.shape[0]}")
    if kind in ("dot", "scaled_dot") and query.shape[-1] != memory.shape[-1]:
        raise ValueError(f"attention {kind!r} needs query size == memory size, got {query.shape[-1]} and "
                         f"{memory.shape[-1]}")
    if memory_lengths is not None:
        if memory_lengths.dim() != 1 or memory_lengths.shape[0] != memory.shape[0]:
            raise ValueError(f"attention: memory_lengths must be [{memory.shape[0]}], got "
                             f"{list(memory_lengths.shape)}")
        if memory_lengths.device.type != "cpu" and memory_lengths.device != memory.device:
            raise RuntimeError(f"attention: memory_lengths must be on the CPU or on memory's device "
                               f"({memory.device}), got {memory_lengths.device}")
        S = memory.shape[1]
        check_lengths_in_range(memory_lengths, S, lambda lo, hi: ValueError(
            f"attention: every memory length must be in [1, {S}], got values in [{lo}, {hi}]"))


def attention(query: Tensor, memory: Tensor, memory_lengths: Optional[Tensor], kind: str,
              params: Optional[dict] = None, return_weights: bool = False, keys: Optional[Tensor] = None,
              backend: str = "auto") -> tuple[Tensor, Optional[Tensor]]:
    """Equals fused_s2s.reference.attention.attention (same arguments); `keys` = precompute_keys(...)."""
    check_inputs(query, memory, memory_lengths, kind)
    score_size = params["v"].shape[0] if kind == "additive" else memory.shape[-1]
    backend = _resolve(backend, query.device, triton_fits(kind, memory.shape[-1], score_size))
    if backend == "cuda":
        D = score_size if kind == "additive" else memory.shape[-1]
        T = query.shape[1] if query.dim() == 3 else 1
        reason = cuda_unsupported_reason(query.dtype, query.device, T, D, memory.shape[-1])
        if reason is not None:
            backend = cuda_fallback(reason, "attention", _resolve(
                "auto", query.device, triton_fits(kind, memory.shape[-1], score_size)))
    if backend == "reference":
        return _reference.attention(query, memory, memory_lengths, kind, params, return_weights)
    single = query.dim() == 2
    q = query.unsqueeze(1) if single else query
    v, scale = None, 1.0
    if kind == "general":
        q = F.linear(q, params["w"])
    elif kind == "scaled_dot":
        scale = 1.0 / math.sqrt(memory.shape[-1])
    elif kind == "additive":
        q = F.linear(q, params["w_query"], params.get("b_query"))
        v = params["v"]
    if keys is None:
        keys = precompute_keys(memory, kind, params)
    op = torch.ops.fused_s2s.attention_fwd if backend != "triton" else torch.ops.fused_s2s.triton_attention_fwd
    dtype = q.dtype
    # 16-bit on the CPU and Triton kernels: the fp32 kernel, rounded back (as the LSTM op). The CUDA kernels
    # hold 16-bit tensors themselves (fp32 arithmetic inside).
    if dtype not in (torch.float32, torch.float64) and backend != "cuda":
        q, keys, memory = q.float(), keys.float(), memory.float()
        v = v.float() if v is not None else None
    context, _lse, weights = op(q, keys, memory, memory_lengths, v, scale, return_weights)
    context, weights = context.to(dtype), weights.to(dtype)
    if single:
        context, weights = context.squeeze(1), weights.squeeze(1) if return_weights else weights
    return context, (weights if return_weights else None)


@torch.library.custom_op("fused_s2s::triton_attention_fwd", mutates_args=())
def triton_attention_fwd(query: Tensor, keys: Tensor, values: Tensor, lengths: Optional[Tensor],
                         v: Optional[Tensor], scale: float, return_weights: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The Triton kernels (fused_s2s/triton/attention.py); weights, when asked for, from torch ops."""
    from fused_s2s.triton import attention as kernels  # lazy: imports triton

    args = [t.contiguous() if t is not None else None for t in (query, keys, values)]
    lens = lengths.to(device=query.device, dtype=torch.int64) if lengths is not None else None
    vv = v.contiguous() if v is not None else None
    context, lse = kernels.attention_fwd(*args, lens, vv, scale)
    weights = query.new_empty(0)
    if return_weights:
        sc = (torch.tanh(query[:, :, None, :] + keys[:, None, :, :]) @ v if v is not None
              else query @ keys.transpose(1, 2) * scale)
        weights = torch.exp(sc - lse[..., None])
        if lens is not None:
            weights = weights.masked_fill(torch.arange(keys.shape[1], device=query.device) >= lens[:, None, None], 0)
    return context, lse, weights


@torch.library.custom_op("fused_s2s::triton_attention_bwd", mutates_args=())
def triton_attention_bwd(d_context: Tensor, query: Tensor, keys: Tensor, values: Tensor, lengths: Optional[Tensor],
                         v: Optional[Tensor], scale: float, context: Tensor, lse: Tensor
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from fused_s2s.triton import attention as kernels  # lazy: imports triton

    lens = lengths.to(device=query.device, dtype=torch.int64) if lengths is not None else None
    return kernels.attention_bwd(d_context.contiguous(), query.contiguous(), keys.contiguous(), values.contiguous(),
                                 lens, v.contiguous() if v is not None else None, scale, context.contiguous(),
                                 lse.contiguous())


@torch.library.register_fake("fused_s2s::triton_attention_fwd")
@torch.library.register_fake("fused_s2s::attention_fwd")
def _attention_fwd_fake(query, keys, values, lengths, v, scale, return_weights):
    B, T, _ = query.shape
    weights = query.new_empty(B, T, keys.shape[1]) if return_weights else query.new_empty(0)
    # lse in query's dtype for float32/float64 (the CPU op); float32 for 16-bit queries, which only the CUDA
    # kernels take (csrc/cuda_bindings/attention_cuda.cu).
    lse_dtype = query.dtype if query.dtype in (torch.float32, torch.float64) else torch.float32
    return query.new_empty(B, T, values.shape[2]), query.new_empty(B, T, dtype=lse_dtype), weights


@torch.library.register_fake("fused_s2s::triton_attention_bwd")
@torch.library.register_fake("fused_s2s::attention_bwd")
def _attention_bwd_fake(d_context, query, keys, values, lengths, v, scale, context, lse):
    d_v = query.new_empty(v.shape) if v is not None else query.new_empty(0)
    return query.new_empty(query.shape), query.new_empty(keys.shape), query.new_empty(values.shape), d_v


def _setup_context(ctx, inputs, output):
    query, keys, values, lengths, v, scale, _return_weights = inputs
    context, lse, weights = output
    ctx.save_for_backward(query, keys, values, lengths, v, context, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse, weights)


def _make_backward(bwd_op):
    def backward(ctx, d_context, _d_lse, _d_weights):
        query, keys, values, lengths, v, context, lse = ctx.saved_tensors
        d_query, d_keys, d_values, d_v = bwd_op(d_context, query, keys, values, lengths, v, ctx.scale, context, lse)
        return d_query, d_keys, d_values, None, (d_v if v is not None else None), None, None
    return backward


def _not_differentiable(ctx, *grads):
    raise RuntimeError("the fused attention backward is not differentiable: double backward through it is not "
                       "supported; use backend='reference' for it")


for _fwd, _bwd in (("attention_fwd", "attention_bwd"), ("triton_attention_fwd", "triton_attention_bwd")):
    torch.library.register_autograd(f"fused_s2s::{_fwd}", _make_backward(getattr(torch.ops.fused_s2s, _bwd)),
                                    setup_context=_setup_context)
    torch.library.register_autograd(f"fused_s2s::{_bwd}", _not_differentiable,
                                    setup_context=lambda ctx, inputs, output: None)
