"""The bridge from an encoder's final state to a decoder's initial state (OpenNMT's `bridge`)."""
from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Bridge", "BRIDGES"]

BRIDGES = ("concat", "linear")


class Bridge(nn.Module):
    """A learned map of per-layer encoder states [L, B, D * He] to decoder states [L, B, H]: one Linear for h,
    one for c, shared across layers."""

    def __init__(self, in_size: int, out_size: int, device=None, dtype=None) -> None:
        super().__init__()
        self.h = nn.Linear(in_size, out_size, device=device, dtype=dtype)
        self.c = nn.Linear(in_size, out_size, device=device, dtype=dtype)

    def forward(self, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        if h.shape[-1] != self.h.in_features:
            raise ValueError(f"bridge: encoder state size must be directions * encoder hidden. Expected "
                             f"{self.h.in_features}, got {h.shape[-1]}")
        return self.h(h), self.c(c)
