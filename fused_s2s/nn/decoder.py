"""FusedDecoder: a Luong/OpenNMT-style attention LSTM (or GRU) decoder, and DecoderState, its incremental state.

    step t:  inp_0 = cat(x_t, h̃_{t-1}) (input feeding) else x_t
             h, c  = LSTM stack(inp_0)  (GRU: h alone)         dropout between layers, training only
             a_t   = softmax(score(h_top, memory)), masked by memory_lengths
             h̃_t   = tanh(linear_out([a_t · memory; h_top]))

forward() trains (differentiable; without input feeding the whole LSTM stack runs at once on the fused LSTM
op and the attention is batched over all T). step() decodes one token: under no grad it is ONE call of the
fused op fused_s2s::decoder_step (fused_s2s.ops.decoder_step), else the differentiable composition. With
cell="gru" the stack is a FusedGRU and step() is the composition (the GRU cell in torch ops, the fused
attention op): the fused step op is LSTM-only so far.
"""
from __future__ import annotations

import math
import operator
import weakref
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fused_s2s.lengths_check import check_lengths_in_range
from fused_s2s.nn.bridge import Bridge, BRIDGES
from fused_s2s.nn.cells import FusedGRU
from fused_s2s.nn.lstm import FusedLSTM
from fused_s2s.ops.attention import attention as fused_attention
from fused_s2s.ops.attention import cuda_kernels_built as attention_has_cuda_kernels
from fused_s2s.ops.decoder_step import attention_keys, prepare_decoder_weights
from fused_s2s.ops.decoder_step import cuda_kernels_built as decoder_step_has_cuda_kernels
from fused_s2s.ops.decoder_step import decoder_step as fused_decoder_step

__all__ = ["FusedDecoder", "DecoderState", "ATTENTION_KINDS", "CELLS"]

ATTENTION_KINDS = ("dot", "scaled_dot", "general", "additive")
CELLS = ("lstm", "gru")


# General attention without keys=: up to this many source rows (B·S) the keys W·m_s are computed once per
# memory and cached, since that costs about what a few steps of projecting the query cost (each reads all of
# W; at B1 S50 H512 on the 2-core VM ~25 us a step against ~0.1 ms for the keys once); above it the keys'
# GEMM over the source costs tens of steps' worth, and each step projects the query instead.
_GENERAL_KEYS_CACHED_ROWS = 64

# C-level helpers for the per-step checks (FusedDecoder._fused_weights): step() runs right after the op has
# streamed ~15 MB of weights through the core's caches, so each Python-level operation there misses cache
# and costs several times its warm cost (at B8 H512 the Python around the op took ~45 us a step).
_not_none = partial(operator.is_not, None)
_version_of = operator.attrgetter("_version")
_data_ptr_of = Tensor.data_ptr


@dataclass
class DecoderState:
    """Decoder state along a batch: h, c [L, B, H] (c None for a GRU decoder) and the input feed h̃_{t-1} [B, H]
    (None without feeding).

    `index_select(indices)` / `reorder(indices)` pick batch rows (beam search reorders hypotheses with it);
    `repeat_interleave(n)` makes n copies of each row (row b -> rows b*n .. b*n+n-1) for beams.
    """

    h: Tensor
    c: Optional[Tensor]
    feed: Optional[Tensor] = None

    def index_select(self, indices: Tensor) -> "DecoderState":
        indices = indices.to(self.h.device)
        return DecoderState(self.h.index_select(1, indices), None if self.c is None else self.c.index_select(1, indices),
                            None if self.feed is None else self.feed.index_select(0, indices))

    reorder = index_select

    def repeat_interleave(self, n: int) -> "DecoderState":
        return self.index_select(torch.arange(self.h.shape[1], device=self.h.device).repeat_interleave(n))

    @property
    def batch_size(self) -> int:
        return self.h.shape[1]


class _KeysCache:
    """(weakref to a memory tensor, its _version, the FusedDecoder._prepared its keys were made under, its
    AttentionKeys) or None. The keys of dot-like kinds and of a projected query are the memory itself, so the
    last memory stepped over stays alive until another one comes; a copied or pickled decoder (deepcopy,
    torch.save) starts empty, since a weakref cannot be copied."""

    def __init__(self) -> None:
        self.entry = None

    def __reduce__(self):
        return (_KeysCache, ())


class _AttentionParams(nn.Module):
    """The score function's parameters, in fused_s2s.reference.decoder's layout (see params())."""

    def __init__(self, kind: str, query_size: int, memory_size: int, **factory) -> None:
        super().__init__()
        self.kind = kind
        if kind in ("dot", "scaled_dot") and query_size != memory_size:
            raise ValueError(f"attention {kind!r} needs memory_size == hidden_size, got memory_size "
                             f"{memory_size} and hidden_size {query_size}")
        if kind == "general":
            self.w = nn.Parameter(torch.empty(memory_size, query_size, **factory))  # [M, H]
        elif kind == "additive":
            a = query_size
            self.w_query = nn.Parameter(torch.empty(a, query_size, **factory))
            self.b_query = nn.Parameter(torch.empty(a, **factory))
            self.w_memory = nn.Parameter(torch.empty(a, memory_size, **factory))
            self.v = nn.Parameter(torch.empty(a, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            bound = 1.0 / math.sqrt(p.shape[-1])
            nn.init.uniform_(p, -bound, bound)

    def params(self) -> dict:
        if self.kind == "general":
            return {"w": self.w}
        if self.kind == "additive":
            return {"w_query": self.w_query, "b_query": self.b_query, "w_memory": self.w_memory, "v": self.v}
        return {}


def _ops_backend(backend: str) -> str:
    """The backend of the attention and decoder-step ops for a decoder built with `backend`.

    "cuda" names the CUDA C++ kernels of every op family that has them: the attention and decoder-step ops take
    "cuda" where the extension registered their CUDA kernels (a build against a CUDA torch:
    csrc/cuda_bindings/attention_cuda.cu, decoder_step_cuda.cu); in a build without them they run on their
    "auto" choice (Triton on CUDA), so a decoder built with "cuda" still constructs there."""
    if backend != "cuda":
        return backend
    has_cuda = attention_has_cuda_kernels() and decoder_step_has_cuda_kernels()
    return "cuda" if has_cuda else "auto"


class FusedDecoder(nn.Module):
    """Attention LSTM (or GRU) decoder (Luong/OpenNMT style) on fused_s2s's recurrent and decoder-step kernels.

    Args:
        input_size (E), hidden_size (H), memory_size (M): sizes of inputs, LSTM state and encoder memory.
        num_layers: LSTM layers. attention: "dot", "scaled_dot", "general" (Luong) or "additive" (Bahdanau).
        cell: "lstm" (state h, c; parameters under .lstm) or "gru" (state h; parameters under .gru).
        input_feeding: layer 0 reads cat(x_t, h̃_{t-1}). dropout: between LSTM layers, training only.
        bias: biases of the LSTM and of linear_out. backend: "auto" | "cpu" | "triton" | "cuda" | "reference";
            "cuda" runs the recurrent layers on the CUDA C++ LSTM kernels (cell "lstm" only) and the attention
            and decoding-step ops on their CUDA C++ kernels where the build has them (see _ops_backend).
        bridge: how init_state maps an encoder's (h_n, c_n): "concat" (directions concatenated per layer) or
            "linear" (a learned Linear(D * encoder_hidden_size -> H) for h and one for c, built here; needs
            encoder_hidden_size and encoder_directions).

    forward(inputs [B, T, E], memory [B, S, M], memory_lengths=None, state=None, return_attention=False)
        -> (outputs h̃ [B, T, H], attention [B, T, S] or None, final DecoderState)
    step(input_t [B, E], state, memory, memory_lengths=None, keys=None) -> (h̃ [B, H], DecoderState, attn [B, S])
    """

    def __init__(self, input_size: int, hidden_size: int, memory_size: int, num_layers: int = 1,
                 attention: str = "general", input_feeding: bool = True, dropout: float = 0.0, bias: bool = True,
                 backend: str = "auto", bridge: str = "concat", encoder_hidden_size: Optional[int] = None,
                 encoder_directions: int = 2, device=None, dtype=None, cell: str = "lstm") -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; expected one of {CELLS}")
        self.cell = cell
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention {attention!r}; expected one of {ATTENTION_KINDS}")
        if bridge not in BRIDGES:
            raise ValueError(f"unknown bridge {bridge!r}; expected one of {BRIDGES}")
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("memory_size", memory_size),
                        ("num_layers", num_layers)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        factory = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.memory_size = input_size, hidden_size, memory_size
        self.num_layers, self.attention, self.input_feeding = num_layers, attention, input_feeding
        self.dropout, self.bias, self.backend = float(dropout), bias, backend
        self._ops_backend = _ops_backend(backend)
        lstm_input = input_size + (hidden_size if input_feeding else 0)
        # One parameter set for both paths: forward() without feeding runs it as a stack, step() reads its
        # per-layer weights. Its parameters carry nn.LSTM's (nn.GRU's) names (weight_ih_l0, ...).
        stack = dict(bias=bias, batch_first=True, dropout=dropout, backend=backend, **factory)
        if cell == "lstm":
            self.lstm = FusedLSTM(lstm_input, hidden_size, num_layers, **stack)
        else:
            self.gru = FusedGRU(lstm_input, hidden_size, num_layers, **stack)
        self.attn = _AttentionParams(attention, hidden_size, memory_size, **factory)
        self.linear_out = nn.Linear(memory_size + hidden_size, hidden_size, bias=bias, **factory)
        self.bridge_kind = bridge
        self.bridge = None
        if bridge == "linear":
            if encoder_hidden_size is None:
                raise ValueError("bridge='linear' needs encoder_hidden_size (the encoder's hidden_size)")
            self.bridge = Bridge(encoder_directions * encoder_hidden_size, hidden_size, **factory)
        self._prepared = None  # (parameter versions, DecoderStepWeights) cache for the fused step
        self._keys_cache = _KeysCache()  # keys of the last memory stepped over without keys= (_keys_for)
        self._checked_lengths = None  # (memory_lengths, its version, S) last found in range

    # ---------------------------------------------------------------------------------------------- weights

    @property
    def _stack(self) -> nn.Module:
        """The recurrent stack: the FusedLSTM (.lstm) or the FusedGRU (.gru)."""
        return self.lstm if self.cell == "lstm" else self.gru

    def _lstm_weights(self) -> list[tuple]:
        """Per layer (w_ih, w_hh, b_ih, b_hh) of the stack (4H rows for the LSTM, 3H for the GRU)."""
        return [tuple(None if n is None else getattr(self._stack, n) for n in names[:4])
                for names in self._stack._op_weight_names]

    def _fused_weights(self):
        """Weights laid out for the fused step, rebuilt only when a parameter changed (optimizer step, load)."""
        # The modules' own parameter dicts, not self.parameters() or attribute lookups: this runs every step,
        # and walking the module tree cost ~20 us of a ~200 us step. A replaced, moved or updated parameter
        # changes its data_ptr or version, which rebuilds the prepared weights.
        modules = self._modules
        dicts = (modules[self.cell]._parameters, modules["attn"]._parameters, modules["linear_out"]._parameters)
        if torch.compiler.is_compiling():  # dynamo does not trace attrgetter; the plain form, same key
            params = [t for d in dicts for t in d.values() if t is not None]
            key = (*[t.data_ptr() for t in params], *[t._version for t in params])
        else:
            params = tuple(filter(_not_none, chain(dicts[0].values(), dicts[1].values(), dicts[2].values())))
            key = (*map(_data_ptr_of, params), *map(_version_of, params))
        if self._prepared is None or self._prepared[0] != key:
            w = prepare_decoder_weights(self._lstm_weights(), self.attention, self.attn.params(),
                                        self.linear_out.weight, self.linear_out.bias)
            self._prepared = (key, w)
        return self._prepared[1]

    def precompute_keys(self, memory: Tensor):
        """Per-source attention keys for step(keys=...) on the fused path (compute once per memory)."""
        return attention_keys(self.attention, self.attn.params(), memory)

    def _keys_for(self, memory: Tensor):
        """The keys of `memory` for a step called without keys=: computed on the first step over a memory
        tensor and reused while the same tensor comes back unmodified (its _version) under the same weights,
        so a decoding loop that never calls precompute_keys still computes them once per source. Call after
        _fused_weights(), whose key names the weights' versions. A reordered or copied memory (a beam search
        that index_selects memory every step) is a new tensor and gets new keys."""
        general = self.attention == "general"
        if torch.compiler.is_compiling() or memory.is_inference():
            # A traced graph keeps no cache, and an inference tensor has no version counter to tell an in-place
            # change: the op computes the keys (general: projects the query), every step.
            return attention_keys(self.attention, self.attn.params(), memory, project_query=True) if general else None
        prepared = self._prepared
        cached = self._keys_cache.entry
        if cached is not None and cached[0]() is memory and cached[1] == memory._version and cached[2] is prepared:
            return cached[3]
        if general and memory.shape[0] * memory.shape[1] > _GENERAL_KEYS_CACHED_ROWS:
            # The projected query against memory itself: nothing to compute (see AttentionKeys); cached too, as
            # building it every step costs more than the lookup.
            keys = attention_keys(self.attention, self.attn.params(), memory, project_query=True)
        else:
            keys = self.precompute_keys(memory)
        self._keys_cache.entry = (weakref.ref(memory), memory._version, prepared, keys)
        return keys

    # ---------------------------------------------------------------------------------------------- checks

    def _check_memory(self, memory: Tensor, memory_lengths: Optional[Tensor], batch: int) -> None:
        if memory.dim() != 3:
            raise ValueError(f"FusedDecoder: expected memory [B, S, M] to be 3D, got {memory.dim()}D instead")
        if memory.shape[0] != batch:
            raise ValueError(f"FusedDecoder: memory batch size must match the input's. Expected {batch}, "
                             f"got {memory.shape[0]}")
        if memory.shape[2] != self.memory_size:
            raise RuntimeError(f"memory.size(-1) must be equal to memory_size. Expected {self.memory_size}, "
                               f"got {memory.shape[2]}")
        if memory_lengths is None:
            return
        if memory_lengths.device != memory.device:
            raise RuntimeError(f"FusedDecoder: memory_lengths must be on {memory.device} like memory, got "
                               f"{memory_lengths.device}")
        if memory_lengths.dim() != 1 or memory_lengths.shape[0] != batch:
            raise ValueError(f"FusedDecoder: memory_lengths must be 1-D with one entry per sequence. Expected "
                             f"shape ({batch},), got {tuple(memory_lengths.shape)}")
        if memory_lengths.dtype.is_floating_point or memory_lengths.dtype == torch.bool:
            raise ValueError(f"FusedDecoder: memory_lengths must be integers, got {memory_lengths.dtype}")
        S = memory.shape[1]
        error = lambda lo, hi: ValueError(  # noqa: E731
            f"FusedDecoder: memory_lengths must be in [1, {S}] (the memory's length), got values in [{lo}, {hi}]")
        if torch.compiler.is_compiling():  # no version counters while tracing: the queued check every call
            check_lengths_in_range(memory_lengths, S, error)
            return
        # A decoding loop passes the same lengths every step: check them once (the same tensor, unmodified).
        last = self._checked_lengths
        if last is not None and last[0] is memory_lengths and last[1:] == (memory_lengths._version, S):
            return
        check_lengths_in_range(memory_lengths, S, error)
        self._checked_lengths = (memory_lengths, memory_lengths._version, S)

    def _check_input(self, x: Tensor, dim: int) -> None:
        if x.dim() != dim:
            shape = "[B, T, E]" if dim == 3 else "[B, E]"
            raise ValueError(f"FusedDecoder: expected input {shape} to be {dim}D, got {x.dim()}D instead")
        if x.shape[-1] != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {x.shape[-1]}")

    def _check_state(self, state: DecoderState, batch: int) -> None:
        L, H = self.num_layers, self.hidden_size
        h, c = state.h, state.c
        if (c is None) != (self.cell == "gru"):
            raise RuntimeError({"lstm": "an LSTM", "gru": "a GRU"}[self.cell] + " decoder's state " +
                               ("has no c (got one)" if self.cell == "gru" else "needs c (got None)"))
        expected = (L, batch, H)
        for name, t in (("h", h), ("c", c)):
            if t is not None and t.shape != expected:
                raise RuntimeError(f"Expected state.{name} size {expected}, got {list(t.shape)}")
        if self.input_feeding and state.feed is not None and state.feed.shape != (batch, H):
            raise RuntimeError(f"Expected state.feed size {(batch, H)}, got {list(state.feed.shape)}")

    # ---------------------------------------------------------------------------------------------- state

    def zero_state(self, batch: int, like: Tensor) -> DecoderState:
        z = like.new_zeros(self.num_layers, batch, self.hidden_size)
        return DecoderState(z, z.clone() if self.cell == "lstm" else None,
                            like.new_zeros(batch, self.hidden_size) if self.input_feeding else None)

    def init_state(self, encoder_final, bridge: Optional[str] = None, batch_size: Optional[int] = None,
                   like: Optional[Tensor] = None) -> DecoderState:
        """The first state from an encoder's final (h_n, c_n) [L * D, B, He] (layer-major, direction inner), or
        its h_n alone (an nn.GRU / FusedGRU encoder; a GRU decoder uses only h_n of either).

        bridge: "concat" (per layer cat(forward, reverse): needs D * He == H) or "linear" (this decoder's
        bridge; needs bridge="linear" at construction); default: the constructor's choice. Zeros when
        encoder_final is None (then batch_size and like, a tensor giving dtype/device, are needed).
        An LSTM decoder given h_n alone starts its c from zeros.
        """
        if encoder_final is None:
            if batch_size is None or like is None:
                raise ValueError("init_state(None) needs batch_size and like= (a tensor giving dtype and device)")
            return self.zero_state(batch_size, like)
        bridge = self.bridge_kind if bridge is None else bridge
        if bridge not in BRIDGES:
            raise ValueError(f"unknown bridge {bridge!r}; expected one of {BRIDGES}")
        h_n, c_n = (encoder_final, None) if isinstance(encoder_final, Tensor) else encoder_final
        if c_n is None or self.cell == "gru":
            c_n = torch.zeros_like(h_n)  # a GRU encoder has no cell state; a GRU decoder drops it below
        if h_n.dim() != 3 or c_n.dim() != 3 or h_n.shape != c_n.shape:
            raise ValueError(f"init_state: expected (h_n, c_n) of equal 3-D shape [L * D, B, He], got "
                             f"{tuple(h_n.shape)} and {tuple(c_n.shape)}")
        LD, B, He = h_n.shape
        if LD % self.num_layers:
            raise ValueError(f"init_state: encoder state has {LD} layer-directions, not a multiple of the "
                             f"decoder's num_layers {self.num_layers}")
        D = LD // self.num_layers
        # [L * D, B, He] -> [L, B, D * He]: per layer, directions side by side (OpenNMT: h[0::2], h[1::2]).
        h = h_n.view(self.num_layers, D, B, He).permute(0, 2, 1, 3).reshape(self.num_layers, B, D * He)
        c = c_n.view(self.num_layers, D, B, He).permute(0, 2, 1, 3).reshape(self.num_layers, B, D * He)
        if bridge == "linear":
            if self.bridge is None:
                raise ValueError("init_state(bridge='linear') needs a decoder built with bridge='linear'")
            h, c = self.bridge(h, c)
        elif D * He != self.hidden_size:
            raise ValueError(f"init_state: bridge 'concat' needs directions * encoder hidden == hidden_size. "
                             f"Expected {self.hidden_size}, got {D} * {He} = {D * He}")
        feed = h_n.new_zeros(B, self.hidden_size) if self.input_feeding else None
        return DecoderState(h.contiguous(), c.contiguous() if self.cell == "lstm" else None, feed)

    # ---------------------------------------------------------------------------------------------- math

    def _attend(self, query: Tensor, memory: Tensor, memory_lengths: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """Attention of query [B, T, H] -> (context [B, T, M], weights [B, T, S]): the fused attention op on
        this decoder's backend (differentiable context; the weights carry no gradient)."""
        context, weights = fused_attention(query, memory, memory_lengths, self.attn.kind, self.attn.params(),
                                           return_weights=True, backend=self._ops_backend)
        return context, weights

    def _step_composed(self, x: Tensor, state: DecoderState, memory: Tensor,
                       memory_lengths: Optional[Tensor]) -> tuple[Tensor, DecoderState, Tensor]:
        inp = torch.cat([x, state.feed], dim=1) if self.input_feeding else x
        hs, cs = [], []
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self._lstm_weights()):
            if self.cell == "gru":  # nn.GRU's cell: b_hn inside the reset product
                gi_r, gi_z, gi_n = F.linear(inp, w_ih, b_ih).chunk(3, dim=1)
                gh_r, gh_z, gh_n = F.linear(state.h[layer], w_hh, b_hh).chunk(3, dim=1)
                r, z = torch.sigmoid(gi_r + gh_r), torch.sigmoid(gi_z + gh_z)
                n = torch.tanh(gi_n + r * gh_n)
                h = n + z * (state.h[layer] - n)
            else:
                gates = F.linear(inp, w_ih, b_ih) + F.linear(state.h[layer], w_hh, b_hh)
                i, f, g, o = gates.chunk(4, dim=1)
                c = torch.sigmoid(f) * state.c[layer] + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                cs.append(c)
            hs.append(h)
            inp = h
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                inp = F.dropout(inp, p=self.dropout, training=True)
        context, weights = self._attend(hs[-1].unsqueeze(1), memory, memory_lengths)
        out = torch.tanh(self.linear_out(torch.cat([context.squeeze(1), hs[-1]], dim=1)))
        return out, DecoderState(torch.stack(hs), torch.stack(cs) if cs else None,
                                 out if self.input_feeding else None), weights.squeeze(1)

    def _needs_graph(self, *tensors: Optional[Tensor]) -> bool:
        if not torch.is_grad_enabled():
            return False
        return any(p.requires_grad for p in self.parameters()) or any(
            t is not None and t.requires_grad for t in tensors)

    # ---------------------------------------------------------------------------------------------- API

    def step(self, input_t: Tensor, state: Optional[DecoderState], memory: Tensor,
             memory_lengths: Optional[Tensor] = None, keys=None) -> tuple[Tensor, DecoderState, Tensor]:
        """One decoding step -> (h̃ [B, H], new state, attention weights [B, S]).

        A None state starts from zeros (h, c and the input feed), as nn.LSTMCell does without a state.
        Under no grad (and no training-time dropout) this is one fused op call for an LSTM decoder (a GRU
        decoder runs the composition: its cell in torch ops, the fused attention op). Without `keys` (from
        precompute_keys(memory)) the keys are computed on the first step over a memory tensor and reused
        while the same, unmodified tensor comes back (see _keys_for).
        """
        self._check_input(input_t, 2)
        B = input_t.shape[0]
        self._check_memory(memory, memory_lengths, B)
        state = self.zero_state(B, input_t) if state is None else state
        self._check_state(state, B)
        if self.input_feeding and state.feed is None:
            state = DecoderState(state.h, state.c, input_t.new_zeros(B, self.hidden_size))
        dropout_active = self.dropout > 0 and self.training and self.num_layers > 1
        if self.cell == "gru" or dropout_active or self._needs_graph(input_t, state.h, state.c, state.feed, memory):
            return self._step_composed(input_t, state, memory, memory_lengths)
        weights = self._fused_weights()
        if keys is None:
            keys = self._keys_for(memory)
        out, h, c, attn = fused_decoder_step(input_t, state.feed if self.input_feeding else None, state.h,
                                                state.c, weights, memory, memory_lengths, keys,
                                                backend=self._ops_backend)
        return out, DecoderState(h, c, out if self.input_feeding else None), attn

    def forward(self, inputs: Tensor, memory: Tensor, memory_lengths: Optional[Tensor] = None,
                state: Optional[DecoderState] = None, return_attention: bool = False
                ) -> tuple[Tensor, Optional[Tensor], DecoderState]:
        """Teacher forcing over inputs [B, T, E] -> (h̃ [B, T, H], attention [B, T, S] or None, final state)."""
        self._check_input(inputs, 3)
        B, T, _ = inputs.shape
        self._check_memory(memory, memory_lengths, B)
        state = self.zero_state(B, inputs) if state is None else state
        self._check_state(state, B)
        if self.input_feeding:
            if state.feed is None:
                state = DecoderState(state.h, state.c, inputs.new_zeros(B, self.hidden_size))
            outs, attns = [], []
            for t in range(T):
                out, state, attn = self._step_composed(inputs[:, t], state, memory, memory_lengths)
                outs.append(out)
                attns.append(attn)
            outputs = torch.stack(outs, 1) if T else inputs.new_zeros(B, 0, self.hidden_size)
            attention = torch.stack(attns, 1) if T else inputs.new_zeros(B, 0, memory.shape[1])
            return outputs, (attention if return_attention else None), state
        # No feeding: the recurrent stack over all T at once (fused op), attention batched over T, then combine.
        if self.cell == "gru":
            y, h = self.gru(inputs, state.h)
            c = None
        else:
            y, (h, c) = self.lstm(inputs, (state.h, state.c))  # y [B, T, H]
        context, attention = self._attend(y, memory, memory_lengths)  # [B, T, M], [B, T, S]
        outputs = torch.tanh(self.linear_out(torch.cat([context, y], dim=2)))
        return outputs, (attention if return_attention else None), DecoderState(h, c, None)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, memory_size={self.memory_size}, "
                f"num_layers={self.num_layers}, attention={self.attention!r}, input_feeding={self.input_feeding}, "
                f"dropout={self.dropout}, bridge={self.bridge_kind!r}, backend={self.backend!r}"
                + (f", cell={self.cell!r}" if self.cell != "lstm" else ""))
