"""replace_lstm: swap every torch.nn.LSTM inside a model for a FusedLSTM, in place."""
from __future__ import annotations

from torch import nn

from fused_s2s.nn.lstm import FusedLSTM, _from_lstm

__all__ = ["replace_lstm"]


def replace_lstm(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace every ``torch.nn.LSTM`` submodule of `model` (recursively) by an equivalent FusedLSTM.

    The new modules take over the *same* Parameter objects (so weights, device, dtype and requires_grad
    are kept, and an optimizer built before the swap still updates them) and the old module's train/eval
    mode. Only modules whose type is exactly nn.LSTM are replaced: a subclass may override forward, so it
    is left alone. A module reachable under several names is replaced by one FusedLSTM everywhere.
    Hooks registered on a replaced nn.LSTM are not carried over.

    Returns `model` (changed in place), or the new FusedLSTM when `model` itself is an nn.LSTM.
    """
    memo: dict[int, FusedLSTM] = {}

    def convert(lstm: nn.LSTM) -> FusedLSTM:
        if id(lstm) not in memo:
            memo[id(lstm)] = _from_lstm(FusedLSTM, lstm, backend, share_parameters=True)
        return memo[id(lstm)]

    if type(model) is nn.LSTM:
        return convert(model)
    seen: set[int] = set()

    def visit(module: nn.Module) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        for name, child in list(module.named_children()):
            if type(child) is nn.LSTM:
                setattr(module, name, convert(child))
            else:
                visit(child)

    visit(model)
    return model
