"""Seq2Seq: embeddings + FusedLSTMEncoder + FusedDecoder + generator, with a training loss and generate()."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fused_s2s.decoding import beam_search, greedy_decode
from fused_s2s.nn.cells import FusedGRU
from fused_s2s.nn.decoder import CELLS, DecoderState, FusedDecoder
from fused_s2s.nn.lstm import FusedLSTMEncoder

__all__ = ["Seq2Seq"]


class Seq2Seq(nn.Module):
    """An attention encoder-decoder (OpenNMT's RNN model) on fused_s2s's kernels.

    The encoder is a FusedLSTMEncoder (a FusedGRU with cell="gru"; bidirectional: hidden_size // 2 per
    direction, so the memory and the concatenated final state have hidden_size features); the decoder a
    FusedDecoder of the same cell initialised from the
    encoder's final state ("concat" bridge, or "linear"); the generator a Linear to the target vocabulary
    (tied to the target embedding when share_decoder_embeddings and emb_size == hidden_size).

    forward(src [B, S], src_lengths [B], tgt [B, T]) -> mean cross-entropy over non-pad target tokens, with
    teacher forcing: inputs tgt[:, :-1], targets tgt[:, 1:] (tgt starts with BOS).
    generate(src, src_lengths, max_length, beam_size=1, ...) -> (tokens [B, T'], lengths [B], scores [B]).
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, emb_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional_encoder: bool = True, attention: str = "general", input_feeding: bool = True,
                 dropout: float = 0.0, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2, bridge: str = "concat",
                 share_decoder_embeddings: bool = False, backend: str = "auto", cell: str = "lstm") -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; expected one of {CELLS}")
        directions = 2 if bidirectional_encoder else 1
        if hidden_size % directions:
            raise ValueError(f"hidden_size must be even with a bidirectional encoder, got {hidden_size}")
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.src_embedding = nn.Embedding(src_vocab, emb_size, padding_idx=pad_id)
        self.tgt_embedding = nn.Embedding(tgt_vocab, emb_size, padding_idx=pad_id)
        encoder_cls = FusedLSTMEncoder if cell == "lstm" else FusedGRU
        self.encoder = encoder_cls(emb_size, hidden_size // directions, num_layers, batch_first=True,
                                   dropout=dropout, bidirectional=bidirectional_encoder, backend=backend)
        self.decoder = FusedDecoder(emb_size, hidden_size, hidden_size, num_layers, attention=attention,
                                    input_feeding=input_feeding, dropout=dropout, backend=backend, bridge=bridge,
                                    encoder_hidden_size=hidden_size // directions, encoder_directions=directions,
                                    cell=cell)
        self.dropout = nn.Dropout(dropout)
        self.generator = nn.Linear(hidden_size, tgt_vocab)
        if share_decoder_embeddings:
            if emb_size != hidden_size:
                raise ValueError(f"share_decoder_embeddings needs emb_size == hidden_size, got {emb_size} and "
                                 f"{hidden_size}")
            self.generator.weight = self.tgt_embedding.weight

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor, DecoderState]:
        """-> (memory [B, S, H], memory_lengths [B] on memory's device, initial decoder state)."""
        if src.dim() != 2:
            raise ValueError(f"Seq2Seq: expected src [B, S] token ids, got {src.dim()}D")
        lengths = src_lengths.to(src.device)
        memory, final = self.encoder(self.dropout(self.src_embedding(src)), lengths=src_lengths)
        return memory, lengths, self.decoder.init_state(final)

    def forward(self, src: Tensor, src_lengths: Tensor, tgt: Tensor) -> Tensor:
        if tgt.dim() != 2 or tgt.shape[0] != src.shape[0]:
            raise ValueError(f"Seq2Seq: expected tgt [B, T] with B = {src.shape[0]}, got {tuple(tgt.shape)}")
        memory, lengths, state = self.encode(src, src_lengths)
        out, _, _ = self.decoder(self.dropout(self.tgt_embedding(tgt[:, :-1])), memory, lengths, state)
        logits = self.generator(self.dropout(out))  # [B, T-1, V]
        return F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=self.pad_id)

    def step_fn(self, memory: Tensor, memory_lengths: Tensor):
        """The decoding protocol's step_fn(tokens [N], state) -> (log_probs [N, V], state) over this memory."""
        keys = self.decoder.precompute_keys(memory)

        def step(tokens: Tensor, state: DecoderState):
            out, state, _ = self.decoder.step(self.tgt_embedding(tokens), state, memory, memory_lengths, keys=keys)
            return F.log_softmax(self.generator(out), dim=-1), state

        return step

    @torch.no_grad()
    def generate(self, src: Tensor, src_lengths: Tensor, max_length: int, beam_size: int = 1,
                 length_penalty: str = "none", alpha: float = 0.6) -> tuple[Tensor, Tensor, Tensor]:
        """Greedy (beam_size 1) or beam search -> (tokens [B, T'] without BOS, lengths [B], scores [B])."""
        memory, lengths, state = self.encode(src, src_lengths)
        B = src.shape[0]
        if beam_size == 1:
            return greedy_decode(self.step_fn(memory, lengths), state, B, self.bos_id, self.eos_id, max_length,
                                 pad_id=self.pad_id, device=src.device)
        rows = torch.arange(B, device=src.device).repeat_interleave(beam_size)
        memory, lengths, state = memory.index_select(0, rows), lengths.index_select(0, rows), state.index_select(rows)
        return beam_search(self.step_fn(memory, lengths), state, B, beam_size, self.bos_id, self.eos_id,
                           max_length, pad_id=self.pad_id, length_penalty_kind=length_penalty, alpha=alpha,
                           device=src.device)
