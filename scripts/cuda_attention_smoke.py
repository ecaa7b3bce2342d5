"""Small calls of the CUDA C++ attention and decoder-step ops, for compute-sanitizer: attention forward and
backward (dot, scaled_dot, general, additive) and the decoder step (fused dot path, projected general query,
additive), fp32/bf16/fp16, with lengths, one source short enough for a single CTA per row and one split over
several (the combine kernel and the backward's partial sums).

    compute-sanitizer --tool memcheck --error-exitcode 1 --kernel-name kns=attention \\
        python scripts/cuda_attention_smoke.py          (also --tool racecheck: the kernels use shared memory)

(kns=attention instruments attention_* and decoder_cell_attention_kernel, not torch's or cuBLAS's kernels.)
Small shapes keep the sanitizers' slowdown bounded; each call is also compared with the reference, loosely
(correctness is tests/test_cuda_attention.py's job). A fallback away from the CUDA kernels is an error here.
Exits non-zero on failure. Not yet run on a GPU (written 2026-12-05 without one).
"""
from __future__ import annotations

import sys
import warnings

import torch

from fused_s2s.ops.attention import attention
from fused_s2s.ops.decoder_step import attention_keys, decoder_step, prepare_decoder_weights
from fused_s2s.reference.attention import attention as reference_attention
from fused_s2s.reference.decoder import decoder_step as reference_step

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LOOSE = {torch.float32: 1e-3, torch.bfloat16: 1e-1, torch.float16: 2e-2}
# (B, T, S, Dq, M): S 5 is one CTA per query row; S 70 splits into three.
ATTENTION_SHAPES = ((3, 2, 5, 4, 6), (2, 1, 70, 6, 6))
STEP_SHAPES = ((3, 5, 6, 7, 5), (2, 4, 8, 9, 70))  # (B, E, H, M, S)


def _rand(g, *shape, scale=0.5):
    return torch.randn(*shape, generator=g) * scale


def attention_case(kind: str, B: int, T: int, S: int, Dq: int, M: int, dtype: torch.dtype) -> float:
    g = torch.Generator().manual_seed(B * 1000 + S)
    if kind in ("dot", "scaled_dot"):
        Dq = M
    A = 5
    params = {"general": {"w": _rand(g, M, Dq)},
              "additive": {"w_query": _rand(g, A, Dq), "b_query": _rand(g, A), "w_memory": _rand(g, A, M),
                           "v": _rand(g, A)}}.get(kind, {})
    base = [_rand(g, B, T, Dq).to(dtype), _rand(g, B, S, M).to(dtype), *(p.to(dtype) for p in params.values())]
    lens = torch.randint(1, S + 1, (B,), generator=g)
    lens[0] = S
    outs = []
    for device in ("cuda", "cpu"):
        q, m, *ps = [t.to(device).float().requires_grad_() if device == "cpu" else t.to(device).requires_grad_()
                     for t in base]
        p = dict(zip(params, ps))
        if device == "cuda":
            ctx, w = attention(q, m, lens, kind, p, return_weights=True, backend="cuda")
        else:
            ctx, w = reference_attention(q, m, lens, kind, p, return_weights=True)
        grads = torch.autograd.grad(ctx.float().sum(), [q, m, *ps])
        outs.append([ctx, w, *grads])
    return max((a.detach().float().cpu() - b.detach()).abs().max().item() for a, b in zip(*outs))


def step_case(kind: str, B: int, E: int, H: int, M: int, S: int, dtype: torch.dtype, project: bool) -> float:
    g = torch.Generator().manual_seed(B * 100 + S)
    if kind == "dot":
        M = H
    A, L = 4, 2
    lstm = [(_rand(g, 4 * H, (E + H) if layer == 0 else H), _rand(g, 4 * H, H), _rand(g, 4 * H), _rand(g, 4 * H))
            for layer in range(L)]
    params = {"dot": {}, "general": {"w": _rand(g, M, H)},
              "additive": {"w_query": _rand(g, A, H), "b_query": _rand(g, A), "w_memory": _rand(g, A, M),
                           "v": _rand(g, A)}}[kind]
    w_out, b_out = _rand(g, H, M + H), _rand(g, H)
    x, feed, h, c, memory = _rand(g, B, E), _rand(g, B, H), _rand(g, L, B, H), _rand(g, L, B, H), _rand(g, B, S, M)
    lens = torch.randint(1, S + 1, (B,), generator=g)
    lens[0] = S
    cast = lambda t: t.to("cuda", dtype)  # noqa: E731
    weights = prepare_decoder_weights([tuple(cast(t) for t in layer) for layer in lstm], kind,
                                      {k: cast(v) for k, v in params.items()}, cast(w_out), cast(b_out))
    mem = cast(memory)
    keys = attention_keys(kind, weights.attn_params, mem, project_query=project)
    with torch.no_grad():
        got = decoder_step(cast(x), cast(feed), cast(h), cast(c), weights, mem, lens.cuda(), keys=keys, backend="cuda")
        up = lambda t: t.to(dtype).float()  # noqa: E731  (the same rounded values, in fp32)
        want = reference_step(up(x), up(feed), up(h), up(c), [tuple(up(t) for t in layer) for layer in lstm], kind,
                              {k: up(v) for k, v in params.items()}, up(w_out), up(b_out), up(memory), lens)
    return max((a.float().cpu() - b).abs().max().item() for a, b in zip(got, want))


def main() -> int:
    if not torch.cuda.is_available():
        print("cuda_attention_smoke: no CUDA GPU", file=sys.stderr)
        return 2
    warnings.simplefilter("error")  # a fallback away from the CUDA kernels warns: make it an error
    failures = 0
    for dtype in DTYPES:
        for kind in ("dot", "scaled_dot", "general", "additive"):
            for shape in ATTENTION_SHAPES:
                err = attention_case(kind, *shape, dtype)
                ok = err <= LOOSE[dtype] * 10
                failures += not ok
                print(f"attention {kind:10s} {str(dtype):15s} {shape}: max |diff| {err:.2e} {'ok' if ok else 'FAIL'}")
        for kind, project in (("dot", False), ("general", False), ("general", True), ("additive", False)):
            for shape in STEP_SHAPES:
                err = step_case(kind, *shape, dtype, project)
                ok = err <= LOOSE[dtype] * 10
                failures += not ok
                print(f"step {kind:8s} project={project!s:5s} {str(dtype):15s} {shape}: max |diff| {err:.2e} "
                      f"{'ok' if ok else 'FAIL'}")
    torch.cuda.synchronize()
    print(f"cuda_attention_smoke: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
