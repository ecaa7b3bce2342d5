"""PNG plot of a report: speedup over the torch module (nn.LSTM, nn.GRU, nn.RNN) against shape, one panel per pass, one series per implementation.

    fused-s2s-bench plot REPORT.json OUT.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI machines
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402


def plot(report: dict, path: Path) -> None:
    """Speedup (torch module median / ours, log scale) per shape; a line at 1 marks parity."""
    rows = [dict(r, speedup=r["extra_info"].get("speedup_vs_nn_lstm", r["extra_info"].get("speedup_vs_torch")))
            for r in report["benchmarks"]]
    rows = [r for r in rows if r["speedup"] is not None]  # the recurrent modules' rows (not the decoder's)
    passes = [p for p in (False, True) if any(r["params"]["backward"] == p for r in rows)]
    fig, axes = plt.subplots(len(passes), 1, figsize=(11, 3.6 * len(passes) + 0.6), squeeze=False)
    for ax, backward in zip(axes[:, 0], passes):
        sel = [r for r in rows if r["params"]["backward"] == backward]
        labels: list[str] = []
        for r in sel:  # x axis: shape and dtype, in grid order
            label = _label(r)
            if label not in labels:
                labels.append(label)
        for impl in dict.fromkeys(r["extra_info"]["impl"] for r in sel):
            pts = [(labels.index(_label(r)), r["speedup"]) for r in sel
                   if r["extra_info"]["impl"] == impl]
            # Markers only: the shapes are categories, a line between two of them means nothing.
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linestyle="none", markersize=7,
                    label=impl)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("speedup over torch.nn")
        ax.set_title("forward + backward" if backward else "forward (no grad)", fontsize=10)
        ax.grid(True, which="both", axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    env = report["machine_info"]
    fig.suptitle(f"fused_s2s vs nn.LSTM on {env['device']} ({env['device_name']}), torch {env['torch']}, "
                 f"commit {(env.get('git_commit') or '?')[:12]}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(row: dict) -> str:
    p = row["params"]
    s = f"B{p['batch']} T{p['seq_len']} H{p['hidden']} L{p['layers']}{' bi' if p['bidirectional'] else ''}"
    if p.get("cell", "lstm") != "lstm":
        s = f"{p['cell'].split('_')[0]} {s}"
    return s + (" varlen" if p["varlen"] else "") + ("" if p["dtype"] == "float32" else f" {p['dtype']}")


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        sys.exit("usage: fused-s2s-bench plot REPORT.json OUT.png")
    plot(json.loads(Path(argv[0]).read_text()), Path(argv[1]))


if __name__ == "__main__":
    main()
