"""Argument checks of FusedLSTM, FusedGRU and FusedRNN, in nn.LSTM's / nn.GRU's / nn.RNN's words where those
have words for the error.

Kept apart from fused_s2s/nn/recurrent.py so the modules read as the computation. Every message that the
torch modules also raise is copied from torch/nn/modules/rnn.py (torch 2.13) and tested against their own
str(e) in tests/test_bad_input.py and tests/test_cells.py; the rest (lengths, devices, hx dtype,
PackedSequence hx) are ours and name the bad value. `mode` is nn.RNNBase's: "LSTM", "GRU", "RNN_TANH" or
"RNN_RELU".
"""
from __future__ import annotations

import numbers
import warnings
import torch
from torch import Tensor


def check_constructor_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size) -> None:
    """nn.RNNBase.__init__'s checks, same order, same exception types and messages."""
    if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an element being zeroed"
        )
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
            f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
            stacklevel=4,  # check_constructor_args <- FusedRecurrentBase <- the module <- the caller
        )
    if not isinstance(bias, bool):
        raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
    if not isinstance(batch_first, bool):
        raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
    if not isinstance(input_size, int):
        raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
    if input_size <= 0:
        raise ValueError("input_size must be greater than zero")
    if not isinstance(hidden_size, int):
        raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
    if hidden_size <= 0:
        raise ValueError("hidden_size must be greater than zero")
    if num_layers <= 0:
        raise ValueError("num_layers must be greater than zero")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError("proj_size has to be smaller than hidden_size")


def module_name(mode: str) -> str:
    """"LSTM", "GRU" or "RNN": how the torch module names itself in its messages."""
    return "RNN" if mode.startswith("RNN") else mode


def check_input_dims(input: Tensor, mode: str) -> None:
    """The forward's first check: 2-D (unbatched) or 3-D input, in the torch module's words."""
    if input.dim() not in (2, 3):
        tensor = " tensor" if module_name(mode) == "RNN" else ""  # nn.RNN's message says "3D tensor instead"
        raise ValueError(f"{module_name(mode)}: Expected input to be 2D or 3D, got {input.dim()}D{tensor} instead")


def check_input(input: Tensor, weight: Tensor, input_size: int, expected_dim: int, mode: str = "LSTM") -> None:
    """nn.RNNBase.check_input (dtype, number of dims, feature size), plus a device check of ours."""
    if input.dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
        raise ValueError(
            f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight.dtype}). "
            f"Convert input: input.to({weight.dtype}), or convert model: model.to({input.dtype})"
        )
    if input.dim() != expected_dim:
        raise RuntimeError(f"input must have {expected_dim} dimensions, got {input.dim()}")
    if input_size != input.size(-1):
        raise RuntimeError(
            f"input.size(-1) must be equal to input_size. Expected {input_size}, got {input.size(-1)}"
        )
    if input.device != weight.device:
        raise RuntimeError(
            f"Expected input and the {module_name(mode)}'s parameters on the same device, but input is on {input.device} "
            f"and the parameters are on {weight.device}. Move the input with input.to({str(weight.device)!r}) "
            f"or the model with model.to({str(input.device)!r})"
        )


def check_hx_dims(hx: tuple[Tensor, ...], is_batched: bool, packed: bool = False) -> None:
    """The forward's state dimension check: nn.LSTM's for (hx, cx), nn.GRU's / nn.RNN's for (hx,) (ours for
    PackedSequence, where the torch modules have none)."""
    want = 3 if is_batched else 2
    if any(t.dim() != want for t in hx):
        if packed:
            kind = "PackedSequence input"
        else:
            kind = "batched 3-D input" if is_batched else "unbatched 2-D input"
        if len(hx) == 1:
            raise RuntimeError(f"For {kind}, hx should also be {want}-D but got {hx[0].dim()}-D tensor")
        raise RuntimeError(
            f"For {kind}, hx and cx should also be {want}-D but got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
        )


def check_hidden(hx: tuple[Tensor, ...], input: Tensor, expected: tuple[tuple[int, int, int], ...]) -> None:
    """check_forward_args' state shape checks (nn.LSTM: hidden[0] and hidden[1]; nn.GRU / nn.RNN: hidden),
    then dtype/device checks of ours."""
    for i, (t, shape) in enumerate(zip(hx, expected)):
        if t.size() != shape:
            which = f"hidden[{i}]" if len(hx) > 1 else "hidden"
            raise RuntimeError(f"Expected {which} size {shape}, got {list(t.size())}")
    for i, t in enumerate(hx):
        if t.dtype != input.dtype:
            raise RuntimeError(f"Expected hidden[{i}] to have the input's dtype {input.dtype}, got {t.dtype}")
        if t.device != input.device:
            raise RuntimeError(
                f"Expected hidden[{i}] on the input's device {input.device}, but it is on {t.device}"
            )


def check_lengths(lengths, batch: int, steps: int) -> Tensor:
    """Validate per-sequence `lengths` for padded input [T=steps, B=batch]; returns them as CPU int64 [B].

    Lists and tuples of ints are accepted like pack_padded_sequence accepts them. The value checks read
    the data, so they run in eager mode only; under torch.compile the op's own contract applies.
    """
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1:
        raise ValueError(
            f"lengths must be a 1-D tensor with one length per sequence, got a {lengths.dim()}-D tensor "
            f"of shape {list(lengths.shape)}"
        )
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
    if lengths.numel() != batch:
        raise ValueError(
            f"lengths must have one entry per sequence: the batch has {batch} sequences, got {lengths.numel()} "
            "lengths"
        )
    lengths = lengths.to(device="cpu", dtype=torch.int64)
    if batch > 0 and not torch.compiler.is_compiling():
        bad = ((lengths < 1) | (lengths > steps)).nonzero()
        if bad.numel():
            i = int(bad[0, 0])
            raise ValueError(
                f"lengths must be in [1, {steps}] (the padded input has {steps} time steps), got "
                f"lengths[{i}] = {int(lengths[i])}"
            )
    return lengths


def expected_state_sizes(num_layers: int, num_directions: int, batch: int, hidden_size: int,
                         proj_size: int, has_cell: bool = True) -> tuple[tuple[int, int, int], ...]:
    """(h0 shape, c0 shape) as nn.LSTM's get_expected_hidden_size / get_expected_cell_size; (h0 shape,) for a
    cell without a cell state (GRU, RNN)."""
    h_out = proj_size if proj_size > 0 else hidden_size
    h = (num_layers * num_directions, batch, h_out)
    return (h, (num_layers * num_directions, batch, hidden_size)) if has_cell else (h,)

