"""FusedLSTM: a drop-in torch.nn.LSTM whose layers run on fused_s2s.ops.lstm_layer.

The module keeps nn.LSTM's whole contract: constructor arguments and errors, parameter names, shapes,
registration order and initialisation (so state_dicts load both ways), batched / unbatched / PackedSequence
input, hx permutation for unsorted PackedSequences, output layouts and error messages. It adds:

* ``backend=`` (constructor keyword): which implementation of the one-layer op to use, see
  fused_s2s.ops.lstm_layer ("auto" picks by device; FUSED_S2S_BACKEND overrides "auto").
* ``lengths=`` (forward keyword): per-sequence lengths for padded batch input, instead of packing. Output
  padding positions are zero and h_n / c_n are each sequence's state after its last valid step: the same
  numbers as pack_padded_sequence -> nn.LSTM -> pad_packed_sequence(total_length=T), without the packing.

Layers and directions are composed here, in Python: layer-major, direction inner; layer k > 0 reads
concat(forward y, reverse y) on the feature dim; dropout between layers in training mode only; h_n / c_n
index = layer * num_directions + direction.
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

from fused_s2s.nn import lstm_checks as checks
from fused_s2s.ops.lstm import BACKENDS, lstm_layer

__all__ = ["FusedLSTM", "FusedLSTMEncoder"]

_State = tuple[Tensor, Tensor]


class FusedLSTM(nn.Module):
    r"""Multi-layer LSTM with nn.LSTM's interface, running on fused_s2s's one-layer kernels.

    Args are those of :class:`torch.nn.LSTM` (input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None), plus the
    keyword ``backend`` ("auto", "cpu", "reference", ...; see :func:`fused_s2s.ops.lstm_layer`).

    ``forward(input, hx=None, lengths=None)`` returns ``output, (h_n, c_n)`` exactly as nn.LSTM does.
    ``lengths`` (1-D integer tensor, one entry per sequence, each in [1, T]) marks the valid prefix of each
    sequence of a padded (not packed) batch; it cannot be combined with a PackedSequence.
    """

    __constants__ = ["mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                     "bidirectional", "proj_size", "backend"]
    __jit_unused_properties__ = ["all_weights"]

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, backend: str = "auto") -> None:
        super().__init__()
        checks.check_constructor_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        factory_kwargs = {"device": device, "dtype": dtype}
        self.mode = "LSTM"
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
        gate_size = 4 * hidden_size
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        # Per (layer, direction): the names of (w_ih, w_hh, b_ih, b_hh, w_hr), None where absent.
        self._op_weight_names: list[tuple[str, str, Optional[str], Optional[str], Optional[str]]] = []
        for layer in range(num_layers):
            for direction in range(num_directions):
                layer_input_size = input_size if layer == 0 else real_hidden_size * num_directions
                suffix = "_reverse" if direction == 1 else ""
                # Created and registered in nn.LSTM's order, so the same seed gives the same initial weights.
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
    # nn.LSTM compatibility helpers

    def reset_parameters(self) -> None:
        """U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every parameter, as nn.LSTM."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """No-op, for code written for nn.LSTM (there it packs weights for cuDNN)."""

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

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, backend: str = "auto") -> "FusedLSTM":
        """A FusedLSTM with a copy of `lstm`'s configuration, weights, device, dtype and training mode.

        The weights are copied (the two modules are independent afterwards); requires_grad is kept per
        parameter. fused_s2s.replace_lstm instead moves the very Parameter objects into the new module.
        """
        return _from_lstm(cls, lstm, backend, share_parameters=False)

    # ----------------------------------------------------------------------------------------------------
    # forward

    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[_State] = None,
                lengths: Optional[Tensor] = None):
        num_directions = 2 if self.bidirectional else 1
        weight0 = getattr(self, self._flat_weights_names[0])

        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths= cannot be combined with a PackedSequence input, which carries its "
                                 "own lengths; pass either a PackedSequence or a padded tensor with lengths=")
            data, batch_sizes, sorted_indices, unsorted_indices = input
            checks.check_input(data, weight0, self.input_size, expected_dim=2)
            batch = int(batch_sizes[0])
            expected_h, expected_c = checks.expected_state_sizes(
                self.num_layers, num_directions, batch, self.hidden_size, self.proj_size)
            if hx is not None:
                checks.check_hx_dims(hx, is_batched=True, packed=True)
                checks.check_hidden(hx, data, expected_h, expected_c)
                # hx is given in the caller's batch order; the padded batch below is in sorted order.
                if sorted_indices is not None:
                    hx = (hx[0].index_select(1, sorted_indices), hx[1].index_select(1, sorted_indices))
            data, hx = self._autocast_inputs(data, hx, weight0)
            # One copy in: packed data -> time-major padded [T, B, I] in sorted order (no unsort: we pass
            # a PackedSequence without indices), with sorted CPU int64 lengths for the op's masking.
            x, seq_lengths = pad_packed_sequence(PackedSequence(data, batch_sizes), batch_first=False)
            h0, c0 = self._initial_state(hx, x, expected_h, expected_c)
            y, h_n, c_n = self._run(x, h0, c0, seq_lengths)
            # One copy out: padded [T, B, D*P] -> packed rows, batch_sizes identical to the input's.
            out_data = pack_padded_sequence(y, seq_lengths, batch_first=False, enforce_sorted=True).data
            output = PackedSequence(out_data, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
            return output, (h_n, c_n)

        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        batch = input.size(batch_dim)
        expected_h, expected_c = checks.expected_state_sizes(
            self.num_layers, num_directions, batch, self.hidden_size, self.proj_size)
        if hx is not None:
            checks.check_hx_dims(hx, is_batched)
            if not is_batched:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            checks.check_input(input, weight0, self.input_size, expected_dim=3)
            checks.check_hidden(hx, input, expected_h, expected_c)
        else:
            checks.check_input(input, weight0, self.input_size, expected_dim=3)
        steps = input.size(1 - batch_dim)
        if steps == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        if lengths is not None:
            lengths = checks.check_lengths(lengths, batch, steps)
        input, hx = self._autocast_inputs(input, hx, weight0)

        # batch_first: one transposing copy in; the output goes back as a view, like nn.LSTM's.
        x = input.transpose(0, 1).contiguous() if self.batch_first else input.contiguous()
        h0, c0 = self._initial_state(hx, x, expected_h, expected_c)
        y, h_n, c_n = self._run(x, h0, c0, lengths)
        if self.batch_first:
            y = y.transpose(0, 1)
        if not is_batched:
            y = y.squeeze(batch_dim)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return y, (h_n, c_n)

    def _autocast_inputs(self, x: Tensor, hx: Optional[_State], weight0: Tensor):
        """The dtype the stack runs in, and x / hx cast to it.

        Without autocast that is the weights' dtype (the checks made sure x has it). Under autocast for x's
        device it is autocast's dtype, for x, hx and the weights, as nn.LSTM does (lstm is on autocast's
        lower-precision list for CPU and CUDA).
        """
        dtype = weight0.dtype
        if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        if x.dtype != dtype:
            x = x.to(dtype)
        if hx is not None and (hx[0].dtype != dtype or hx[1].dtype != dtype):
            hx = (hx[0].to(dtype), hx[1].to(dtype))
        return x, hx

    @staticmethod
    def _initial_state(hx: Optional[_State], x: Tensor, expected_h, expected_c) -> _State:
        if hx is None:
            return x.new_zeros(expected_h), x.new_zeros(expected_c)
        return hx

    def _run(self, x: Tensor, h0: Tensor, c0: Tensor, lengths: Optional[Tensor]):
        """The stack on time-major x [T, B, I] -> (y [T, B, D*P], h_n [L*D, B, P], c_n [L*D, B, H])."""
        num_directions = 2 if self.bidirectional else 1
        layer_input = x
        h_n: list[Tensor] = []
        c_n: list[Tensor] = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                k = layer * num_directions + direction
                w_ih, w_hh, b_ih, b_hh, w_hr = (None if name is None else getattr(self, name).to(x.dtype)
                                                for name in self._op_weight_names[k])  # .to: autocast
                y, h, c = lstm_layer(layer_input, h0[k].contiguous(), c0[k].contiguous(), w_ih, w_hh, b_ih, b_hh,
                                     w_hr, lengths, direction == 1, backend=self.backend)
                outputs.append(y)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, p=self.dropout, training=True)
        return layer_input, torch.stack(h_n, 0), torch.stack(c_n, 0)


class FusedLSTMEncoder(FusedLSTM):
    """The seq2seq encoder: exactly FusedLSTM (same arguments, parameters and outputs).

    A separate name so encoder code reads as such, e.g. OpenNMT-style
    ``FusedLSTMEncoder(emb, hidden, num_layers, bidirectional=True, batch_first=True)`` fed with
    ``pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)``, or with the padded
    batch and ``lengths=`` directly (no packing, same numbers).
    """


def _from_lstm(cls, lstm: nn.LSTM, backend: str, share_parameters: bool) -> FusedLSTM:
    """Build `cls` with `lstm`'s configuration on the meta device, then give it `lstm`'s parameters."""
    if not isinstance(lstm, nn.LSTM):
        raise TypeError(f"expected a torch.nn.LSTM, got {type(lstm).__name__}")
    with warnings.catch_warnings():  # nn.LSTM already warned about dropout with num_layers == 1
        warnings.simplefilter("ignore")
        fused = cls(lstm.input_size, lstm.hidden_size, num_layers=lstm.num_layers, bias=lstm.bias,
                    batch_first=lstm.batch_first, dropout=lstm.dropout, bidirectional=lstm.bidirectional,
                    proj_size=lstm.proj_size, device="meta", backend=backend)
    for name in fused._flat_weights_names:
        p = getattr(lstm, name)
        if not (share_parameters and isinstance(p, nn.Parameter)):
            p = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        setattr(fused, name, p)
    return fused.train(lstm.training)
