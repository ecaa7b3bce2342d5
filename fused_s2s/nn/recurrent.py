"""The composer every fused recurrent module shares (FusedLSTM, FusedGRU, FusedRNN): nn.RNNBase's contract
around a one-layer, one-direction op.

It keeps the torch module's whole contract: constructor arguments and errors, parameter names, shapes,
registration order and initialisation (so state_dicts load both ways), batched / unbatched / PackedSequence
input, hx permutation for unsorted PackedSequences, output layouts and error messages. It adds:

* ``backend=`` (constructor keyword): which implementation of the one-layer op to use ("auto" picks by
  device; FUSED_S2S_BACKEND overrides "auto").
* ``lengths=`` (forward keyword): per-sequence lengths for padded batch input, instead of packing. Output
  padding positions are zero and the final state is each sequence's state after its last valid step: the same
  numbers as pack_padded_sequence -> module -> pad_packed_sequence(total_length=T), without the packing.

Layers and directions are composed here, in Python: layer-major, direction inner; layer k > 0 reads
concat(forward y, reverse y) on the feature dim; dropout between layers in training mode only; state index
= layer * num_directions + direction. A subclass gives only its cell: the gate count, whether it has a cell
state, and `_layer`, which runs one layer and direction on its op.

Internally the state is a tuple: (h, c) for the LSTM, (h,) for the others; `_pack_state`/`_unpack_state`
convert from and to what the torch module takes and returns.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fused_s2s.nn import rnn_checks as checks
from fused_s2s.ops.lstm import BACKENDS

__all__ = ["FusedRecurrentBase"]

# Gates per hidden unit, by nn.RNNBase's mode.
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
# torch 2.13's CPU autocast lists lstm, rnn_tanh and rnn_relu as lower-precision ops, not gru: nn.GRU runs in
# fp32 under CPU autocast, and so does FusedGRU.
_AUTOCAST_CPU_MODES = ("LSTM", "RNN_TANH", "RNN_RELU")
# (w_ih, w_hh, b_ih, b_hh, w_hr) names of one layer and direction; None where absent.
WeightNames = tuple[str, str, Optional[str], Optional[str], Optional[str]]


class FusedRecurrentBase(nn.Module):
    """A multi-layer recurrent module with nn.RNNBase's interface; subclasses give the cell (see the module
    docstring). Not used directly: take FusedLSTM, FusedGRU or FusedRNN."""

    __constants__ = ["mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                     "bidirectional", "proj_size", "backend"]
    __jit_unused_properties__ = ["all_weights"]

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, backend: str = "auto") -> None:
        super().__init__()
        checks.check_constructor_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        factory_kwargs = {"device": device, "dtype": dtype}
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.backend = backend

        num_directions = 2 if bidirectional else 1
        real_hidden_size = proj_size if proj_size > 0 else hidden_size
        gate_size = GATES[mode] * hidden_size
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        self._op_weight_names: list[WeightNames] = []
        for layer in range(num_layers):
            for direction in range(num_directions):
                layer_input_size = input_size if layer == 0 else real_hidden_size * num_directions
                suffix = "_reverse" if direction == 1 else ""
                # Created and registered in the torch module's order, so the same seed gives the same weights.
                shapes = {f"weight_ih_l{layer}{suffix}": (gate_size, layer_input_size),
                          f"weight_hh_l{layer}{suffix}": (gate_size, real_hidden_size)}
                if bias:
                    shapes[f"bias_ih_l{layer}{suffix}"] = (gate_size,)
                    shapes[f"bias_hh_l{layer}{suffix}"] = (gate_size,)
                if proj_size > 0:
                    shapes[f"weight_hr_l{layer}{suffix}"] = (proj_size, hidden_size)
                for name, shape in shapes.items():
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory_kwargs)))
                names = list(shapes)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
                self._op_weight_names.append((
                    f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}",
                    f"bias_ih_l{layer}{suffix}" if bias else None, f"bias_hh_l{layer}{suffix}" if bias else None,
                    f"weight_hr_l{layer}{suffix}" if proj_size > 0 else None))
        self.reset_parameters()

    # ----------------------------------------------------------------------------------------------------
    # What a cell gives

    @property
    def _has_cell(self) -> bool:
        """Whether the state is (h, c) rather than h alone."""
        return self.mode == "LSTM"

    def _layer(self, k: int, x: Tensor, state: tuple[Tensor, ...], weights: tuple[Optional[Tensor], ...],
               lengths: Optional[Tensor], reverse: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Layer-direction k (= layer * num_directions + direction): x [T, B, I], state (h0 [B, P], ...) ->
        y [T, B, P], final state."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------------
    # Compatibility helpers

    def reset_parameters(self) -> None:
        """U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every parameter, as the torch modules."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """No-op, for code written for the torch modules (there it packs weights for cuDNN)."""

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        if self.backend != "auto":
            s += ", backend={backend!r}"
        return s.format(**self.__dict__)

    # ----------------------------------------------------------------------------------------------------
    # forward

    def _pack_state(self, hx) -> Optional[tuple[Tensor, ...]]:
        """The caller's hx as the internal tuple."""
        if hx is None:
            return None
        return tuple(hx) if self._has_cell else (hx,)

    def _unpack_state(self, state: tuple[Tensor, ...]):
        """The internal tuple as the torch module returns it: (h_n, c_n) or h_n."""
        return (state[0], state[1]) if self._has_cell else state[0]

    def forward(self, input: Union[Tensor, PackedSequence], hx=None, lengths: Optional[Tensor] = None):
        num_directions = 2 if self.bidirectional else 1
        weight0 = getattr(self, self._flat_weights_names[0])
        state = self._pack_state(hx)

        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths= cannot be combined with a PackedSequence input, which carries its "
                                 "own lengths; pass either a PackedSequence or a padded tensor with lengths=")
            data, batch_sizes, sorted_indices, unsorted_indices = input
            checks.check_input(data, weight0, self.input_size, expected_dim=2, mode=self.mode)
            batch = int(batch_sizes[0])
            expected = checks.expected_state_sizes(self.num_layers, num_directions, batch, self.hidden_size,
                                                   self.proj_size, self._has_cell)
            if state is not None:
                checks.check_hx_dims(state, is_batched=True, packed=True)
                checks.check_hidden(state, data, expected)
                # hx is given in the caller's batch order; the padded batch below is in sorted order.
                if sorted_indices is not None:
                    state = tuple(t.index_select(1, sorted_indices) for t in state)
            data, state = self._autocast_inputs(data, state, weight0)
            # One copy in: packed data -> time-major padded [T, B, I] in sorted order (no unsort: we pass
            # a PackedSequence without indices), with sorted CPU int64 lengths for the op's masking.
            x, seq_lengths = pad_packed_sequence(PackedSequence(data, batch_sizes), batch_first=False)
            y, final = self._run(x, self._initial_state(state, x, expected), seq_lengths)
            # One copy out: padded [T, B, D*P] -> packed rows, batch_sizes identical to the input's.
            out_data = pack_padded_sequence(y, seq_lengths, batch_first=False, enforce_sorted=True).data
            output = PackedSequence(out_data, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                final = tuple(t.index_select(1, unsorted_indices) for t in final)
            return output, self._unpack_state(final)

        checks.check_input_dims(input, self.mode)
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        batch = input.size(batch_dim)
        expected = checks.expected_state_sizes(self.num_layers, num_directions, batch, self.hidden_size,
                                               self.proj_size, self._has_cell)
        if state is not None:
            checks.check_hx_dims(state, is_batched)
            if not is_batched:
                state = tuple(t.unsqueeze(1) for t in state)
            checks.check_input(input, weight0, self.input_size, expected_dim=3, mode=self.mode)
            checks.check_hidden(state, input, expected)
        else:
            checks.check_input(input, weight0, self.input_size, expected_dim=3, mode=self.mode)
        steps = input.size(1 - batch_dim)
        if steps == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        if lengths is not None:
            lengths = checks.check_lengths(lengths, batch, steps)
        input, state = self._autocast_inputs(input, state, weight0)

        # batch_first: one transposing copy in; the output goes back as a view, like the torch modules'.
        x = input.transpose(0, 1).contiguous() if self.batch_first else input.contiguous()
        y, final = self._run(x, self._initial_state(state, x, expected), lengths)
        if self.batch_first:
            y = y.transpose(0, 1)
        if not is_batched:
            y = y.squeeze(batch_dim)
            final = tuple(t.squeeze(1) for t in final)
        return y, self._unpack_state(final)

    def _autocast_inputs(self, x: Tensor, state: Optional[tuple[Tensor, ...]], weight0: Tensor):
        """x and the state cast to the dtype the stack runs in.

        Without autocast that is the weights' dtype (the checks made sure x has it). Under autocast for x's
        device it is autocast's dtype, for x, state and the weights, as the torch modules do: on CUDA every
        RNN (cuDNN's op is on autocast's lower-precision list), on the CPU those of _AUTOCAST_CPU_MODES.
        """
        dtype = weight0.dtype
        if x.is_floating_point() and torch.is_autocast_enabled(x.device.type) and (
                x.device.type != "cpu" or self.mode in _AUTOCAST_CPU_MODES):
            dtype = torch.get_autocast_dtype(x.device.type)
        if x.dtype != dtype:
            x = x.to(dtype)
        if state is not None and any(t.dtype != dtype for t in state):
            state = tuple(t.to(dtype) for t in state)
        return x, state

    @staticmethod
    def _initial_state(state: Optional[tuple[Tensor, ...]], x: Tensor, expected) -> tuple[Tensor, ...]:
        if state is None:
            return tuple(x.new_zeros(shape) for shape in expected)
        return state

    def _run(self, x: Tensor, state: tuple[Tensor, ...], lengths: Optional[Tensor]):
        """The stack on time-major x [T, B, I] -> (y [T, B, D*P], final state: each [L*D, B, ...])."""
        num_directions = 2 if self.bidirectional else 1
        layer_input = x
        finals: list[list[Tensor]] = [[] for _ in state]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                k = layer * num_directions + direction
                weights = tuple(None if name is None else getattr(self, name).to(x.dtype)  # .to: autocast
                                for name in self._op_weight_names[k])
                y, final = self._layer(k, layer_input, tuple(t[k].contiguous() for t in state), weights, lengths,
                                       direction == 1)
                outputs.append(y)
                for acc, t in zip(finals, final):
                    acc.append(t)
            layer_input = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, p=self.dropout, training=True)
        return layer_input, tuple(torch.stack(acc, 0) for acc in finals)


def from_native(cls, native: nn.Module, native_cls: type, backend: str, share_parameters: bool, **extra):
    """Build `cls` with `native`'s configuration (an nn.LSTM / nn.GRU / nn.RNN) on the meta device, then give
    it `native`'s parameters: the same Parameter objects with share_parameters, else copies."""
    if not isinstance(native, native_cls):
        raise TypeError(f"expected a torch.nn.{native_cls.__name__}, got {type(native).__name__}")
    with warnings.catch_warnings():  # the torch module already warned about dropout with num_layers == 1
        warnings.simplefilter("ignore")
        fused = cls(native.input_size, native.hidden_size, num_layers=native.num_layers, bias=native.bias,
                    batch_first=native.batch_first, dropout=native.dropout, bidirectional=native.bidirectional,
                    device="meta", backend=backend, **extra)
    for name in fused._flat_weights_names:
        p = getattr(native, name)
        if not (share_parameters and isinstance(p, nn.Parameter)):
            p = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        setattr(fused, name, p)
    return fused.train(native.training)
