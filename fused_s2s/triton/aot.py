"""Ahead-of-time compilation of every shipped Triton kernel × config × dtype for sm_80 and sm_90, no GPU.

Each kernel file lists its cases in `aot_cases() -> list[AotCase]`; `compile_case` builds one for one
architecture and reads its resource usage from the cubin with the cuobjdump that triton ships. A spill
(STACK or LOCAL > 0), a block that does not fit one SM (registers × threads, shared memory) or a compile
error fails the check (scripts/triton_aot_check.py, tests/test_triton_aot.py).
Must run in a process where TRITON_INTERPRET is not set: the interpreter replaces the JIT functions.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ARCHS = (80, 90)
# What one SM offers a block: 64K 32-bit registers on both; 163 KB (sm_80) and 227 KB (sm_90) of shared memory.
REGISTERS_PER_SM = 65536
MAX_SHARED = {80: 163 * 1024, 90: 227 * 1024}


@dataclass
class AotCase:
    """One kernel instantiation to compile: the kernel, its full signature and its constexpr values."""

    kernel: Any                     # a triton.JITFunction
    name: str                       # kernel name for the table, e.g. "lstm_step_fwd"
    config: str                     # the shipped config, e.g. "BB16-BH64-w4-s1"
    dtype: str                      # "fp32", "fp16" or "bf16": the dtype the launcher would pass
    signature: dict[str, str]       # every argument: "*fp32", "i32", "constexpr", ...
    constexprs: dict[str, Any]      # values of the constexpr arguments
    num_warps: int = 4
    num_stages: int = 1
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AotResult:
    """What one compile produced: registers, shared memory (bytes), spills (stack-frame + local bytes)."""

    case: AotCase
    arch: int
    registers: int
    shared: int
    spills: int
    error: str = ""

    def row(self) -> dict[str, Any]:
        return {"kernel": self.case.name, "config": self.case.config, "dtype": self.case.dtype,
                "arch": f"sm_{self.arch}", "registers": self.registers, "shared_bytes": self.shared,
                "spill_bytes": self.spills, "error": self.error}


def _cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_case(case: AotCase, arch: int) -> AotResult:
    """Compile `case` for sm_`arch` (warp size 32) and read REG/SHARED/LOCAL from the cubin."""
    try:
        src = ASTSource(fn=case.kernel, signature=case.signature, constexprs=case.constexprs)
        options = {"num_warps": case.num_warps, "num_stages": case.num_stages, "enable_fp_fusion": True,
                   **case.options}
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as e:  # noqa: BLE001 - reported as a failed row, never swallowed
        return AotResult(case, arch, -1, -1, -1, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
        path = f.name
    try:
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", path], capture_output=True, text=True,
                             check=True).stdout
    finally:
        os.unlink(path)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if m is None:
        return AotResult(case, arch, -1, -1, -1, error=f"cannot parse cuobjdump output: {out!r}")
    registers, stack, static_shared, local = (int(g) for g in m.groups())
    # Spilled registers live in the thread's stack frame (Triton kernels have no other stack use) or in
    # local memory: either counts as a spill. Triton's shared memory is dynamic: the metadata holds it.
    shared = max(static_shared, compiled.metadata.shared)
    error = ""
    if registers * case.num_warps * 32 > REGISTERS_PER_SM:
        error = f"{registers} registers x {case.num_warps * 32} threads exceed an SM's {REGISTERS_PER_SM}"
    elif shared > MAX_SHARED[arch]:
        error = f"{shared} B of shared memory exceed sm_{arch}'s {MAX_SHARED[arch]}"
    return AotResult(case, arch, registers, shared, stack + local, error)


def all_cases() -> list[AotCase]:
    """Every shipped kernel × config × dtype, gathered from the kernel files."""
    import importlib

    cases: list[AotCase] = []
    for module in KERNEL_MODULES:
        cases += importlib.import_module(module).aot_cases()
    return cases


def _compile_row(args: tuple[int, int]) -> tuple[int, int, int, int, str]:
    # runs in a worker: returns plain values (kernels do not pickle)
    index, arch = args
    r = compile_case(all_cases()[index], arch)
    return r.arch, r.registers, r.shared, r.spills, r.error


def check(archs: tuple[int, ...] = ARCHS, workers: int | None = None) -> list[AotResult]:
    """Compile all_cases() for every arch, in parallel processes (compiles are CPU-bound, one per core)."""
    from concurrent.futures import ProcessPoolExecutor

    cases = all_cases()
    jobs = [(i, arch) for i in range(len(cases)) for arch in archs]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        rows = [_compile_row(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(_compile_row, jobs))
    return [AotResult(cases[i], *row) for (i, _), row in zip(jobs, rows)]


def format_table(results: list[AotResult]) -> str:
    """A markdown table, one row per compile; FAIL marks errors and spills."""
    lines = ["| kernel | config | dtype | arch | registers | shared (B) | spills (B) | status |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | --- |"]
    for r in results:
        status = f"FAIL: {r.error}" if r.error else ("FAIL: spills" if r.spills else "ok")
        lines.append(f"| {r.case.name} | {r.case.config} | {r.case.dtype} | sm_{r.arch} | {r.registers} | "
                     f"{r.shared} | {r.spills} | {status} |")
    return "\n".join(lines)


# The kernel files that ship Triton kernels; each defines aot_cases().
KERNEL_MODULES: list[str] = ["fused_s2s.triton.lstm", "fused_s2s.triton.lstm_grid", "fused_s2s.triton.cells",
                             "fused_s2s.triton.decoder_step", "fused_s2s.triton.attention",
                             "fused_s2s.triton.attention_additive"]
