"""scripts/gpu_check.sh and its benchmark (fused_s2s/bench/gpu_check.py) without a GPU.

The script runs with stand-ins for python, nvidia-smi, nvcc and compute-sanitizer (small shell scripts that
record their arguments), so what is tested is its own logic: every stage runs in order, a failing stage does
not stop the later ones, the summary names each exit code, the budget cuts stages, the exit status. The
benchmark runs its --dry-run mode (tiny shapes, CPU backends) through the same code as on a GPU, writing the
JSON and the table. What only a GPU shows (the build with CUDA, the sanitizers, the timings) is left to
running the script there.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fused_s2s.bench import gpu_check

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"
STAGES = ["environment", "build", "cuda_kernels_registered", "cuda_gpu_tests", "memcheck", "racecheck", "benchmark",
          "cuda_other_tests", "triton_gpu_tests"]


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(0o755)


def run_script(tmp_path: Path, python_body: str, budget_s: int = 470) -> tuple[subprocess.CompletedProcess, str]:
    """gpu_check.sh with stand-in tools on PATH; returns the process and summary.txt."""
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("bash and coreutils' timeout are needed to run the script")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    for tool in ("nvidia-smi", "nvcc", "compute-sanitizer"):
        _stub(bin_dir / tool, f'echo "{tool} $*" >> "{calls}"\n'
                              f'if [[ "$1" == --tool ]]; then shift 2; while [[ "$1" == --* ]]; do '
                              f'[[ "$1" == --error-exitcode || "$1" == --print-limit || "$1" == --kernel-name ]] '
                              f'&& shift; shift; done; exec "$@"; fi')
    _stub(bin_dir / "python", f'echo "python $*" >> "{calls}"\n{python_body}')
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=str(bin_dir / "python"),
               GPU_CHECK_BUDGET_S=str(budget_s))
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""
    return proc, summary


def stage_codes(summary: str) -> dict[str, str]:
    rows = [line.split() for line in summary.splitlines()[2:-1]]
    return {r[0]: r[1] for r in rows}


def test_script_is_valid_bash_and_shellcheck_clean():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (bash -n passed)")
    proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_every_stage_runs_and_success_exits_zero(tmp_path):
    proc, summary = run_script(tmp_path, "exit 0")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert list(stage_codes(summary)) == STAGES and set(stage_codes(summary).values()) == {"0"}, summary
    assert summary.rstrip().endswith("0 of 9 stages failed")
    calls = (tmp_path / "calls.txt").read_text()
    # never a download: the build is pip --no-index --no-build-isolation --no-deps
    assert "-m pip install --no-build-isolation --no-deps --no-index -e ." in calls
    assert "compute-sanitizer --tool memcheck --error-exitcode 1" in calls
    assert "compute-sanitizer --tool racecheck --error-exitcode 1" in calls
    assert "-m fused_s2s.bench.gpu_check --out" in calls
    assert "pytest -q -p no:cacheprovider -rs tests/test_cuda_lstm.py\n" in calls
    other = next(line for line in calls.splitlines() if "test_cuda_harness.py" in line)
    assert "test_cuda_compile.py" in other and "test_cuda_lstm.py " not in other + " "
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert all(f"=== {s}: exit 0" in log for s in STAGES)


def test_a_failing_stage_does_not_stop_the_later_ones(tmp_path):
    # the build fails (exit 3) and the benchmark fails (exit 4); everything after each still runs
    proc, summary = run_script(tmp_path, 'case "$*" in *"pip install"*) exit 3;; *gpu_check*) exit 4;; esac\nexit 0')
    assert proc.returncode == 1
    codes = stage_codes(summary)
    assert list(codes) == STAGES
    assert codes["build"] == "3" and codes["benchmark"] == "4" and codes["triton_gpu_tests"] == "0", summary
    assert summary.rstrip().endswith("2 of 9 stages failed")


def test_a_stage_past_its_timeout_is_stopped_and_reported(tmp_path):
    # GPU_CHECK_BUDGET_S 30: each stage may take at most 30 - elapsed - 15 s; the stand-in build sleeps past it
    proc, summary = run_script(tmp_path, 'case "$*" in *"pip install"*) sleep 60;; esac\nexit 0', budget_s=30)
    assert proc.returncode == 1
    codes = stage_codes(summary)
    assert codes["build"] == "124" and "(timed out)" in summary
    assert all(codes[s] == "125" for s in STAGES[2:]), summary  # nothing left of the budget after it
    assert "(skipped: budget spent)" in summary


# ---- the benchmark module ----

def test_benchmark_defaults_are_the_issues_cases():
    args = gpu_check.parse_args([])
    assert args.backends == ["cuda", "triton"] and args.out == Path("gpu-check-out") and not args.dry_run
    assert gpu_check.GPU_SHAPES == ((16, 1024, 768), (64, 256, 512), (1, 512, 1024))
    assert set(gpu_check.DTYPES) == {"bf16", "fp16"} and gpu_check.PASSES == ("fwd", "fwd+bwd")


def test_benchmark_dry_run_writes_json_and_table_with_errors_recorded(tmp_path):
    """--dry-run on the CPU with a backend that cannot run here ('cuda'): its rows carry the error, the other
    backends are still timed and compared with nn.LSTM."""
    result = gpu_check.main(["--dry-run", "--out", str(tmp_path), "--backends", "cpu,cuda"])
    rows = json.loads((tmp_path / gpu_check.JSON_NAME).read_text())["rows"]
    assert rows == result["rows"]
    n_cases = len(gpu_check.DRY_SHAPES) * len(gpu_check.DTYPES) * len(gpu_check.PASSES)
    assert len(rows) == 3 * n_cases
    by_impl = {impl: [r for r in rows if r["impl"] == impl] for impl in ("nn.LSTM", "FusedLSTM[cpu]",
                                                                         "FusedLSTM[cuda]")}
    assert all(len(v) == n_cases for v in by_impl.values())
    assert {(r["B"], r["T"], r["H"], r["dtype"], r["pass"]) for r in by_impl["nn.LSTM"]} == \
        {(B, T, H, d, p) for B, T, H in gpu_check.DRY_SHAPES for d in gpu_check.DTYPES for p in gpu_check.PASSES}
    for r in by_impl["nn.LSTM"] + by_impl["FusedLSTM[cpu]"]:
        assert r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"] and r["repeats"] >= 1, r
        assert r["vs_cudnn"] > 0 and r["max_abs_diff"] < 0.05 and r["note"] == "", r
    for r in by_impl["FusedLSTM[cuda]"]:
        assert r["median_ms"] is None and r["note"].startswith("error: RuntimeError: backend 'cuda' is "
                                                               "unavailable"), r
    table = (tmp_path / gpu_check.MD_NAME).read_text().splitlines()
    assert table[2].startswith("| B | T | H | dtype | pass | impl |")
    assert len([line for line in table if line.startswith("| ") and "FusedLSTM" in line]) == 2 * n_cases


def test_benchmark_without_a_gpu_says_so():
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        gpu_check.main(["--out", "unused"])
