"""The benchmark report end to end on this machine: the code path of `--quick`, on the test-sized grid."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from fused_s2s.bench import report  # noqa: E402
from fused_s2s.bench.cases import grid  # noqa: E402
from fused_s2s.bench.compare import compare, load_report  # noqa: E402


def test_quick_grid_is_ci_sized():
    quick = grid("quick", ["float32"])
    bf16 = [c for c in quick if c.dtype == "bfloat16"]  # issue 14's bf16 rows, always in the grid
    assert sorted((c.batch, c.hidden, c.backward) for c in bf16) == sorted(
        (b, h, bwd) for b, h in ((16, 256), (64, 256), (16, 512)) for bwd in (False, True))
    assert not any(c.reference for c in bf16)
    assert [c for c in grid("quick", ["float32", "bfloat16"]) if c.dtype == "bfloat16"] != bf16  # no duplicates
    quick = [c for c in quick if c.dtype == "float32"]
    assert len(quick) <= 16
    assert {c.backward for c in quick} == {False, True} and any(c.varlen for c in quick)
    assert any(c.reference for c in quick) and all(c.batch * c.hidden <= 64 * 512 for c in quick)
    cells = grid("quick", ["float32"], cells=("lstm", "gru", "rnn_tanh"))
    assert {c.cell for c in cells} == {"lstm", "gru", "rnn_tanh"} and len(cells) <= 30
    # LSTM ids unchanged: the gate matches rows by them
    assert [c for c in cells if c.cell == "lstm" and c.dtype == "float32"] == quick
    assert {c.id.split()[0] for c in cells if c.cell != "lstm"} == {"gru", "rnn"}


def test_report_writes_table_json_and_png(tmp_path, capsys):
    out = tmp_path / "r.json"
    report.main(["--grid", "smoke", "--json", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert "| case | impl |" in text and "fused-cpu" in text and "| reference |" in text

    data = load_report(out)  # valid JSON in the gate's layout
    env = data["machine_info"]
    for key in ("device", "device_name", "torch", "triton", "cpu", "git_commit", "machine_kind"):
        assert key in env
    rows = data["benchmarks"]
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names))
    lstm = [r for r in rows if r["params"].get("op") != "decoder_step"]
    fused = [r for r in lstm if r["extra_info"]["impl"].startswith("fused-")]
    # LSTM rows against nn.LSTM (the key the committed baselines use), GRU/RNN rows against nn.GRU / nn.RNN.
    vs = {r["name"]: "nn_lstm" if r["params"]["cell"] == "lstm" else "torch" for r in lstm}
    assert fused and all(r["extra_info"][f"speedup_vs_{vs[r['name']]}"] > 0 for r in fused)
    assert all(r["extra_info"][f"max_abs_diff_vs_{vs[r['name']]}"] < 1e-4 for r in lstm)
    assert {r["params"]["cell"] for r in fused} == {"lstm", "gru", "rnn_tanh"}
    assert "| nn.GRU " in text and "| nn.RNN " in text  # the baseline column names the torch module
    # The decoder's greedy step (fused_s2s/bench/decoder_speed.py) joins the report, against eager PyTorch.
    decoder = [r for r in rows if r["params"].get("op") == "decoder_step" and "speedup_vs_eager" in r["extra_info"]]
    assert decoder and all(r["extra_info"]["max_abs_diff_vs_eager"] < 1e-4 for r in decoder)
    assert "| greedy step B1 " in text
    bwd = [r for r in fused if r["params"]["backward"]]
    assert bwd and all(r["extra_info"]["saved_bytes"] > 0 and r["extra_info"]["saved_bytes_ratio"] > 0 for r in bwd)

    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    # A report compared with itself passes the gate.
    assert compare(data, json.loads(out.read_text()), 0.1).ok()


def test_make_baseline_keeps_the_median_run():
    from fused_s2s.bench.make_baseline import merge

    def run(speedup: float) -> dict:
        return {"settings": {}, "benchmarks": [
            {"name": "nn.LSTM c", "extra_info": {"impl": "nn.LSTM"}},
            {"name": "fused-cpu c", "stats": {"median": 1 / speedup}, "extra_info": {"speedup_vs_nn_lstm": speedup}}]}

    merged = merge([run(1.0), run(1.2), run(0.9)])
    row = merged["benchmarks"][1]
    assert row["extra_info"]["speedup_vs_nn_lstm"] == 1.0 and row["stats"]["median"] == 1.0
    assert row["extra_info"]["baseline_runs"] == [1.0, 1.2, 0.9]
