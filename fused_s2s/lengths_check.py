"""The range check of memory / sequence lengths, shared by every layer (it imports nothing of fused_s2s).

On CPU tensors the check reads the values and raises a clear error. On a GPU, reading them back would make the
host wait for the device at every decoding step, so the check is queued on the device instead
(torch._assert_async): a length out of range stops the program with a device-side assert naming the check.
Under torch.compile the values are unknown at trace time, so it is the queued check there too.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def check_lengths_in_range(lengths: Tensor, high: int, error: Callable[[int, int], Exception]) -> None:
    """Every value of `lengths` (an integer tensor) lies in [1, high]; error(lo, hi) builds the CPU error."""
    if lengths.numel() == 0:
        return
    if lengths.device.type == "cpu" and not torch.compiler.is_compiling():
        lo, hi = (int(v) for v in torch.aminmax(lengths))
        if lo < 1 or hi > high:
            raise error(lo, hi)
        return
    torch._assert_async(((lengths >= 1) & (lengths <= high)).all(), f"every length must be in [1, {high}]")
