"""Greedy-decoding step latency: the fused decoder step vs a plain eager PyTorch attention decoder.

One step = LSTMCell (input feeding: input is [embedding; previous h̃]) + Luong general attention over the
source (masked softmax) + combine h̃ = tanh(W_c [context; h]). Both sides use the same weights; the eager
side is written plainly, the fused side is ONE call of fused_s2s.ops.decoder_step per step, with the weights
prepared once per model and the attention keys once per source (outside the timed step, as a decoder does).
Timing is interleaved (eager and fused called in turn), median of repeats, under torch.no_grad().

    python -m benchmarks.decoder_speed [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.environment import environment
from benchmarks.timing import measure_interleaved, summarise
from fused_s2s.ops.decoder_step import attention_keys, decoder_step, prepare_decoder_weights

__all__ = ["EagerDecoderStep", "run_cases", "main"]

HIDDEN, EMBED, SOURCE = 512, 512, 50
BATCHES = (1, 8, 64)


class EagerDecoderStep(nn.Module):
    """The baseline: an attention decoder step as one would write it in plain PyTorch."""

    def __init__(self, embed: int, hidden: int, memory: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(embed + hidden, hidden)
        self.w_attn = nn.Linear(hidden, memory, bias=False)  # Luong general: score = (W h) · m_s
        self.combine = nn.Linear(memory + hidden, hidden)

    def forward(self, x, feed, h, c, memory, pad_mask):
        h, c = self.cell(torch.cat([x, feed], dim=1), (h, c))
        scores = torch.bmm(memory, self.w_attn(h).unsqueeze(2)).squeeze(2)  # [B, S]
        weights = torch.softmax(scores.masked_fill(pad_mask, float("-inf")), dim=1)
        context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)  # [B, M]
        out = torch.tanh(self.combine(torch.cat([context, h], dim=1)))
        return out, h, c, weights


def _case(batch: int, backend: str) -> tuple[Callable[[], None], Callable[[], None], Callable[[], float]]:
    """(eager step, fused step, max |difference| of their outputs) for one batch size."""
    model = EagerDecoderStep(EMBED, HIDDEN, HIDDEN).eval()
    x, feed = torch.randn(batch, EMBED), torch.randn(batch, HIDDEN)
    h, c = torch.randn(batch, HIDDEN), torch.randn(batch, HIDDEN)
    memory = torch.randn(batch, SOURCE, HIDDEN)
    lengths = torch.randint(SOURCE // 2, SOURCE + 1, (batch,))
    lengths[0] = SOURCE
    pad_mask = torch.arange(SOURCE) >= lengths.unsqueeze(1)
    cell = model.cell
    weights = prepare_decoder_weights([(cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)], "general",
                                      {"w": model.w_attn.weight}, model.combine.weight, model.combine.bias)
    keys = attention_keys("general", weights.attn_params, memory)  # once per source
    h1, c1 = h.unsqueeze(0), c.unsqueeze(0)

    def eager():
        return model(x, feed, h, c, memory, pad_mask)

    def fused():
        return decoder_step(x, feed, h1, c1, weights, memory, lengths, keys=keys, backend=backend)

    def max_diff() -> float:
        e, f = eager(), fused()
        return max(float((e[0] - f[0]).abs().max()), float((e[3] - f[3]).abs().max()))

    return eager, fused, max_diff


def run_cases(quick: bool = False, backend: str = "cpu") -> list[dict]:
    """Measure every batch size; each row: name, shape, eager/fused median and p20/p80 ms, speedup, max_diff."""
    rows = []
    repeats = 60 if quick else 300
    with torch.no_grad():
        for batch in BATCHES:
            eager, fused, max_diff = _case(batch, backend)
            diff = max_diff()
            t_eager, t_fused = measure_interleaved([eager, fused], torch.device("cpu"), warmup=10, repeats=repeats,
                                                   budget_s=3.0 if quick else 15.0)
            se, sf = summarise(t_eager), summarise(t_fused)
            rows.append({
                "name": f"decoder_step-B{batch}-H{HIDDEN}-E{EMBED}-S{SOURCE}-float32",
                "shape": {"B": batch, "H": HIDDEN, "E": EMBED, "S": SOURCE, "M": HIDDEN, "layers": 1,
                          "attention": "general", "input_feeding": True},
                "backend": backend,
                "eager_ms": {"median": se.median_ms, "p20": se.p20_ms, "p80": se.p80_ms, "n": se.n},
                "fused_ms": {"median": sf.median_ms, "p20": sf.p20_ms, "p80": sf.p80_ms, "n": sf.n},
                "speedup": se.median_ms / sf.median_ms,
                "max_diff": diff,
            })
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| case | eager µs (p20-p80) | fused µs (p20-p80) | speedup | max diff |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        e, f = r["eager_ms"], r["fused_ms"]
        lines.append(f"| {r['name']} | {e['median'] * 1e3:.0f} ({e['p20'] * 1e3:.0f}-{e['p80'] * 1e3:.0f}) | "
                     f"{f['median'] * 1e3:.0f} ({f['p20'] * 1e3:.0f}-{f['p80'] * 1e3:.0f}) | "
                     f"{r['speedup']:.2f}x | {r['max_diff']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--json", metavar="PATH", help="write the rows and the environment as JSON")
    ap.add_argument("--backend", default="cpu", help="fused backend (default cpu)")
    args = ap.parse_args(argv)
    rows = run_cases(quick=args.quick, backend=args.backend)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(torch.device("cpu")), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
