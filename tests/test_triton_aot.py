"""Every shipped Triton kernel × config × dtype compiles ahead of time for sm_80 and sm_90 with no spills
(scripts/triton_aot_check.py; no GPU needed). Runs in the main pytest process: the interpreter must be off."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles kernels: needs the interpreter off")
def test_every_triton_kernel_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    pytest.importorskip("triton")
    from fused_s2s.triton.aot import ARCHS, all_cases

    out = tmp_path / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "scripts/triton_aot_check.py", "--json", str(out)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1800)
    print(res.stdout)  # the resource table, shown with pytest -s or on failure
    assert res.returncode == 0, f"compile errors or spills:\n{res.stdout}\n{res.stderr[-3000:]}"
    rows = json.loads(out.read_text())
    got = {(r["kernel"], r["config"], r["dtype"], r["arch"]) for r in rows}
    want = {(c.name, c.config, c.dtype, f"sm_{a}") for c in all_cases() for a in ARCHS}
    assert got == want
    assert {"fp32", "fp16", "bf16"} <= {r["dtype"] for r in rows}
    assert all(r["spill_bytes"] == 0 and r["registers"] > 0 and not r["error"] for r in rows)
