"""The fused attention-decoder step (inference): public function, fake kernel, dispatch.

Computes exactly `fused_s2s.reference.decoder.decoder_step` (LSTM stack with optional input feeding,
attention over the memory masked by lengths, Luong combine), as ONE op call: the C++ op
`fused_s2s::decoder_step` (csrc/cpu/decoder_step.cpp) or the Triton kernels (fused_s2s/triton/decoder_step.py).

Per-source and per-model work is hoisted out of the step:
  * `prepare_decoder_weights` concatenates each layer's [w_ih | w_hh] and sums its two biases ONCE, so a step
    runs one GEMM per layer over [x; feed; h] (the step is weight-bandwidth bound at small batch).
  * `attention_keys` computes the keys ONCE per source: memory (dot), memory / sqrt(H) folded into a scale
    (scaled_dot), memory · w (Luong general: (w h)·m = h·(wᵀm)), memory · w_memoryᵀ (additive).

Inference only: there is no autograd formula. If grad mode is on and any input requires grad, the op raises
(a RuntimeError saying so) rather than silently returning a result without a graph; train through the
differentiable pieces (FusedDecoder.forward) or call with backend="reference".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from fused_s2s.ops.lstm import _C_ERROR, resolve_backend
from fused_s2s.reference import decoder as _reference
from fused_s2s.triton.limits import DECODER_STEP_MAX_MEMORY

__all__ = ["DecoderStepWeights", "prepare_decoder_weights", "AttentionKeys", "attention_keys", "decoder_step"]

ATTENTION_KINDS = ("dot", "scaled_dot", "general", "additive")


@dataclass(frozen=True)
class DecoderStepWeights:
    """Weights laid out for the fused step (build once with prepare_decoder_weights, reuse every step).

    w_cat[l]: [4H, in_l + H] = [w_ih | w_hh]; b_cat[l]: [4H] = b_ih + b_hh or None; w_out [H, M + H];
    b_out [H] or None; attn_kind and attn_params as in the reference; lstm_weights kept for the reference.
    """

    w_cat: tuple[Tensor, ...]
    b_cat: tuple[Optional[Tensor], ...]
    w_out: Tensor
    b_out: Optional[Tensor]
    attn_kind: str
    attn_params: dict
    lstm_weights: tuple


@dataclass(frozen=True)
class AttentionKeys:
    """Per-source attention keys (build once per memory with attention_keys; index_select along B for beams)."""

    keys: Tensor  # [B, S, K]: K = H (dot-like scores), A (additive), or M (project_query)
    scale: float
    # General attention scored as (W h)·m_s: the step projects its query by W ([M, H]) and scores against
    # memory itself, instead of scoring h against keys m_s·W computed for every source position. Per step that
    # costs B·H·M multiply-adds against the keys' B·S·M·H once per source, so it wins whenever a source is
    # decoded for fewer than S steps, and needs no cache (attention_keys(..., project_query=True)).
    project_query: bool = False

    def index_select(self, index: Tensor) -> "AttentionKeys":
        return AttentionKeys(self.keys.index_select(0, index), self.scale, self.project_query)


def _sum_bias(b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Optional[Tensor]:
    if b_ih is None:
        return b_hh
    return b_ih if b_hh is None else b_ih + b_hh


def prepare_decoder_weights(lstm_weights: Sequence, attn_kind: str, attn_params: dict, w_out: Tensor,
                            b_out: Optional[Tensor]) -> DecoderStepWeights:
    """Concatenate [w_ih | w_hh] and sum the biases of every layer (detached: the fused step is inference only)."""
    if attn_kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {attn_kind!r}; expected one of {ATTENTION_KINDS}")
    with torch.no_grad():
        w_cat = tuple(torch.cat([w_ih, w_hh], dim=1).contiguous() for (w_ih, w_hh, _, _) in lstm_weights)
        b_cat = tuple(_sum_bias(b_ih, b_hh) for (_, _, b_ih, b_hh) in lstm_weights)
        b_cat = tuple(None if b is None else b.detach().contiguous() for b in b_cat)
    return DecoderStepWeights(w_cat, b_cat, w_out.detach().contiguous(),
                              None if b_out is None else b_out.detach().contiguous(), attn_kind,
                              {k: (None if v is None else v.detach()) for k, v in attn_params.items()},
                              tuple(tuple(t for t in w) for w in lstm_weights))


def attention_keys(attn_kind: str, attn_params: dict, memory: Tensor, project_query: bool = False) -> AttentionKeys:
    """The keys the step scores against, computed once per source memory [B, S, M]. project_query: for
    general attention, score the projected query against memory itself (see AttentionKeys); other kinds
    ignore it."""
    with torch.no_grad():
        if project_query and attn_kind == "general":
            return AttentionKeys(memory.contiguous(), 1.0, project_query=True)
        if attn_kind == "dot":
            return AttentionKeys(memory.contiguous(), 1.0)
        if attn_kind == "scaled_dot":
            return AttentionKeys(memory.contiguous(), 1.0 / math.sqrt(memory.shape[-1]))
        if attn_kind == "general":
            return AttentionKeys(torch.matmul(memory, attn_params["w"]).contiguous(), 1.0)  # [B, S, H]
        if attn_kind == "additive":
            return AttentionKeys(torch.nn.functional.linear(memory, attn_params["w_memory"]).contiguous(), 1.0)
    raise ValueError(f"unknown attention kind {attn_kind!r}; expected one of {ATTENTION_KINDS}")


# What the fused kernels take: the C++ step float32/float64, the Triton step float32/bfloat16/float16 with
# memory sizes up to DECODER_STEP_MAX_MEMORY. backend="auto" runs anything else on the reference, so a CPU
# bf16 decoder or a very wide one still decodes.


def _kernels_take(x: Tensor, memory: Tensor) -> bool:
    if x.device.type == "cpu":
        return x.dtype in (torch.float32, torch.float64)
    return x.dtype in (torch.float32, torch.bfloat16, torch.float16) and memory.shape[-1] <= DECODER_STEP_MAX_MEMORY


def decoder_step(x: Tensor, feed: Optional[Tensor], h: Tensor, c: Tensor, weights: DecoderStepWeights,
                 memory: Tensor, memory_lengths: Optional[Tensor] = None, keys: Optional[AttentionKeys] = None,
                 backend: str = "auto") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One fused decoder step -> (out h̃ [B, H], h_new [L, B, H], c_new [L, B, H], attn_weights [B, S]).

    x [B, E]; feed [B, H] or None (input feeding); h, c [L, B, H]; memory [B, S, M]; memory_lengths [B]
    integers in 1..S (on memory's device) or None. keys: from attention_keys(...) for this memory (computed
    here when None, which costs a GEMM per call for additive attention; general projects the query instead). backend "auto": the fused
    kernels where they take the dtype and sizes (_kernels_take), else the reference.
    """
    if backend == "auto" and not _kernels_take(x, memory):
        backend = "reference"
    backend = resolve_backend(backend, x.device)
    if backend == "reference":
        return _reference.decoder_step(x, feed, h, c, weights.lstm_weights, weights.attn_kind, weights.attn_params,
                                       weights.w_out, weights.b_out, memory, memory_lengths)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, feed, h, c, memory)):
        raise RuntimeError("decoder_step: the fused step is inference only (no autograd formula); run it under "
                           "torch.no_grad(), or use backend='reference' / FusedDecoder.forward to train")
    if memory_lengths is not None and memory_lengths.device != memory.device:
        raise RuntimeError(f"decoder_step: memory_lengths must be on {memory.device} like memory, got "
                           f"{memory_lengths.device}")
    if keys is None:  # general attention projects the query then: no keys to compute for every position
        keys = attention_keys(weights.attn_kind, weights.attn_params, memory, project_query=True)
    additive = weights.attn_kind == "additive"
    p = weights.attn_params
    # The query projection: additive's w_query (+ b_query), or general's w when the keys are memory itself.
    w_query = p["w_query"] if additive else (p["w"] if keys.project_query else None)
    args = (x, feed, h, c, list(weights.w_cat), list(weights.b_cat), "additive" if additive else "dot", keys.keys,
            keys.scale, w_query, p.get("b_query") if additive else None,
            p["v"] if additive else None, memory, memory_lengths, weights.w_out, weights.b_out)
    op = torch.ops.fused_s2s.triton_decoder_step if backend == "triton" else torch.ops.fused_s2s.decoder_step
    return op(*args)


@torch.library.custom_op("fused_s2s::triton_decoder_step", mutates_args=())
def triton_decoder_step(x: Tensor, feed: Optional[Tensor], h: Tensor, c: Tensor, w_cat: list[Tensor],
                        b_cat: list[Optional[Tensor]], score: str, keys: Tensor, scale: float,
                        w_query: Optional[Tensor], b_query: Optional[Tensor], v: Optional[Tensor], memory: Tensor,
                        lengths: Optional[Tensor], w_out: Tensor, b_out: Optional[Tensor]
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The Triton kernels' chain (fused_s2s/triton/decoder_step.py); the C++ op's schema and semantics."""
    from fused_s2s.triton import decoder_step as _triton  # lazy: CPU use never imports triton

    return _triton.decoder_step(x, feed, h, c, w_cat, b_cat, score, keys, scale, w_query, b_query, v, memory,
                                lengths, w_out, b_out)


def _step_fake(x, feed, h, c, w_cat, b_cat, score, keys, scale, w_query, b_query, v, memory, lengths, w_out, b_out):
    L, B, H = h.shape
    return x.new_empty(B, H), x.new_empty(L, B, H), x.new_empty(L, B, H), x.new_empty(B, memory.shape[1])


torch.library.register_fake("fused_s2s::triton_decoder_step")(_step_fake)


def _inference_only(ctx, *grads):
    raise RuntimeError("fused_s2s::triton_decoder_step is inference only (no autograd formula); train through "
                       "FusedDecoder.forward or backend='reference'")


torch.library.register_autograd("fused_s2s::triton_decoder_step", _inference_only,
                                setup_context=lambda ctx, inputs, output: None)


if _C_ERROR is None:

    torch.library.register_fake("fused_s2s::decoder_step")(_step_fake)

    # The autograd rule (inference only: raise when an input requires grad) is registered in C++
    # (csrc/decoder_step_ops.cpp): a Python one costs ~17 us per step.
