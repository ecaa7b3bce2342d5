"""nn.LSTM against FusedLSTM in bf16 on the CPU: speed (interleaved, one process) and error against fp64.

    python scripts/bench_bf16_lstm.py [--repeats 20] [--rounds 3] [--shapes B16-T50-H256,B64-T50-H256,B16-T50-H512]

For each shape and round, the two modules alternate call by call (forward under no_grad, then forward +
backward), so the machine's drift hits both alike; the ratio is nn.LSTM's median time over ours (> 1: ours is
faster). GFLOP/s counts the layer's GEMM work (2·T·B·4H·(I + H) forward, three times that forward+backward).
The error lines give max |bf16 - fp64| of the output and every gradient, for nn.LSTM and for FusedLSTM, both
against nn.LSTM in fp64 on the same bf16-rounded weights and inputs.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from fused_s2s.nn import FusedLSTM


def parse_shape(s: str) -> tuple[int, int, int]:
    b, t, h = (int(p[1:]) for p in s.split("-"))
    return b, t, h


CLOCK = time.perf_counter


def timed(fn) -> float:
    t0 = CLOCK()
    fn()
    return CLOCK() - t0


def compare_speed(B: int, T: int, H: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    ref = nn.LSTM(H, H).bfloat16()
    ours = FusedLSTM.from_lstm(ref)
    x = torch.randn(T, B, H).bfloat16()
    xg = x.clone().requires_grad_()

    def fwd(m):
        with torch.no_grad():
            m(x)

    def fwd_bwd(m):
        y, _ = m(xg)
        y.sum().backward()

    out = {}
    for name, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        for m in (ref, ours):
            fn(m), fn(m)  # warm-up: weight packing caches, first-touch pages
        times = {"nn": [], "fused": []}
        for _ in range(repeats):
            times["nn"].append(timed(lambda: fn(ref)))
            times["fused"].append(timed(lambda: fn(ours)))
        t_nn, t_f = statistics.median(times["nn"]), statistics.median(times["fused"])
        # the fastest call of each: the least disturbed by the other processes of a shared machine
        out[name + " min"] = (min(times["nn"]) / min(times["fused"]), 0, 0, min(times["nn"]) * 1e3,
                              min(times["fused"]) * 1e3)
        flop = 2 * T * B * 4 * H * (H + H) * (1 if name == "fwd" else 3)
        out[name] = (t_nn / t_f, flop / t_nn / 1e9, flop / t_f / 1e9, t_nn * 1e3, t_f * 1e3)
        out[name + " min"] = out[name + " min"][:1] + (flop / out[name + " min"][3] / 1e6,
                                                      flop / out[name + " min"][4] / 1e6) + out[name + " min"][3:]
    return out


def errors(B: int, T: int, H: int) -> dict[str, tuple[float, float]]:
    torch.manual_seed(1)
    ref = nn.LSTM(H, H).bfloat16()
    ours = FusedLSTM.from_lstm(ref)
    ref64 = nn.LSTM(H, H).double()
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    x = torch.randn(T, B, H).bfloat16()
    dy = torch.randn(T, B, H).bfloat16()
    res = {}
    for name, m in (("nn", ref), ("fused", ours), ("64", ref64)):
        xi = (x.double() if name == "64" else x).clone().requires_grad_()
        y, _ = m(xi)
        y.backward(dy.to(y.dtype))
        res[name] = {"y": y.detach(), "dx": xi.grad, **{n: p.grad for n, p in m.named_parameters()}}
    return {k: tuple((res[who][k].double() - res["64"][k]).abs().max().item() for who in ("nn", "fused"))
            for k in res["64"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-errors", action="store_true")
    ap.add_argument("--shapes", default="B16-T50-H256,B64-T50-H256,B16-T50-H512")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="thread: this thread's CPU time (only with --threads 1), which time spent preempted by "
                         "other processes does not inflate: the steadier figure on a busy shared machine")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "thread":
        if torch.get_num_threads() != 1:
            ap.error("--clock thread needs --threads 1 (other threads' work would not be counted)")
        global CLOCK
        CLOCK = time.thread_time
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock")
    for shape in args.shapes.split(","):
        B, T, H = parse_shape(shape)
        for k, (e_nn, e_f) in ({} if args.no_errors else errors(B, T, H)).items():
            print(f"{shape} error {k:14s} nn.LSTM {e_nn:.2e}  fused {e_f:.2e}  ratio {e_f / max(e_nn, 1e-30):.2f}")
        for r in range(args.rounds):
            for name, (ratio, gf_nn, gf_f, ms_nn, ms_f) in compare_speed(B, T, H, args.repeats).items():
                print(f"{shape} round {r} {name:8s} nn/fused {ratio:.2f}x   nn.LSTM {ms_nn:7.2f} ms {gf_nn:5.0f} "
                      f"GFLOP/s   fused {ms_f:7.2f} ms {gf_f:5.0f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
