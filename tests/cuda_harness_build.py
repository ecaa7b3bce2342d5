"""Builds and runs the CPU harness of the CUDA C++ kernels (DESIGN.md §2), shared by tests/test_cuda_harness*.py.

Every kernel file the harness program links (csrc/cuda/harness/main.cpp dispatches to all of them) is compiled
as C++20 with -DFS2S_CPU_HARNESS and -fsanitize=address,undefined, one object per source in parallel, then
linked. The program is built once per test process (`build_harness` caches it), whichever test module asks
first. `run_harness` writes the inputs as raw files, runs one command and reads the outputs back.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
CUDA_DIR = REPO_ROOT / "csrc" / "cuda"
# Kernel sources (.cu, compiled with -x c++) and the harness' own C++ files.
KERNEL_SOURCES = [CUDA_DIR / "lstm_persistent.cu", CUDA_DIR / "attention.cu", CUDA_DIR / "decoder_step.cu"]
HARNESS_SOURCES = [CUDA_DIR / "harness" / "lstm_harness.cpp", CUDA_DIR / "harness" / "attention_harness.cpp",
                   CUDA_DIR / "harness" / "main.cpp"]
SOURCES = KERNEL_SOURCES + HARNESS_SOURCES
CXXFLAGS = ["-std=c++20", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-DFS2S_CPU_HARNESS",
            "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-pthread"]
DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
RUN_TIMEOUT_S = 120  # a deadlocked barrier fails the test instead of hanging it


@functools.cache
def _build() -> tuple[Path | None, str]:
    """(program, "") or (None, why not): a reason starting "harness " is a failed build, any other a skip."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return None, "no C++ compiler (g++) found: the CUDA harness cannot be built"
    build = Path(tempfile.mkdtemp(prefix="fs2s_cuda_harness_"))
    atexit.register(shutil.rmtree, build, True)
    probe = build / "probe.cpp"
    probe.write_text("#include <barrier>\nint main() { std::barrier<> b(1); b.arrive_and_wait(); }\n")
    proc = subprocess.run([cxx, *CXXFLAGS, str(probe), "-o", str(build / "probe")], capture_output=True, text=True)
    if proc.returncode != 0:
        return None, f"{cxx} cannot build C++20 std::barrier with -fsanitize=address,undefined: {proc.stderr[-400:]}"
    includes = [f"-I{REPO_ROOT / 'csrc' / 'include'}", f"-I{CUDA_DIR}"]
    jobs = []
    for src in SOURCES:
        obj = build / (src.stem + ".o")
        lang = ["-x", "c++"] if src.suffix == ".cu" else []
        cmd = [cxx, *CXXFLAGS, *includes, *lang, "-c", str(src), "-o", str(obj)]
        jobs.append((cmd, obj, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    failures = []
    for cmd, _, job in jobs:
        out, _ = job.communicate()
        if job.returncode != 0:
            failures.append(f"harness compile failed:\n{' '.join(cmd)}\n{out}")
    if failures:
        return None, "\n".join(failures)
    exe = build / "fs2s_cuda_harness"
    cmd = [cxx, *CXXFLAGS, *(str(obj) for _, obj, _ in jobs), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return None, f"harness link failed:\n{' '.join(cmd)}\n{proc.stderr}"
    return exe, ""


def build_harness() -> Path:
    """The ASan/UBSan harness program. Skips the test when g++ lacks C++20 std::barrier; fails it when the build
    fails (the outcome is cached either way: a broken kernel is compiled once, not once per test)."""
    exe, why = _build()
    if exe is None:
        if why.startswith("harness "):
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return exe


def run_harness(exe: Path, workdir: Path, command: str, args: dict[str, int], inputs: dict[str, torch.Tensor],
                outputs: dict[str, tuple[tuple[int, ...], torch.dtype]], expect_ok: bool = True):
    """Write args and inputs to workdir, run `exe command workdir`, read the outputs back."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "args.txt").write_text("".join(f"{k} {int(v)}\n" for k, v in args.items()))
    for name, tensor in inputs.items():
        tensor = tensor.contiguous()
        raw = tensor.view(torch.int16) if tensor.dtype in (torch.bfloat16, torch.float16) else tensor
        (workdir / f"{name}.bin").write_bytes(raw.numpy().tobytes())
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="print_stacktrace=1")
    proc = subprocess.run([str(exe), command, str(workdir)], capture_output=True, text=True, env=env,
                          timeout=RUN_TIMEOUT_S)
    if not expect_ok:
        return proc
    assert proc.returncode == 0, f"harness {command} exited with {proc.returncode}:\n{proc.stderr[-4000:]}"
    out = {}
    for name, (shape, dtype) in outputs.items():
        data = bytearray((workdir / f"{name}.bin").read_bytes())
        out[name] = torch.frombuffer(data, dtype=dtype).reshape(shape).clone() if data else torch.empty(0, dtype=dtype)
    return out
