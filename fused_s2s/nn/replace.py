"""replace_lstm / replace_rnns: swap torch's recurrent modules inside a model for fused ones, in place."""
from __future__ import annotations

from torch import nn

from fused_s2s.nn.cells import FusedGRU, FusedRNN
from fused_s2s.nn.lstm import FusedLSTM, _from_lstm
from fused_s2s.nn.recurrent import from_native

__all__ = ["replace_lstm", "replace_rnns"]


def _convert_lstm(m: nn.LSTM, backend: str) -> nn.Module:
    return _from_lstm(FusedLSTM, m, backend, share_parameters=True)


def _convert_gru(m: nn.GRU, backend: str) -> nn.Module:
    return from_native(FusedGRU, m, nn.GRU, backend, share_parameters=True)


def _convert_rnn(m: nn.RNN, backend: str) -> nn.Module:
    return from_native(FusedRNN, m, nn.RNN, backend, share_parameters=True, nonlinearity=m.nonlinearity)


def _replace(model: nn.Module, converters: dict, backend: str) -> nn.Module:
    """Swap every submodule whose type is exactly a key of `converters` (subclasses may override forward,
    so they are left alone); a module reachable under several names becomes one fused module everywhere."""
    memo: dict[int, nn.Module] = {}

    def convert(module: nn.Module) -> nn.Module:
        if id(module) not in memo:
            memo[id(module)] = converters[type(module)](module, backend)
        return memo[id(module)]

    if type(model) in converters:
        return convert(model)
    seen: set[int] = set()

    def visit(module: nn.Module) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        # _modules, not named_children(): that skips a second name of the same module under one parent.
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            if type(child) in converters:
                setattr(module, name, convert(child))
            else:
                visit(child)

    visit(model)
    return model


def replace_lstm(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace every ``torch.nn.LSTM`` submodule of `model` (recursively) by an equivalent FusedLSTM.

    The new modules take over the *same* Parameter objects (so weights, device, dtype and requires_grad
    are kept, and an optimizer built before the swap still updates them) and the old module's train/eval
    mode. Only modules whose type is exactly nn.LSTM are replaced: a subclass may override forward, so it
    is left alone. A module reachable under several names is replaced by one FusedLSTM everywhere.
    Hooks registered on a replaced nn.LSTM are not carried over.

    Returns `model` (changed in place), or the new FusedLSTM when `model` itself is an nn.LSTM.
    """
    return _replace(model, {nn.LSTM: _convert_lstm}, backend)


def replace_rnns(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace every exact ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` submodule of `model` by FusedLSTM, FusedGRU
    and FusedRNN, with replace_lstm's rules (same Parameter objects, train/eval mode kept, subclasses left
    alone). Returns `model`, or the new module when `model` itself is one of them."""
    return _replace(model, {nn.LSTM: _convert_lstm, nn.GRU: _convert_gru, nn.RNN: _convert_rnn}, backend)
