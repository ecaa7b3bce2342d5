"""Plain-PyTorch attention over a padded source: the oracle of the fused attention ops.

    attention(query [B, T, Dq] or [B, Dq], memory [B, S, M], memory_lengths [B] or None, kind, params,
              return_weights=False) -> (context [B, T, M] (or [B, M]), weights [B, T, S] (or [B, S]) or None)

kinds and params (Luong / Bahdanau, OpenNMT's parameter layout):
    dot         q·m_s                                  (Dq == M)      params: none
    scaled_dot  q·m_s / sqrt(M)                        (Dq == M)      params: none
    general     (w q)·m_s                              w [M, Dq]      params: {"w"}
    additive    v·tanh(w_query q + b_query + w_memory m_s)            params: {"w_query" [A, Dq], "b_query" [A],
                                                                               "w_memory" [A, M], "v" [A]}
Positions s ≥ memory_lengths[b] get score -inf and their memory rows are zeroed before the context (so
padding, NaN included, never reaches the result).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

KINDS = ("dot", "general", "additive", "scaled_dot")


def scores(query: Tensor, memory: Tensor, kind: str, params: Optional[dict]) -> Tensor:
    """Unmasked scores [B, T, S] of query [B, T, Dq] against memory [B, S, M]."""
    if kind in ("dot", "scaled_dot"):
        s = query @ memory.transpose(1, 2)
        return s / math.sqrt(memory.shape[-1]) if kind == "scaled_dot" else s
    if kind == "general":
        return F.linear(query, params["w"]) @ memory.transpose(1, 2)
    if kind == "additive":
        q = F.linear(query, params["w_query"], params.get("b_query"))        # [B, T, A]
        k = F.linear(memory, params["w_memory"])                             # [B, S, A]
        return torch.tanh(q.unsqueeze(2) + k.unsqueeze(1)) @ params["v"]     # [B, T, S]
    raise ValueError(f"unknown attention kind {kind!r}; expected one of {', '.join(KINDS)}")


def attention(query: Tensor, memory: Tensor, memory_lengths: Optional[Tensor], kind: str,
              params: Optional[dict] = None, return_weights: bool = False) -> tuple[Tensor, Optional[Tensor]]:
    """Masked softmax attention; see the module docstring."""
    single = query.dim() == 2
    q = query.unsqueeze(1) if single else query
    s = scores(q, memory, kind, params)
    if memory_lengths is not None:
        pad = torch.arange(memory.shape[1], device=memory.device) >= memory_lengths.to(memory.device)[:, None]
        s = s.masked_fill(pad[:, None, :], float("-inf"))
        memory = memory.masked_fill(pad[:, :, None], 0.0)
    weights = torch.softmax(s, dim=-1)
    context = weights @ memory
    if single:
        context, weights = context.squeeze(1), weights.squeeze(1)
    return context, (weights if return_weights else None)
