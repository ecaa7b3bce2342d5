"""The CUDA C++ kernels compile for sm_80 and sm_90 without warnings and without register spills, and their
torch bindings compile against torch's headers and find the kernels they launch.

Static evidence only: nothing here runs on a GPU. With a CPU-only torch and nvcc present, CMakeLists.txt
defines the target `cuda_compile_check`, which compiles every csrc/cuda/*.cu with -Werror and
-Xptxas -v,-warn-spills, and every csrc/cuda_bindings/*.cu against torch's headers; these tests configure the
project in a temporary build dir once, build that target and read ptxas' per-function report and the objects'
symbols. With a CUDA build of torch the .cu files are linked into the extension
instead (and the GPU tests exercise them), so the target does not exist and this test skips.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
CUDA_ARCHS = ("sm_80", "sm_90")


def find_nvcc() -> Optional[str]:
    """nvcc on PATH, else the toolkit's default location; None when neither exists."""
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() and os.access(default, os.X_OK) else None


@dataclass
class PtxasFunction:
    """ptxas' resource report for one function compiled for one architecture."""

    name: str
    arch: str
    registers: Optional[int] = None
    spill_stores: Optional[int] = None
    spill_loads: Optional[int] = None
    stack_frame: Optional[int] = None


_ARCH_RE = re.compile(r"ptxas info\s*: Compiling (?:entry )?function '([^']+)' for '(sm_\d+a?)'")
_PROPS_RE = re.compile(r"ptxas info\s*: Function properties for (\S+)")
_SPILL_RE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS_RE = re.compile(r"ptxas info\s*: Used (\d+) registers")


def parse_ptxas(output: str) -> list[PtxasFunction]:
    """Every function ptxas -v reported, with its registers and spills, in order.

    ptxas prints, per architecture and function: "Compiling entry function 'F' for 'sm_XX'", then
    "Function properties for F" followed by "N bytes stack frame, S bytes spill stores, L bytes spill loads",
    then "Used R registers, ...". Non-entry (not inlined) functions get a properties block too.
    """
    functions: dict[tuple[str, str], PtxasFunction] = {}
    arch: Optional[str] = None
    current: Optional[PtxasFunction] = None  # the entry function whose "Used N registers" comes next
    pending: Optional[PtxasFunction] = None  # the function whose spill line comes next
    for line in output.splitlines():
        if m := _ARCH_RE.search(line):
            name, arch = m.group(1), m.group(2)
            current = functions.setdefault((name, arch), PtxasFunction(name, arch))
        elif (m := _PROPS_RE.search(line)) and arch is not None:
            pending = functions.setdefault((m.group(1), arch), PtxasFunction(m.group(1), arch))
        elif (m := _SPILL_RE.search(line)) and pending is not None:
            pending.stack_frame, pending.spill_stores, pending.spill_loads = map(int, m.groups())
            pending = None
        elif (m := _REGS_RE.search(line)) and current is not None:
            current.registers = int(m.group(1))
            current = None
    return list(functions.values())


def demangle(names: list[str]) -> dict[str, str]:
    """C++ names for mangled ones, through c++filt when it is installed (else the names unchanged)."""
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def format_table(functions: list[PtxasFunction]) -> str:
    """A markdown table: function, arch, registers, spills."""
    pretty = demangle(sorted({f.name for f in functions}))
    rows = ["| function | arch | registers | spill stores / loads (bytes) | stack frame (bytes) |",
            "| --- | --- | --- | --- | --- |"]
    for f in sorted(functions, key=lambda f: (pretty[f.name], f.arch)):
        rows.append(f"| {pretty[f.name]} | {f.arch} | {f.registers if f.registers is not None else '—'} "
                    f"| {f.spill_stores} / {f.spill_loads} | {f.stack_frame} |")
    return "\n".join(rows)


def run(cmd: list[str], cwd: Path) -> str:
    """Run cmd, return its combined output; fail the test with that output if it exits non-zero."""
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=1800)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout}"
    return proc.stdout


@dataclass
class CheckBuild:
    """The `cuda_compile_check` target built once for this module: every object it could build, and why not."""

    build_dir: Path
    returncode: int
    output: str


@pytest.fixture(scope="module")
def cuda_check_build(tmp_path_factory) -> CheckBuild:
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (neither on PATH nor /usr/local/cuda/bin/nvcc): CUDA C++ not compiled")
    if torch.version.cuda is not None:
        pytest.skip(f"torch is a CUDA build ({torch.version.cuda}): the .cu files are compiled and linked into "
                    "the extension, so there is no separate cuda_compile_check target")
    if not list((REPO_ROOT / "csrc" / "cuda").glob("*.cu")):
        pytest.skip("no csrc/cuda/*.cu files to compile")
    tmp_path = tmp_path_factory.mktemp("cuda_compile")
    build_dir = tmp_path / "build"
    ninja = shutil.which("ninja") is not None
    run(["cmake", "-S", str(REPO_ROOT), "-B", str(build_dir), *(["-G", "Ninja"] if ninja else []),
         f"-DPython_EXECUTABLE={sys.executable}", f"-DFS2S_NVCC={nvcc}"], cwd=tmp_path)
    # Keep going past a failed file, so each test below reports on the objects it is about.
    keep_going = ["-k", "0"] if ninja else ["-k"]
    proc = subprocess.run(["cmake", "--build", str(build_dir), "--target", "cuda_compile_check", "--", *keep_going],
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
    return CheckBuild(build_dir, proc.returncode, proc.stdout)


def test_cuda_kernels_compile_without_spills(cuda_check_build: CheckBuild) -> None:
    output = cuda_check_build.output
    assert cuda_check_build.returncode == 0, f"cuda_compile_check failed:\n{output}"
    functions = parse_ptxas(output)
    assert functions, f"no ptxas -v report found in the build output:\n{output}"
    print("\nptxas resource usage:\n" + format_table(functions))
    archs = {f.arch for f in functions}
    assert archs >= set(CUDA_ARCHS), f"expected ptxas reports for {CUDA_ARCHS}, got {sorted(archs)}"
    for f in functions:
        assert f.spill_stores is not None and f.spill_loads is not None, \
            f"{f.name} ({f.arch}): no spill line in the ptxas report:\n{output}"
        assert (f.spill_stores, f.spill_loads) == (0, 0), \
            f"{f.name} ({f.arch}): {f.spill_stores} bytes spill stores, {f.spill_loads} bytes spill loads " \
            "(expected 0 bytes spill stores and 0 bytes spill loads)"


def symbols(obj: Path) -> tuple[set[str], set[str]]:
    """(undefined, defined) mangled symbols of an object file, from nm."""
    out = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout
    undefined, defined = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U":
            undefined.add(parts[1])
        elif len(parts) == 3 and parts[1] in "TW":
            defined.add(parts[2])
    return undefined, defined


def test_cuda_bindings_compile_against_torch_and_find_their_kernels(cuda_check_build: CheckBuild) -> None:
    """Each csrc/cuda_bindings/*.cu compiles against this torch's headers (nvcc, -Werror, the flags of the CUDA
    build), and every fused_s2s kernel it launches is defined, with an external host stub, in a kernel object:
    the link a CUDA build would do. A type error in a binding, or kernel stubs left static (nvcc >= 12.8 without
    -static-global-template-stub=false), fails here."""
    bindings = sorted((REPO_ROOT / "csrc" / "cuda_bindings").glob("*.cu"))
    if not bindings:
        pytest.skip("no csrc/cuda_bindings/*.cu files")
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) not found: cannot read the objects' symbols")
    check_dir = cuda_check_build.build_dir / "cuda_check"
    kernel_defined: set[str] = set()
    for cu in sorted((REPO_ROOT / "csrc" / "cuda").glob("*.cu")):
        obj = check_dir / f"{cu.stem}.o"
        if obj.is_file():
            kernel_defined |= symbols(obj)[1]
    for cu in bindings:
        obj = check_dir / "bindings" / f"{cu.stem}.o"
        assert obj.is_file(), f"{cu.name} did not compile:\n{cuda_check_build.output}"
        wanted = sorted(s for s in symbols(obj)[0] if s.startswith("_ZN9fused_s2s4cuda"))
        assert wanted, f"{cu.name} launches no fused_s2s::cuda kernel: nothing checked"
        missing = [s for s in wanted if s not in kernel_defined]
        assert not missing, (f"{cu.name} needs kernels that no csrc/cuda/*.cu object defines with an external "
                             f"stub: {list(demangle(missing).values())}\n{cuda_check_build.output}")


def test_parse_ptxas_reads_registers_and_spills() -> None:
    """The parser itself (runs without nvcc), so a spill could not slip past an unread report."""
    output = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z1kPf' for 'sm_80'
ptxas info    : Function properties for _Z1kPf
    8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers, 360 bytes cmem[0]
ptxas info    : Compile time = 1.0 ms
ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'
ptxas info    : Function properties for _Z1kPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers
"""
    assert parse_ptxas(output) == [PtxasFunction("_Z1kPf", "sm_80", 255, 12, 16, 8),
                                   PtxasFunction("_Z1kPf", "sm_90", 40, 0, 0, 0)]
