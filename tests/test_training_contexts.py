"""FusedLSTM where users train it beyond one plain process: DistributedDataParallel (gloo, two processes on
this machine) against the same model with nn.LSTM, torch.save/torch.load and copy.deepcopy of a model
holding it, and torch.export of an encoder (the exported program against eager)."""
from __future__ import annotations

import copy
import io
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fused_s2s import FusedLSTM
from fused_s2s.ops import lstm as ops_lstm
from tests.utils import assert_close

pytestmark = pytest.mark.skipif(ops_lstm._C_ERROR is not None, reason=f"C++ backend: {ops_lstm._C_ERROR}")


class Tagger(nn.Module):
    """A small model as users write one: embedding, a 2-layer bidirectional LSTM, a linear head."""

    def __init__(self, lstm_cls: type, vocab: int = 11, emb: int = 6, hidden: int = 5):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = lstm_cls(emb, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(self.emb(tokens))
        return self.head(y)


def twin_models(seed: int = 0) -> tuple[Tagger, Tagger]:
    """The same weights in a model with nn.LSTM and one with FusedLSTM."""
    torch.manual_seed(seed)
    ref = Tagger(nn.LSTM).double()
    ours = Tagger(lambda *a, **k: FusedLSTM(*a, **k, backend="cpu")).double()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, result_path: str) -> None:
    """One DDP rank: both twin models wrapped in DDP, each rank a different shard of one batch; rank 0 saves
    the averaged gradients of both."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ref, ours = twin_models()
        g = torch.Generator().manual_seed(1)
        tokens = torch.randint(0, 11, (2 * world, 7), generator=g)[rank * 2:(rank + 1) * 2]
        targets = torch.randint(0, 11, (2 * world, 7), generator=g)[rank * 2:(rank + 1) * 2]
        grads = {}
        for name, model in (("ref", ref), ("ours", ours)):
            ddp = nn.parallel.DistributedDataParallel(model)
            loss = nn.functional.cross_entropy(ddp(tokens).flatten(0, 1), targets.flatten())
            loss.backward()
            grads[name] = {n: p.grad.clone() for n, p in model.named_parameters()}
        if rank == 0:
            torch.save(grads, result_path)
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_two_processes_matches_nn_lstm(tmp_path):
    """Under DDP (gloo, 2 processes) the averaged gradients of a FusedLSTM model equal nn.LSTM's, and the
    two ranks' shards really differ (so the all-reduce is exercised)."""
    path = str(tmp_path / "grads.pt")
    mp.start_processes(_ddp_worker, args=(2, _free_port(), path), nprocs=2, join=True, start_method="spawn")
    grads = torch.load(path)
    assert grads["ref"].keys() == grads["ours"].keys() and any("lstm" in n for n in grads["ours"])
    for name, expected in grads["ref"].items():
        assert_close(grads["ours"][name], expected, f"DDP grad {name}")
    # Against a single process over the whole batch: DDP's mean of the two shards' gradients equals it.
    _, single = twin_models()
    g = torch.Generator().manual_seed(1)
    tokens, targets = torch.randint(0, 11, (4, 7), generator=g), torch.randint(0, 11, (4, 7), generator=g)
    loss = sum(nn.functional.cross_entropy(single(tokens[i:i + 2]).flatten(0, 1), targets[i:i + 2].flatten())
               for i in (0, 2)) / 2
    loss.backward()
    for name, p in single.named_parameters():
        assert_close(grads["ours"][name], p.grad, f"DDP vs one process, grad {name}")


def test_save_load_and_deepcopy_keep_the_module_working():
    _, model = twin_models()
    tokens = torch.randint(0, 11, (3, 9))
    expected = model(tokens)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    clone = copy.deepcopy(model)
    for name, other in (("torch.load", loaded), ("deepcopy", clone)):
        assert isinstance(other.lstm, FusedLSTM)
        assert_close(other(tokens), expected, f"{name} output")
        # Its own parameters: training the copy leaves the original alone.
        other(tokens).sum().backward()
        with torch.no_grad():
            for p in other.parameters():
                p -= 0.1 * p.grad
        assert not torch.equal(other(tokens), expected), f"{name}: the copy did not train"
        assert_close(model(tokens), expected, f"original after training the {name} copy")
    # state_dict round trip into a fresh nn.LSTM model gives the same outputs as nn.LSTM would.
    ref, _ = twin_models(seed=3)
    ref.load_state_dict(model.state_dict())
    assert_close(model(tokens), ref(tokens), "state_dict into nn.LSTM")


@pytest.mark.parametrize("lengths", [False, True], ids=["padded", "lengths"])
def test_torch_export_of_an_encoder_matches_eager(lengths):
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = FusedLSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True, backend="cpu")

        def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y, (h, _) = self.lstm(x, lengths=lens) if lengths else self.lstm(x)
            return y, h

    enc = Encoder().eval()
    x, lens = torch.randn(3, 8, 4), torch.tensor([8, 5, 2])
    program = torch.export.export(enc, (x, lens))
    names = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("fused_s2s" in n for n in names), f"no fused_s2s op in the exported graph: {sorted(names)}"
    x2 = torch.randn(3, 8, 4)
    for args in ((x, lens), (x2, lens)):
        for a, e in zip(program.module()(*args), enc(*args)):
            assert_close(a, e, "exported vs eager")
