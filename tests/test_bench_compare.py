"""The one-file regression gate (fused_s2s.bench.compare / fused-s2s-bench compare) on hand-made reports."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fused_s2s.bench.cli import main
from fused_s2s.bench.compare import check_comparable, compare, parse_fraction

SPEEDUPS = {"fused-cpu fwd B16 T50 H256 L1 uni float32": 0.95,
            "fused-cpu fwd+bwd B16 T50 H256 L1 uni float32": 1.10,
            "fused-cpu fwd+bwd B16 T50 H256 L2 bi varlen float32": 1.90}


def report(speedups: dict[str, float], kind: str = "cpu-test", gate: bool = True, grid: str = "quick") -> dict:
    """A minimal report in the layout benchmarks/report.py writes (plus an nn.LSTM row, never compared)."""
    rows = [{"group": "g", "name": "nn.LSTM fwd B16 T50 H256 L1 uni float32", "params": {},
             "stats": {"median": 1e-3}, "extra_info": {"impl": "nn.LSTM"}}]
    rows += [{"group": "g", "name": n, "params": {}, "stats": {"median": 1e-3 / s},
              "extra_info": {"impl": n.split()[0], "speedup_vs_nn_lstm": s, "gate": gate}}
             for n, s in speedups.items()]
    return {"machine_info": {"machine_kind": kind}, "settings": {"grid": grid}, "benchmarks": rows}


def run_cli(tmp_path: Path, base: dict, cur: dict, *extra: str, capsys) -> tuple[int, str]:
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "cur.json").write_text(json.dumps(cur))
    code = main(["compare", str(tmp_path / "base.json"), str(tmp_path / "cur.json"), *extra])
    return code, capsys.readouterr().out


def test_unchanged_run_passes(tmp_path, capsys):
    code, out = run_cli(tmp_path, report(SPEEDUPS), report(SPEEDUPS), "--max-slowdown", "10%", capsys=capsys)
    assert code == 0, out
    assert "gate: PASS (3 ok, 0 regressed, 0 missing, 0 new)" in out


def test_case_20_percent_slower_fails_naming_it(tmp_path, capsys):
    slow = "fused-cpu fwd+bwd B16 T50 H256 L1 uni float32"
    # 20% slower: the case takes 1.2x its time, so its speedup over nn.LSTM drops by the factor 1.2.
    cur = {**SPEEDUPS, slow: SPEEDUPS[slow] / 1.2}
    code, out = run_cli(tmp_path, report(SPEEDUPS), report(cur), "--max-slowdown", "10%", capsys=capsys)
    assert code == 1
    regressed = out.split("REGRESSED (1):", 1)[1]
    assert slow in regressed and "-16.7%" in regressed
    assert [n for n in SPEEDUPS if n in regressed] == [slow]  # only that row
    assert "gate: FAIL" in out


def test_noise_within_threshold_passes(tmp_path, capsys):
    cur = {n: s * f for (n, s), f in zip(SPEEDUPS.items(), (0.93, 1.08, 0.95))}  # -7%, +8%, -5%
    code, out = run_cli(tmp_path, report(SPEEDUPS), report(cur), "--max-slowdown", "10%", capsys=capsys)
    assert code == 0, out
    # ... and the same noise fails a tighter gate, so the threshold is what decides.
    code, out = run_cli(tmp_path, report(SPEEDUPS), report(cur), "--max-slowdown", "6%", capsys=capsys)
    assert code == 1 and "fused-cpu fwd B16 T50 H256 L1 uni float32: speedup" in out


def test_missing_case_is_reported_and_fails(tmp_path, capsys):
    gone = "fused-cpu fwd+bwd B16 T50 H256 L2 bi varlen float32"
    cur = {n: s for n, s in SPEEDUPS.items() if n != gone}
    code, out = run_cli(tmp_path, report(SPEEDUPS), report(cur), capsys=capsys)
    assert code == 1
    assert f"| {gone} | | | | MISSING from the current run |" in out and f"MISSING (1): {gone}" in out
    code, out = run_cli(tmp_path, report(SPEEDUPS), report(cur), "--allow-missing", capsys=capsys)
    assert code == 0 and "1 missing (allowed)" in out


def test_new_case_is_flagged_but_passes(tmp_path, capsys):
    added = "fused-cpu fwd B64 T50 H256 L1 uni float32"
    code, out = run_cli(tmp_path, report(SPEEDUPS), report({**SPEEDUPS, added: 0.5}), capsys=capsys)
    assert code == 0
    assert f"NEW (1): {added}" in out


def test_ungated_rows_never_fail():
    c = compare(report(SPEEDUPS, gate=False), report({n: s / 2 for n, s in SPEEDUPS.items()}, gate=False), 0.1)
    assert c.ok() and not c.regressed and len(c.passed) == 3


def test_other_machine_kind_or_grid_is_an_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="cpu-a.*cpu-b"):
        check_comparable(report(SPEEDUPS, kind="cpu-a"), report(SPEEDUPS, kind="cpu-b"))
    code, out = run_cli(tmp_path, report(SPEEDUPS, grid="full"), report(SPEEDUPS), capsys=capsys)
    assert code == 2 and "'full' grid" in out and "'quick' grid" in out and "Traceback" not in out


@pytest.mark.parametrize("text,value", [("10%", 0.1), ("0.25", 0.25), ("0%", 0.0), (" 12.5% ", 0.125)])
def test_parse_fraction(text, value):
    assert parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["100%", "-5%", "ten", "1.5"])
def test_parse_fraction_rejects(text):
    with pytest.raises(ValueError, match="--max-slowdown"):
        parse_fraction(text)


def test_unreadable_input_exits_2(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "empty.json").write_text("{}")
    assert main(["compare", str(tmp_path / "bad.json"), str(tmp_path / "empty.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().out
    (tmp_path / "ok.json").write_text(json.dumps(report(SPEEDUPS)))
    assert main(["compare", str(tmp_path / "ok.json"), str(tmp_path / "empty.json")]) == 2
    assert "not a benchmark report" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "ok.json"), str(tmp_path / "absent.json")]) == 2
    out = capsys.readouterr().out
    assert "absent.json: no such file" in out and len(out.strip().splitlines()) == 1


def test_module_entry_point(tmp_path):
    """`python -m fused_s2s.bench compare ...` exits with the gate's code."""
    (tmp_path / "a.json").write_text(json.dumps(report(SPEEDUPS)))
    (tmp_path / "b.json").write_text(json.dumps(report({n: s / 2 for n, s in SPEEDUPS.items()})))
    proc = subprocess.run([sys.executable, "-m", "fused_s2s.bench", "compare", str(tmp_path / "a.json"),
                           str(tmp_path / "b.json"), "--max-slowdown", "10%"], capture_output=True, text=True)
    assert proc.returncode == 1 and "REGRESSED (3)" in proc.stdout
