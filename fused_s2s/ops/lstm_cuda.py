"""The CUDA C++ backend of the one-layer LSTM op: schemas and fakes of the ops csrc/cuda_bindings/lstm_cuda.cu
implements, and when the persistent kernels can take an input.

    fused_s2s::cuda_lstm_layer_fwd -> y, h_n, c_n, gates, cells   (gates/cells empty when save=False)
    fused_s2s::cuda_lstm_layer_bwd -> dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr

Same schemas and outputs as the Triton ops (fused_s2s/ops/lstm_triton.py), so the same fake kernels and the
same autograd formula (fused_s2s/ops/lstm.py) serve both. The schemas are defined here rather than in C++ so
they exist in every build: the CUDA kernels are registered only by an extension built against a CUDA torch
(CMakeLists.txt, FUSED_S2S_WITH_CUDA), and `cuda_unavailable_reason` says so when they are not.

The kernels hold one layer, one direction, fp32/bf16/fp16, with lengths and reverse; no proj_size. Whether a
shape fits is `lstm_persistent_plan` in csrc/cuda/lstm_persistent.cuh; `persistent_plan` below is the same
arithmetic in Python (tests/test_cuda_lstm_dispatch.py compares the two through the CPU harness), so the op
layer can route a shape the kernels refuse to Triton before launching anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from fused_s2s.ops.lstm_triton import bwd_fake_outputs, fwd_fake_outputs

_FWD_SCHEMA = ("(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, "
               "Tensor? lengths, bool reverse, bool save) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")
_BWD_SCHEMA = ("(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, "
               "Tensor? w_hr, Tensor? lengths, bool reverse, Tensor y, Tensor gates, Tensor cells, bool need_dx, "
               "bool need_dw=True) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
torch.library.define("fused_s2s::cuda_lstm_layer_fwd", _FWD_SCHEMA)
torch.library.define("fused_s2s::cuda_lstm_layer_bwd", _BWD_SCHEMA)


@torch.library.register_fake("fused_s2s::cuda_lstm_layer_fwd")
def _fwd_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, save):
    return fwd_fake_outputs(x, c0, w_ih, w_hr, save)


@torch.library.register_fake("fused_s2s::cuda_lstm_layer_bwd")
def _bwd_fake(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, w_hr, lengths, reverse, y, gates, cells, need_dx, need_dw=True):
    return bwd_fake_outputs(x, h0, c0, w_ih, w_hh, w_hr, need_dx, need_dw)


def cuda_kernels_built() -> bool:
    """Whether the loaded extension registered the CUDA kernels (built against a CUDA torch)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("fused_s2s::cuda_lstm_layer_fwd", "CUDA")


def cuda_unavailable_reason(device: torch.device, c_error: Optional[str]) -> Optional[str]:
    """Why backend 'cuda' cannot run on `device` at all, or None. c_error: why fused_s2s._C failed to load."""
    reasons = []
    if c_error is not None:
        reasons.append(c_error)
    elif not cuda_kernels_built():
        cuda = torch.version.cuda
        reasons.append("fused_s2s._C was built without the CUDA kernels ("
                       + ("torch is a CPU build, torch.version.cuda is None" if cuda is None else
                          f"torch has CUDA {cuda}, but the extension was built without it: was nvcc found?")
                       + "); rebuild with `pip install --no-build-isolation .` against a CUDA torch")
    if device.type != "cuda":
        reasons.append(f"the CUDA kernels need CUDA tensors, got tensors on {device}")
    return "; ".join(reasons) if reasons else None


# ---- the host plan, as csrc/cuda/lstm_persistent.cuh computes it ----

@dataclass(frozen=True)
class PersistentPlan:
    units_per_cta: int
    grid: int
    smem_bytes: int
    reason: str  # empty when the kernel takes the shape


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def persistent_plan(backward: bool, B: int, H: int, elem_bytes: int, sm_count: int, max_smem_per_cta: int,
                    threads: int = 256) -> PersistentPlan:
    """lstm_persistent_plan (csrc/cuda/lstm_persistent.cuh), line for line: U, grid, shared memory, reason."""
    if B < 1 or H < 1:
        return PersistentPlan(0, 0, 0, f"persistent LSTM: needs B >= 1 and H >= 1, got B={B} H={H}")
    if elem_bytes not in (2, 4):
        return PersistentPlan(0, 0, 0, f"persistent LSTM: W_hh must be fp32, bf16 or fp16, got {elem_bytes}-byte "
                                       "elements")
    if threads < 32 or threads % 32 or threads > 1024:
        return PersistentPlan(0, 0, 0, f"persistent LSTM: threads must be a multiple of 32 in [32, 1024], got "
                                       f"{threads}")
    if sm_count < 1:
        return PersistentPlan(0, 0, 0, f"persistent LSTM: sm_count must be >= 1, got {sm_count}")
    U = _round_up(-(-H // sm_count), 4)
    grid = -(-H // U)
    # persistent_smem_layout: 16-bit W_hh pads rows, k and n to the mma tile (16, 16, 8), ld gets 8 extra
    # elements against bank conflicts; fp32 pads nothing and adds one float per row.
    mma = elem_bytes == 2
    rows = _round_up(U if backward else 4 * U, 16 if mma else 1)
    k = _round_up(4 * H if backward else H, 16 if mma else 1)
    n = _round_up(B, 8 if mma else 1)
    ld = k + (8 if mma else 1)
    x_off = _round_up(rows * ld * elem_bytes, 16)
    acc_off = _round_up(x_off + n * ld * elem_bytes, 16)
    state_off = _round_up(acc_off + rows * n * 4, 16)
    smem = state_off + (2 if backward else 1) * B * U * 4
    reason = ""
    if smem > max_smem_per_cta:
        reason = (f"persistent LSTM {'backward' if backward else 'forward'}: B={B} H={H} needs {smem} bytes of "
                  f"shared memory per CTA (W_hh slice {x_off}, step operand {acc_off - x_off}, product and state "
                  f"{smem - acc_off}) with {grid} CTAs of {U} units; the device allows {max_smem_per_cta}")
    return PersistentPlan(U, grid, smem, reason)


def _device_limits(device: torch.device) -> tuple[int, int]:
    """(SM count, opt-in shared memory per block) of a CUDA device, as the binding reads them."""
    props = torch.cuda.get_device_properties(device)
    optin = getattr(props, "shared_memory_per_block_optin", None)  # cudaDevAttrMaxSharedMemoryPerBlockOptin
    if optin is None:  # a torch without it: the SM's shared memory less the 1 KB the runtime keeps per block
        optin = props.shared_memory_per_multiprocessor - 1024  # (H100: 233472 - 1024 = 232448, the opt-in limit)
    return props.multi_processor_count, optin


def unsupported_reason(x: Tensor, w_hh: Tensor, w_hr: Optional[Tensor], needs_backward: bool) -> Optional[str]:
    """Why the CUDA kernels cannot take this layer (so the op layer runs it on Triton), or None if they can.

    Checked on the CUDA device x lives on; the backward plan only when a backward will run (it needs more
    shared memory: each CTA stages all of dgates [B, 4H] per step)."""
    if w_hr is not None:
        return "proj_size is not supported by the CUDA kernels"
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"the CUDA kernels take float32, bfloat16 or float16, got {x.dtype}"
    if x.dim() != 3 or w_hh.dim() != 2:
        return None  # malformed input: let the op's own checks say what is wrong
    if x.device.type == "cuda" and torch.cuda.get_device_capability(x.device)[0] < 8:
        major, minor = torch.cuda.get_device_capability(x.device)
        return (f"the CUDA kernels are built for compute capability 8.0 and 9.0 (mma.sync on bf16), this GPU is "
                f"{major}.{minor}")
    sm_count, smem = _device_limits(x.device)
    B, H = int(x.shape[1]), int(w_hh.shape[1])
    for backward in (False, True) if needs_backward else (False,):
        plan = persistent_plan(backward, B, H, w_hh.element_size(), sm_count, smem)
        if plan.reason:
            return plan.reason
    return None
