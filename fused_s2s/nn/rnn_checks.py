"""Argument checks of FusedLSTM, in nn.LSTM's words where nn.LSTM has words for the error.

Kept apart from fused_s2s/nn/lstm.py so the module reads as the computation. Every message that nn.LSTM
also raises is copied from torch/nn/modules/rnn.py (torch 2.13) and tested against nn.LSTM's own str(e) in
tests/test_bad_input.py; the rest (lengths, devices, hx dtype, PackedSequence hx) are ours and name the bad
value.
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
            stacklevel=3,
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


def check_input(input: Tensor, weight: Tensor, input_size: int, expected_dim: int) -> None:
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
            f"Expected input and the LSTM's parameters on the same device, but input is on {input.device} "
            f"and the parameters are on {weight.device}. Move the input with input.to({str(weight.device)!r}) "
            f"or the model with model.to({str(input.device)!r})"
        )


def check_hx_dims(hx: tuple[Tensor, Tensor], is_batched: bool, packed: bool = False) -> None:
    """nn.LSTM.forward's hx/cx dimension check (ours for PackedSequence, where nn.LSTM has none)."""
    want = 3 if is_batched else 2
    if hx[0].dim() != want or hx[1].dim() != want:
        if packed:
            kind = "PackedSequence input"
        else:
            kind = "batched 3-D input" if is_batched else "unbatched 2-D input"
        raise RuntimeError(
            f"For {kind}, hx and cx should also be {want}-D but got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
        )


def check_hidden(hx: tuple[Tensor, Tensor], input: Tensor, expected_h: tuple[int, int, int],
                 expected_c: tuple[int, int, int]) -> None:
    """nn.LSTM.check_forward_args' state shape checks, then dtype/device checks of ours."""
    if hx[0].size() != expected_h:
        raise RuntimeError(f"Expected hidden[0] size {expected_h}, got {list(hx[0].size())}")
    if hx[1].size() != expected_c:
        raise RuntimeError(f"Expected hidden[1] size {expected_c}, got {list(hx[1].size())}")
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
                         proj_size: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(h0 shape, c0 shape) as nn.LSTM's get_expected_hidden_size / get_expected_cell_size."""
    h_out = proj_size if proj_size > 0 else hidden_size
    return (num_layers * num_directions, batch, h_out), (num_layers * num_directions, batch, hidden_size)

