"""The benchmark grid: which shapes, passes, dtypes and implementations the suite and the report measure.

A case is one input configuration (shape, pass, dtype, fixed or variable lengths). In each case nn.LSTM and
every other implementation that applies are timed interleaved, so each gets a ratio against nn.LSTM
measured in the same run. Case ids are stable strings: the regression gate matches rows by them.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Iterable, Optional

import torch

NN_LSTM = "nn.LSTM"
REFERENCE = "reference"

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

    @property
    def id(self) -> str:
        """Stable id, e.g. 'fwd+bwd B16 T50 H256 L2 bi varlen float32'."""
        parts = ["fwd+bwd" if self.backward else "fwd", f"B{self.batch}", f"T{self.seq_len}",
                 f"H{self.hidden}", f"L{self.layers}", "bi" if self.bidirectional else "uni"]
        if self.varlen:
            parts.append("varlen")
        parts.append(self.dtype)
        return " ".join(parts)

    @property
    def shape(self) -> str:
        """The shape part of the id (no pass, no dtype): the plot's x axis."""
        s = f"B{self.batch} T{self.seq_len} H{self.hidden} L{self.layers}{' bi' if self.bidirectional else ''}"
        return s + (" varlen" if self.varlen else "")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def flops(self) -> float:
        """Matmul FLOPs of the pass (forward 2·4H·(I+H)·B·T per layer and direction; backward twice that)."""
        d = 2 if self.bidirectional else 1
        per_layer = [2 * 4 * self.hidden * (self.hidden * (d if k else 1) + self.hidden) * self.batch * self.seq_len
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
    return c.batch <= 16 and c.seq_len <= 50 and c.hidden <= 256 and c.layers == 1 and not c.bidirectional


def default_dtypes(device: torch.device) -> list[str]:
    """fp32 everywhere; on CUDA also the 16-bit types cuDNN and the Triton kernels take."""
    if device.type == "cuda":
        out = ["float32", "float16"]
        if torch.cuda.is_bf16_supported():
            out.append("bfloat16")
        return out
    return ["float32"]


def grid(name: str, dtypes: list[str], reference: bool = True) -> list[Case]:
    """The cases of grid `name` ('full', 'quick' or the test-sized 'smoke') in each of `dtypes`; with
    `reference`, the small fp32 cases also time the plain-PyTorch reference."""
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
    cases = _with_dtypes(_both_passes(shapes), dtypes)
    return [Case(**{**asdict(c), "reference": reference and _reference_ok(c) and c.dtype == "float32"})
            for c in cases]


def matches(case_id: str, pattern: Optional[str]) -> bool:
    """True if the id contains every comma-separated part of pattern (case-insensitive); no pattern: True."""
    parts = [p.strip().lower() for p in (pattern or "").split(",") if p.strip()]
    return all(p in case_id.lower() for p in parts)


def select(cases: list[Case], pattern: Optional[str]) -> list[Case]:
    """Cases whose id contains every comma-separated part of pattern (case-insensitive)."""
    return [c for c in cases if matches(c.id, pattern)]
