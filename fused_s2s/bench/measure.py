"""One benchmark case: build the torch module of the case's cell (nn.LSTM, nn.GRU, nn.RNN) and the
implementations under test with identical weights, time them interleaved, and measure the memory they keep
for backward.

Implementations: the torch module (oneDNN on the CPU, cuDNN on CUDA) is the baseline every ratio is taken
against (`speedup_vs_nn_lstm` for LSTM rows, `speedup_vs_torch` for GRU/RNN rows); "fused-<backend>" is
FusedLSTM / FusedGRU / FusedRNN on the backend "auto" resolves to on the device (FUSED_S2S_BACKEND
overrides it), plus "fused-triton" for the LSTM on CUDA when auto picked something else; "reference" is the
fused module on the plain-PyTorch reference backend (small LSTM cases only).

Variable lengths: the fused module takes the padded batch with `lengths=`; the torch module gets what a user
must do for it: pack_padded_sequence -> module -> pad_packed_sequence, all inside the timed call.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .cases import REFERENCE, Case
from .timing import measure_interleaved, summarise
from fused_s2s import FusedLSTM
from fused_s2s.ops.lstm import resolve_backend

try:  # builds before the GRU/RNN modules (an A/B base) have none: their cases then fail alone, recorded
    from fused_s2s import FusedGRU, FusedRNN
    from fused_s2s.ops.cells import resolve_cell_backend
except ImportError:  # pragma: no cover - only with an older fused_s2s
    FusedGRU = FusedRNN = resolve_cell_backend = None

Step = Callable[[], None]


def implementations(case: Case, device: torch.device) -> dict[str, str]:
    """name -> backend of the fused module for every implementation timed against the torch module in `case`."""
    if case.cell != "lstm":
        if resolve_cell_backend is None:
            raise RuntimeError(f"this fused_s2s build has no {case.cell} module")
        auto = resolve_cell_backend("auto", device)
        return {f"fused-{auto}": auto}
    auto = resolve_backend("auto", device)
    impls = {f"fused-{auto}": auto}
    if device.type == "cuda" and auto != "triton":
        impls["fused-triton"] = "triton"
    if case.reference:
        impls[REFERENCE] = "reference"
    return impls


def random_lengths(case: Case) -> Tensor:
    """Per-sequence lengths uniform in [T/4, T], one of them T (so the padded length is T), on the CPU."""
    lo = max(1, case.seq_len // 4)
    lengths = torch.randint(lo, case.seq_len + 1, (case.batch,))
    lengths[0] = case.seq_len
    return lengths


def make_forward(module: nn.Module, x: Tensor, lengths: Optional[Tensor]) -> Callable[[], Tensor]:
    """A call returning the padded output [T, B, D*H]: with lengths, nn.LSTM packs and unpacks."""
    if lengths is None:
        return lambda: module(x)[0]
    if not isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):  # ours (the torch modules take no lengths=)
        return lambda: module(x, lengths=lengths)[0]

    def packed() -> Tensor:
        y, _ = module(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return pad_packed_sequence(y, total_length=x.size(0))[0]
    return packed


def make_step(module: nn.Module, forward: Callable[[], Tensor], x: Tensor, backward: bool) -> Step:
    """One timed call: forward under no_grad, or forward + backward of y.sum() (grads cleared first)."""
    if not backward:
        def fwd() -> None:
            with torch.no_grad():
                forward()
        return fwd
    params = list(module.parameters())

    def fwd_bwd() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        forward().sum().backward()
    return fwd_bwd


def saved_bytes(forward: Callable[[], Tensor], exclude: list[Tensor]) -> int:
    """Bytes autograd keeps for backward after one forward: distinct storages packed by saved_tensors_hooks,
    leaving out those of `exclude` (the parameters and the input, which exist anyway)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = forward()
    del y
    return sum(seen.values())


def peak_bytes(step: Step, device: torch.device) -> Optional[int]:
    """CUDA: peak allocated memory of one forward+backward above what was allocated before. Else None."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


@dataclass
class Built:
    """A case ready to time: one module, forward and step per implementation, the torch module first."""

    baseline: str  # the torch module's name (a key of modules)
    modules: dict[str, nn.Module]
    forwards: dict[str, Callable[[], Tensor]]
    steps: dict[str, Step]
    backends: dict[str, str]
    x: Tensor
    max_abs_diff: dict[str, float]  # |y - y_torch|: a sanity check that all computed the same thing


def _module_classes(cell: str) -> tuple[type, type, dict]:
    """(torch module, fused module, extra constructor arguments) of a cell."""
    if cell == "lstm":
        return nn.LSTM, FusedLSTM, {}
    if cell == "gru":
        return nn.GRU, FusedGRU, {}
    return nn.RNN, FusedRNN, {"nonlinearity": cell.removeprefix("rnn_")}


def build_case(case: Case, device: torch.device) -> Built:
    """The torch module and every implementation of `case` with identical weights, their input and steps."""
    dtype = case.torch_dtype
    backends = implementations(case, device)
    torch_cls, fused_cls, extra = _module_classes(case.cell)
    kw = dict(num_layers=case.layers, bidirectional=case.bidirectional, device=device, dtype=dtype, **extra)
    ref = torch_cls(case.hidden, case.hidden, **kw)
    modules: dict[str, nn.Module] = {case.baseline: ref}
    for name, backend in backends.items():
        m = fused_cls(case.hidden, case.hidden, **kw, backend=backend)
        m.load_state_dict(ref.state_dict())
        modules[name] = m
    for m in modules.values():
        m.train(case.backward)
    x = torch.randn(case.seq_len, case.batch, case.hidden, device=device, dtype=dtype)
    lengths = random_lengths(case) if case.varlen else None
    forwards = {name: make_forward(m, x, lengths) for name, m in modules.items()}
    with torch.no_grad():
        y_ref = forwards[case.baseline]().float()
        diffs = {name: (f().float() - y_ref).abs().max().item() for name, f in forwards.items()}
    x.requires_grad_(case.backward)
    steps = {n: make_step(modules[n], forwards[n], x, case.backward) for n in modules}
    return Built(case.baseline, modules, forwards, steps, backends, x, diffs)


def run_case(case: Case, device: torch.device, warmup: int, repeats: int, budget_s: float) -> list[dict]:
    """Time the torch module and every implementation of `case` interleaved; one row per implementation.
    LSTM rows keep the key names the committed baselines use (speedup_vs_nn_lstm); GRU/RNN rows say
    speedup_vs_torch."""
    b = build_case(case, device)
    modules, forwards, backends, x, diffs = b.modules, b.forwards, b.backends, b.x, b.max_abs_diff
    memory: dict[str, dict[str, Optional[int]]] = {}
    if case.backward:
        for name, m in modules.items():
            memory[name] = {"saved_bytes": saved_bytes(forwards[name], [x, *m.parameters()]),
                            "peak_bytes": peak_bytes(b.steps[name], device)}

    names = list(modules)
    times = measure_interleaved([b.steps[n] for n in names], device, warmup, repeats, budget_s)
    stats = {n: summarise(t) for n, t in zip(names, times)}
    nn_times = times[0]
    base = case.baseline
    vs = "nn_lstm" if case.cell == "lstm" else "torch"

    rows = []
    for n, t in zip(names, times):
        s = stats[n]
        extra: dict[str, object] = {"impl": n, "backend": backends.get(n, "oneDNN/cuDNN"),
                                    f"max_abs_diff_vs_{vs}": diffs[n], "gflop": case.flops() / 1e9}
        if n != base:
            extra[f"speedup_vs_{vs}"] = stats[base].median_ms / s.median_ms
            extra["pair_ratio_median"] = statistics.median(u / v for u, v in zip(nn_times, t))
            # Best against best: what each runs at when the machine is quiet; steadier on a busy machine.
            extra[f"speedup_min_vs_{vs}"] = stats[base].min_ms / s.min_ms
            extra["gate"] = n != REFERENCE  # the reference is an oracle, not a product: shown, never gated
        if case.backward:
            extra.update(memory[n])
            if n != base:
                theirs = memory[base]
                extra["saved_bytes_ratio"] = extra["saved_bytes"] / theirs["saved_bytes"] if theirs["saved_bytes"] else None
                if theirs["peak_bytes"]:
                    extra["peak_bytes_ratio"] = extra["peak_bytes"] / theirs["peak_bytes"]
        rows.append({
            "group": case.id,
            "name": f"{n} {case.id}",
            "params": {**case.as_params(), "impl": n},
            # seconds, as pytest-benchmark writes them
            "stats": {k[:-3]: v / 1e3 for k, v in asdict(s).items() if k.endswith("_ms")} | {"rounds": s.n},
            "extra_info": extra,
        })
    return rows
