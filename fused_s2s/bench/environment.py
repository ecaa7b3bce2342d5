"""What a benchmark result is tagged with: device, versions, CPU/GPU names, commit."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Optional

import torch

# The A/B gate (ab.py) runs builds installed outside any checkout and names their commit through this variable.
COMMIT_ENV = "FUSED_S2S_BENCH_COMMIT"


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> Optional[str]:
    """The commit of the fused_s2s being measured: $FUSED_S2S_BENCH_COMMIT if set (the A/B gate's builds),
    else HEAD of the git checkout the imported package lives in (an editable install), with '-dirty' if
    tracked files changed; None for an installed package outside a checkout."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    import fused_s2s

    package_dir = Path(fused_s2s.__file__).resolve().parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=package_dir, capture_output=True,
                             text=True, check=True).stdout.strip()
        if not (Path(top) / "fused_s2s").resolve() == package_dir:
            return None  # some other repository happens to hold the install
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=top, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=top,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package_path() -> str:
    import fused_s2s

    return str(Path(fused_s2s.__file__).resolve().parent)


def machine_kind(device: torch.device) -> str:
    """A file-name slug for the kind of machine a baseline holds for, e.g. 'cpu-amd-epyc-avx512-2t'.

    Ratios depend on the device model, the CPU's vector capability and the thread count, not on the host.
    """
    if device.type == "cuda":
        name = "cuda-" + torch.cuda.get_device_name(device)
    else:
        name = f"cpu-{cpu_name()}-{torch.backends.cpu.get_cpu_capability()}-{torch.get_num_threads()}t"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def environment(device: torch.device) -> dict[str, object]:
    """Device, versions, CPU and GPU names and commit."""
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "machine_kind": machine_kind(device),
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "fused_s2s": _version("fused-s2s"),
        "fused_s2s_path": _package_path(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "num_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "fused_s2s_backend_env": os.environ.get("FUSED_S2S_BACKEND"),
        "ci": os.environ.get("CI") == "true",
    }


def default_device() -> torch.device:
    """CUDA when a GPU is present, else the CPU: where the report runs."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
