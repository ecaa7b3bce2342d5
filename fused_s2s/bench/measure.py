"""One benchmark case: build nn.LSTM and the implementations under test with identical weights, time them
interleaved, and measure the memory they keep for backward.

Implementations: "nn.LSTM" (oneDNN on the CPU, cuDNN on CUDA) is the baseline every ratio is taken
against; "fused-<backend>" is FusedLSTM on the backend "auto" resolves to on the device (FUSED_S2S_BACKEND
overrides it), plus "fused-triton" on CUDA when auto picked something else; "reference" is FusedLSTM on the
plain-PyTorch reference backend (small cases only).

Variable lengths: FusedLSTM takes the padded batch with `lengths=`; nn.LSTM gets what a user must do
for it: pack_padded_sequence -> nn.LSTM -> pad_packed_sequence, all inside the timed call.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .cases import NN_LSTM, REFERENCE, Case
from .timing import measure_interleaved, summarise
from fused_s2s import FusedLSTM
from fused_s2s.ops.lstm import resolve_backend

Step = Callable[[], None]


def implementations(case: Case, device: torch.device) -> dict[str, str]:
    """name -> FusedLSTM backend for every implementation timed against nn.LSTM in `case`."""
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
    if isinstance(module, FusedLSTM):
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
    """A case ready to time: one module, forward and step per implementation, nn.LSTM first."""

    modules: dict[str, nn.Module]
    forwards: dict[str, Callable[[], Tensor]]
    steps: dict[str, Step]
    backends: dict[str, str]
    x: Tensor
    max_abs_diff: dict[str, float]  # |y - y_nn.LSTM|: a sanity check that all computed the same thing


def build_case(case: Case, device: torch.device) -> Built:
    """nn.LSTM and every implementation of `case` with identical weights, their input and timed steps."""
    dtype = case.torch_dtype
    ref = nn.LSTM(case.hidden, case.hidden, num_layers=case.layers, bidirectional=case.bidirectional,
                  device=device, dtype=dtype)
    modules: dict[str, nn.Module] = {NN_LSTM: ref}
    backends = implementations(case, device)
    for name, backend in backends.items():
        m = FusedLSTM(case.hidden, case.hidden, num_layers=case.layers, bidirectional=case.bidirectional,
                      device=device, dtype=dtype, backend=backend)
        m.load_state_dict(ref.state_dict())
        modules[name] = m
    for m in modules.values():
        m.train(case.backward)
    x = torch.randn(case.seq_len, case.batch, case.hidden, device=device, dtype=dtype)
    lengths = random_lengths(case) if case.varlen else None
    forwards = {name: make_forward(m, x, lengths) for name, m in modules.items()}
    with torch.no_grad():
        y_ref = forwards[NN_LSTM]().float()
        diffs = {name: (f().float() - y_ref).abs().max().item() for name, f in forwards.items()}
    x.requires_grad_(case.backward)
    steps = {n: make_step(modules[n], forwards[n], x, case.backward) for n in modules}
    return Built(modules, forwards, steps, backends, x, diffs)


def run_case(case: Case, device: torch.device, warmup: int, repeats: int, budget_s: float) -> list[dict]:
    """Time nn.LSTM and every implementation of `case` interleaved; one result row per implementation."""
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

    rows = []
    for n, t in zip(names, times):
        s = stats[n]
        extra: dict[str, object] = {"impl": n, "backend": backends.get(n, "oneDNN/cuDNN"),
                                    "max_abs_diff_vs_nn_lstm": diffs[n], "gflop": case.flops() / 1e9}
        if n != NN_LSTM:
            extra["speedup_vs_nn_lstm"] = stats[NN_LSTM].median_ms / s.median_ms
            extra["pair_ratio_median"] = statistics.median(u / v for u, v in zip(nn_times, t))
            # Best against best: what each runs at when the machine is quiet; steadier on a busy machine.
            extra["speedup_min_vs_nn_lstm"] = stats[NN_LSTM].min_ms / s.min_ms
            extra["gate"] = n != REFERENCE  # the reference is an oracle, not a product: shown, never gated
        if case.backward:
            extra.update(memory[n])
            if n != NN_LSTM:
                base = memory[NN_LSTM]
                extra["saved_bytes_ratio"] = extra["saved_bytes"] / base["saved_bytes"] if base["saved_bytes"] else None
                if base["peak_bytes"]:
                    extra["peak_bytes_ratio"] = extra["peak_bytes"] / base["peak_bytes"]
        rows.append({
            "group": case.id,
            "name": f"{n} {case.id}",
            "params": {**case.as_params(), "impl": n},
            # seconds, as pytest-benchmark writes them
            "stats": {k[:-3]: v / 1e3 for k, v in asdict(s).items() if k.endswith("_ms")} | {"rounds": s.n},
            "extra_info": extra,
        })
    return rows
