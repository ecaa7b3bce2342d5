"""Greedy-decoding step latency: FusedDecoder.step vs a plain eager PyTorch attention decoder.

One step = LSTMCell (input feeding: input is [embedding; previous h̃]) + Luong general attention over the
source (masked softmax) + combine h̃ = tanh(W_c [context; h]). Both sides hold the same weights. The eager
side is written plainly; the fused side is the public API, `FusedDecoder.step` (one fused op call per step),
under torch.no_grad(), in two variants: with the attention keys computed once per source by
`precompute_keys` outside the timed loop, and as users call it, with no keys (general attention then
projects the query each step, as the eager side does; each loop sample decodes a different one of two sources,
and the eager side decodes the same sources). On CPU tensors the fused step is the C++ op; on CUDA (`--device cuda`, and the
report on a GPU) the Triton step, timed with CUDA events.

Two measurements, both interleaved (eager and fused samples taken in turn, medians of the samples):
  * loop (the headline figure): a sample is a decoding loop of STEPS steps of one decoder, each step feeding
    its state and h̃ to the next, as greedy decoding runs it; the per-step time is sample / STEPS. The
    decoder's weights (about 15 MB at H512) stay in the 32 MB L3 across the loop's steps, as in real use.
  * alternating: single steps of the two decoders called in turn, so each evicts the other's weights from
    L3 and every step reads its weights from DRAM; the pessimistic bound, reported beside it.

    python -m fused_s2s.bench.decoder_speed [--quick] [--json PATH] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
from typing import Callable, Optional

import torch
import torch.nn as nn

from .environment import environment
from .timing import measure_interleaved, summarise
from fused_s2s import FusedDecoder
from fused_s2s.nn.decoder import DecoderState

__all__ = ["EagerDecoderStep", "run_cases", "main"]

HIDDEN, EMBED, SOURCE = 512, 512, 50
BATCHES = (1, 8, 64)
STEPS = 16  # steps per loop sample: a short greedy decode


class EagerDecoderStep(nn.Module):
    """The baseline: an attention decoder step as one would write it in plain PyTorch."""

    def __init__(self, embed: int, hidden: int, memory: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(embed + hidden, hidden)
        self.w_attn = nn.Linear(hidden, memory, bias=False)  # Luong general: score = (W h) · m_s
        self.combine = nn.Linear(memory + hidden, hidden)

    @classmethod
    def like(cls, decoder: FusedDecoder) -> "EagerDecoderStep":
        """The same weights as a one-layer FusedDecoder with general attention and input feeding."""
        model = cls(decoder.input_size, decoder.hidden_size, decoder.memory_size)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(model.cell, name).copy_(getattr(decoder.lstm, f"{name}_l0"))
            model.w_attn.weight.copy_(decoder.attn.w)
            model.combine.weight.copy_(decoder.linear_out.weight)
            model.combine.bias.copy_(decoder.linear_out.bias)
        return model.eval()

    def forward(self, x, feed, h, c, memory, pad_mask):
        h, c = self.cell(torch.cat([x, feed], dim=1), (h, c))
        scores = torch.bmm(memory, self.w_attn(h).unsqueeze(2)).squeeze(2)  # [B, S]
        weights = torch.softmax(scores.masked_fill(pad_mask, float("-inf")), dim=1)
        context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)  # [B, M]
        out = torch.tanh(self.combine(torch.cat([context, h], dim=1)))
        return out, h, c, weights


def _case(batch: int, backend: str, steps: int, device: torch.device, precomputed: bool = True
          ) -> dict[str, Callable]:
    """Callables for one batch size: eager/fused loops of `steps` steps, eager/fused single steps, and
    max_diff() = the largest |difference| of the two loops' final h̃ and attention weights. precomputed:
    the fused side passes keys from precompute_keys; else none, and the loops alternate between two
    sources (memories), so the fused decoder computes keys once per loop sample."""
    decoder = FusedDecoder(EMBED, HIDDEN, HIDDEN, attention="general", input_feeding=True,
                           backend=backend).to(device).eval()
    model = EagerDecoderStep.like(decoder).to(device)
    r = lambda *shape: torch.randn(*shape, device=device)  # noqa: E731
    xs = r(steps, batch, EMBED)
    h0, c0 = r(batch, HIDDEN), r(batch, HIDDEN)
    feed0 = torch.zeros(batch, HIDDEN, device=device)
    memory = r(batch, SOURCE, HIDDEN)
    lengths = torch.randint(SOURCE // 2, SOURCE + 1, (batch,))
    lengths[0] = SOURCE
    lengths = lengths.to(device)
    pad_mask = torch.arange(SOURCE, device=device) >= lengths.unsqueeze(1)
    keys = decoder.precompute_keys(memory) if precomputed else None  # once per source
    memories = [memory] if precomputed else [memory, r(batch, SOURCE, HIDDEN)]
    samples = {"eager": 0, "fused": 0}  # loop samples taken by each side: picks the next source
    state0 = DecoderState(h0.unsqueeze(0), c0.unsqueeze(0), feed0)

    def next_memory(side: str) -> torch.Tensor:
        samples[side] += 1
        return memories[(samples[side] - 1) % len(memories)]

    def eager_loop(n: int = steps):
        h, c, feed, mem = h0, c0, feed0, next_memory("eager")
        for t in range(n):
            feed, h, c, weights = model(xs[t], feed, h, c, mem, pad_mask)
        return feed, weights

    def fused_loop(n: int = steps):
        state, mem = state0, next_memory("fused")
        for t in range(n):
            out, state, weights = decoder.step(xs[t], state, mem, lengths, keys)
        return out, weights

    def max_diff() -> float:
        (e_out, e_w), (f_out, f_w) = eager_loop(), fused_loop()
        return max(float((e_out - f_out).abs().max()), float((e_w - f_w).abs().max()))

    return {"eager_loop": eager_loop, "fused_loop": fused_loop, "eager_step": lambda: eager_loop(1),
            "fused_step": lambda: fused_loop(1), "max_diff": max_diff}


def _ms(stats) -> dict:
    return {"median": stats.median_ms, "p20": stats.p20_ms, "p80": stats.p80_ms, "n": stats.n}


def _per_step(stats: dict, steps: int) -> dict:
    return {k: (v / steps if k != "n" else v) for k, v in stats.items()}


def case_id(batch: int, precomputed: bool = True) -> str:
    """The report's and the gate's id of the decoder-step case at one batch size."""
    return f"greedy step B{batch} H{HIDDEN} E{EMBED} S{SOURCE} general{'' if precomputed else ' no-keys'} float32"


def run_cases(quick: bool = False, backend: str = "cpu", steps: int = STEPS,
              device: torch.device = torch.device("cpu"), batches: tuple[int, ...] = BATCHES,
              repeats: Optional[int] = None, budget: Optional[float] = None,
              alternating: bool = True, precomputed: bool = True) -> list[dict]:
    """Measure every batch size. Each row: name, shape, backend, eager_ms / fused_ms (per step, from the
    loop samples: median, p20, p80, n), speedup, max_diff, and (if `alternating`) alternating = the same for
    single steps. repeats / budget: most loop samples and seconds of timed loops per batch size."""
    rows = []
    repeats = repeats or (20 if quick else 100)
    budget = budget or (2.0 if quick else 10.0)
    with torch.no_grad():
        for batch in batches:
            fns = _case(batch, backend, steps, device, precomputed)
            diff = fns["max_diff"]()
            t_eager, t_fused = measure_interleaved([fns["eager_loop"], fns["fused_loop"]], device,
                                                   warmup=3, repeats=repeats, budget_s=budget)
            se, sf = _per_step(_ms(summarise(t_eager)), steps), _per_step(_ms(summarise(t_fused)), steps)
            row = {
                "name": f"decoder_step-B{batch}-H{HIDDEN}-E{EMBED}-S{SOURCE}{'' if precomputed else '-nokeys'}-float32",
                "shape": {"B": batch, "H": HIDDEN, "E": EMBED, "S": SOURCE, "M": HIDDEN, "layers": 1,
                          "attention": "general", "input_feeding": True, "steps": steps,
                          "precomputed_keys": precomputed},
                "backend": backend,
                "eager_ms": se, "fused_ms": sf, "speedup": se["median"] / sf["median"], "max_diff": diff,
            }
            if alternating:
                a_eager, a_fused = measure_interleaved([fns["eager_step"], fns["fused_step"]], device,
                                                       warmup=10, repeats=repeats * 4, budget_s=budget / 2)
                ae, af = _ms(summarise(a_eager)), _ms(summarise(a_fused))
                row["alternating"] = {"eager_ms": ae, "fused_ms": af, "speedup": ae["median"] / af["median"]}
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| case | eager µs/step (p20-p80) | fused µs/step (p20-p80) | speedup | alternating steps: eager / "
             "fused µs, speedup | max diff |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        e, f, a = r["eager_ms"], r["fused_ms"], r["alternating"]
        lines.append(f"| {r['name']} | {e['median'] * 1e3:.0f} ({e['p20'] * 1e3:.0f}-{e['p80'] * 1e3:.0f}) | "
                     f"{f['median'] * 1e3:.0f} ({f['p20'] * 1e3:.0f}-{f['p80'] * 1e3:.0f}) | "
                     f"{r['speedup']:.2f}x | {a['eager_ms']['median'] * 1e3:.0f} / {a['fused_ms']['median'] * 1e3:.0f}"
                     f", {a['speedup']:.2f}x | {r['max_diff']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples")
    ap.add_argument("--json", metavar="PATH", help="write the rows and the environment as JSON")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--backend", default=None, help="FusedDecoder backend (default: cpu on CPU, triton on CUDA)")
    ap.add_argument("--steps", type=int, default=STEPS, help=f"steps per loop sample (default {STEPS})")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    backend = args.backend or ("cpu" if device.type == "cpu" else "triton")
    rows = [row for precomputed in (True, False)
            for row in run_cases(quick=args.quick, backend=backend, steps=args.steps, device=device,
                                 precomputed=precomputed)]
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(device), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
