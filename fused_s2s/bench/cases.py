"""The benchmark grid: which shapes, passes, dtypes and implementations the suite and the report measure.

A case is one input configuration (cell, shape, pass, dtype, fixed or variable lengths). In each case the
torch module of the cell (nn.LSTM, nn.GRU, nn.RNN) and every implementation that applies are timed
interleaved, so each gets a ratio against the torch module measured in the same run. Case ids are stable
strings: the regression gate matches rows by them (LSTM ids carry no cell prefix, as before the GRU/RNN rows).
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Iterable, Optional

import torch

NN_LSTM = "nn.LSTM"
REFERENCE = "reference"
# cell -> (the torch module it is measured against, gates per unit)
CELLS = {"lstm": (NN_LSTM, 4), "gru": ("nn.GRU", 3), "rnn_tanh": ("nn.RNN", 1)}

GRIDS = ("full", "quick", "smoke")


@dataclass(frozen=True)
class Case:
    """One input configuration. The input size equals the hidden size (I = H), sequence-first layout."""

    batch: int
    seq_len: int
    hidden: int
    layers: int = 1
    bidirectional: bool = False
    varlen: bool = False  # lengths uniform in [T/4, T]: FusedLSTM lengths= vs nn.LSTM PackedSequence
    backward: bool = False  # False: forward under no_grad; True: forward + backward
    dtype: str = "float32"
    reference: bool = False  # also time the plain-PyTorch reference (slow: small cases only)
    cell: str = "lstm"  # a key of CELLS

    @property
    def id(self) -> str:
        """Stable id, e.g. 'fwd+bwd B16 T50 H256 L2 bi varlen float32' or 'gru fwd B16 T50 H256 L1 uni float32'."""
        parts = [] if self.cell == "lstm" else [self.cell.split("_")[0]]
        parts += ["fwd+bwd" if self.backward else "fwd", f"B{self.batch}", f"T{self.seq_len}",
                 f"H{self.hidden}", f"L{self.layers}", "bi" if self.bidirectional else "uni"]
        if self.varlen:
            parts.append("varlen")
        parts.append(self.dtype)
        return " ".join(parts)

    @property
    def shape(self) -> str:
        """The shape part of the id (no pass, no dtype): the plot's x axis."""
        s = f"B{self.batch} T{self.seq_len} H{self.hidden} L{self.layers}{' bi' if self.bidirectional else ''}"
        s = ("" if self.cell == "lstm" else f"{self.cell.split('_')[0]} ") + s
        return s + (" varlen" if self.varlen else "")

    @property
    def baseline(self) -> str:
        """The torch module this case is measured against."""
        return CELLS[self.cell][0]

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def flops(self) -> float:
        """Matmul FLOPs of the pass (forward 2·G·H·(I+H)·B·T per layer and direction, G gates; backward twice
        that)."""
        d = 2 if self.bidirectional else 1
        per_layer = [2 * CELLS[self.cell][1] * self.hidden * (self.hidden * (d if k else 1) + self.hidden) * self.batch * self.seq_len
                     for k in range(self.layers)]
        return sum(per_layer) * d * (3 if self.backward else 1)

    def as_params(self) -> dict[str, object]:
        return asdict(self)


def _both_passes(cases: Iterable[Case]) -> list[Case]:
    out = []
    for c in cases:
        for backward in (False, True):
            out.append(Case(**{**asdict(c), "backward": backward}))
    return out


def _with_dtypes(cases: Iterable[Case], dtypes: Iterable[str]) -> list[Case]:
    return [Case(**{**asdict(c), "dtype": dt}) for dt in dtypes for c in cases]


def _reference_ok(c: Case) -> bool:
    # The reference is a Python loop over steps: only where one call stays well under a second.
    return (c.batch <= 16 and c.seq_len <= 50 and c.hidden <= 256 and c.layers == 1 and not c.bidirectional
            and c.cell == "lstm")


def default_dtypes(device: torch.device) -> list[str]:
    """fp32 everywhere; on CUDA also the 16-bit types cuDNN and the Triton kernels take."""
    if device.type == "cuda":
        out = ["float32", "float16"]
        if torch.cuda.is_bf16_supported():
            out.append("bfloat16")
        return out
    return ["float32"]


def default_cells(device: torch.device) -> list[str]:
    """The cells measured on `device`: every cell (on CUDA the GRU/RNN rows time their Triton kernels)."""
    return list(CELLS)


def _cell_shapes(name: str) -> list[Case]:
    """The GRU and Elman RNN shapes of a grid (fewer than the LSTM's: one layer, H256/512)."""
    if name == "full":
        shapes = [Case(b, t, h, cell=c) for c in ("gru", "rnn_tanh") for b, t, h in
                  itertools.product((1, 16, 64), (50, 200), (256, 512))]
        shapes += [Case(b, 50, 256, varlen=True, cell=c) for c in ("gru", "rnn_tanh") for b in (16, 64)]
        return shapes + [Case(16, 50, 256, 2, True, cell=c) for c in ("gru", "rnn_tanh")]
    if name == "quick":
        return [Case(16, 50, 256, cell="gru"), Case(64, 50, 256, cell="gru"),
                Case(16, 50, 256, varlen=True, cell="gru"), Case(16, 50, 256, cell="rnn_tanh"),
                Case(64, 50, 256, cell="rnn_tanh")]
    return [Case(2, 8, 32, cell="gru"), Case(3, 8, 32, 2, True, varlen=True, cell="rnn_tanh")]


def grid(name: str, dtypes: list[str], reference: bool = True, cells: Iterable[str] = ("lstm",)) -> list[Case]:
    """The cases of grid `name` ('full', 'quick' or the test-sized 'smoke') in each of `dtypes`, for the LSTM
    and whichever other `cells` are given; with `reference`, the small fp32 cases also time the plain-PyTorch
    reference."""
    if name == "full":
        shapes = [Case(b, t, h) for b, t, h in itertools.product((1, 16, 64), (50, 200), (256, 512, 1024))]
        # Stacks and directions, and variable lengths, at a middle batch (the product of every axis with
        # every other would take hours on a CPU).
        shapes += [Case(16, t, h, layers, bi) for t in (50, 200) for h in (256, 512)
                   for layers, bi in ((2, False), (1, True), (2, True))]
        shapes += [Case(b, t, h, 2, True, varlen=True) for b in (16, 64) for t in (50, 200) for h in (256, 512)]
        shapes += [Case(b, 50, 256, varlen=True) for b in (16, 64)]
    elif name == "quick":
        shapes = [Case(1, 50, 256), Case(16, 50, 256), Case(64, 50, 256), Case(16, 50, 512),
                  Case(16, 50, 256, 2, True), Case(16, 50, 256, varlen=True), Case(16, 50, 256, 2, True, varlen=True)]
    elif name == "smoke":
        shapes = [Case(2, 8, 32), Case(3, 8, 32, 2, True, varlen=True)]
    else:
        raise ValueError(f"grid must be one of {GRIDS}, got {name!r}")
    shapes = [c for c in shapes if "lstm" in cells] + [c for c in _cell_shapes(name) if c.cell in cells]
    cases = _with_dtypes(_both_passes(shapes), dtypes)
    if "bfloat16" not in dtypes and "lstm" in cells and name != "smoke":
        # bf16 rows even where bf16 is not a grid dtype (the CPU's): the LSTM against nn.LSTM in bf16 at the
        # shapes issue 14 names (B16, B64, H512), both passes, so the gate watches them too.
        bf16 = [Case(16, 50, 256), Case(64, 50, 256), Case(16, 50, 512)]
        cases += _with_dtypes(_both_passes(bf16), ["bfloat16"])
    return [Case(**{**asdict(c), "reference": reference and _reference_ok(c) and c.dtype == "float32"})
            for c in cases]


def matches(case_id: str, pattern: Optional[str]) -> bool:
    """True if the id contains every comma-separated part of pattern (case-insensitive); no pattern: True."""
    parts = [p.strip().lower() for p in (pattern or "").split(",") if p.strip()]
    return all(p in case_id.lower() for p in parts)


def select(cases: list[Case], pattern: Optional[str]) -> list[Case]:
    """Cases whose id contains every comma-separated part of pattern (case-insensitive)."""
    return [c for c in cases if matches(c.id, pattern)]
