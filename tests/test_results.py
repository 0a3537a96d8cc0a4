"""The run record: atomic, readable, honest about how a run ended, and read back typed by one reader that
keeps the files written before it readable."""

import csv
import io
import json
from pathlib import Path

import pytest

from llmc.results import (Environment, Metric, MethodInfo, ModelInfo, QuantCost, ResultsError, RunRecord, RunResult,
                          read_result)
from llmc_slm.tracks.records import InferenceSection


def test_atomic_writes_are_readable_by_others(tmp_path):
    import os
    import stat
    from llmc.utils import atomic_write_json
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".*.tmp"))


def test_run_record_status_lifecycle(tmp_path):
    rec = RunRecord.start(tmp_path / "run.json", task_id="t")
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "running"
    rec.set_metric("pretrain", "wikitext2", {"ppl": 21.6})
    rec.finish("failed", "boom")
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["status"] == "failed" and data["error"] == "boom"
    assert data["metrics"]["pretrain"]["wikitext2"]["ppl"] == 21.6 and "finished" in data


# ------------------------------------------------------------------------------ typed results, one reader
DATA = Path(__file__).resolve().parent / "data" / "results_v1"


def test_results_module_imports_no_torch():
    import subprocess
    import sys
    code = "import sys, llmc.results; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_read_result_types_a_record_written_before_the_change():
    """tests/data/results_v1: records written by the code before the typed results (582e471): a float run,
    OmniQuant W4A8 with its method, quant_cost and Track 2 sections, RTN W4A8 from before ``method``."""
    omni = read_result(DATA / "omniquant_w4a8.json")
    assert omni.status == "complete" and omni.schema_version == 1 and not omni.is_float
    assert omni.model.name == "smollm2-135m-instruct" and omni.model.arch["kv_heads"] == 3
    assert omni.model.sha256.startswith("b179c952") and omni.environment.describe() == "CPU Intel(R) Xeon(R) Processor"
    assert omni.method == MethodInfo("OmniQuant", "OmniQuant", True) and omni.calibrated is True
    assert omni.quant["special"]["keep_best"] is False
    cost = omni.quant_cost
    assert cost.time_s == 5412.5 and cost.time_min == pytest.approx(90.208, abs=1e-3)
    assert cost.memory_kind == "cpu_peak_rss" and cost.stages_s["quantize_weights"] == 3.4
    wiki = omni.at("fake_quant")["wikitext2"]
    assert wiki.ppl == 19.875 and wiki.windows == 40 and wiki.windows_in_split == 141 and wiki.extra["nll"] > 0
    arc = omni.at("pretrain")["arc_easy"]
    assert arc.table_metric == "acc_norm" and arc.table_value == 0.488 and arc.n == 500 and arc.subset is True
    assert arc.get("acc_norm") == 0.488 and arc.extra["task"] == "arc_easy"
    assert len(omni.blocks) == 30 and omni.timings["load"] == 4.1
    assert set(omni.sections) == {"inference"}
    sec = InferenceSection.of(omni)
    assert sec.slmq_infer("measured") == omni.sections["inference"]["scores"]["measured"]["slmq_infer"]
    rtn = read_result(DATA / "rtn_w4a8.json")          # no ``method``: from its config, RTN uncalibrated
    assert rtn.method.label == "RTN" and rtn.calibrated is False and rtn.method.extra == {"from_config": True}
    fp = read_result(DATA / "fp16.json")
    assert fp.is_float and fp.method is None and fp.calibrated is None and fp.quant_cost is None
    assert InferenceSection.of(fp) is None


def test_missing_and_malformed_sections_read_as_none_never_a_crash(tmp_path):
    minimal = {"schema_version": 1, "status": "running", "metrics": {}}
    r = RunResult.from_dict(minimal)
    assert r.model == ModelInfo() and r.quant_cost is None and r.method is None and r.blocks == [] and r.is_float
    odd = {"schema_version": 1, "status": "failed", "config": {"quant": {"method": "OmniQuant",
                                                                        "special": {"keep_best": True}}},
           "model": "not a dict", "environment": None, "metrics": {"fake_quant": {"wikitext2": {"ppl": "N/A"},
                                                                                  "bad": 3}},
           "quant_cost": {"peak_mem_mb": 10}, "blocks": {"0": {}}, "timings": {"load": "x"}}
    r = RunResult.from_dict(odd)
    assert r.model.name is None and r.environment.device is None and r.blocks == [] and r.timings == {}
    assert r.quant_cost is None                        # no time: says nothing
    assert r.at("fake_quant")["wikitext2"].ppl is None and "bad" not in r.at("fake_quant")
    assert r.method.label == "OmniQuant+KB"            # keep_best: true was the default before the labels
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ResultsError, match="unreadable JSON"):
        read_result(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"runs": []}))
    with pytest.raises(ResultsError, match="not a results record"):
        read_result(tmp_path / "y.json")


def test_sections_round_trip_and_set_section_takes_dataclasses(tmp_path):
    data = json.loads((DATA / "omniquant_w4a8.json").read_text())
    r = RunResult.from_dict(data)
    assert r.quant_cost.to_dict() == data["quant_cost"] and r.model.to_dict() == data["model"]
    assert r.environment.to_dict() == data["environment"] and r.method.to_dict() == data["method"]
    assert {ds: m.to_dict() for ds, m in r.at("fake_quant").items()} == data["metrics"]["fake_quant"]
    rec = RunRecord.start(tmp_path / "run.json", task_id="t", environment=Environment(device="cpu", dtype="bf16"))
    rec.set_section("quant_cost", QuantCost(time_s=2.0, peak_mem_bytes=2 ** 20, memory_kind="cpu_peak_rss",
                                            stages_s={"calibrate_transform": 1.5, "quantize_weights": 0.5}))
    rec.set_section("method", MethodInfo("GPTQ", "GPTQ", True))
    rec.set_metric("fake_quant", "wikitext2", Metric(ppl=21.0, windows=4, windows_in_split=141, seq_len=2048))
    written = json.loads((tmp_path / "run.json").read_text())
    assert written["quant_cost"]["peak_mem_mb"] == 1.0 and written["method"]["calibrated"] is True
    assert written["environment"] == {**Environment(device="cpu", dtype="bf16").to_dict()}
    assert written["metrics"]["fake_quant"]["wikitext2"] == {"ppl": 21.0, "windows": 4, "windows_in_split": 141,
                                                             "seq_len": 2048}
    back = read_result(tmp_path / "run.json")
    assert back.quant_cost.stages_s == {"calibrate_transform": 1.5, "quantize_weights": 0.5}
    assert back.calibrated is True and rec.result().method.label == "GPTQ"


def test_make_tables_on_results_written_before_the_change(tmp_path, capsys):
    """The results files kept from before the typed results load in make_tables unchanged: Table 1 holds
    their numbers and SLMQ_perf against the float run, Tables 3/4 (W4A8) their Track 2 and 3 sections."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import make_tables
    from llmc_slm.scoring import slmq_perf
    assert make_tables.main([str(DATA), "--out", str(tmp_path / "t"), "--format", "csv"]) == 0
    out = capsys.readouterr()
    assert "3 run(s)" in out.err and "skipped" not in out.err
    rows = {r[0]: r for r in csv.reader(io.StringIO((tmp_path / "t" / "table1.csv").read_text()))}
    assert rows["Method"][:9] == ["Method", "Bits", "MMLU", "ARC-c", "ARC-e", "PIQA", "HellaSwag", "Wiki ppl",
                                  "SLMQ_perf"]
    base = {"arc_easy": 48.8, "piqa": 66.2, "wikitext2": 17.125}
    for method, vals in (("RTN", {"arc_easy": 44.6, "piqa": 61.8, "wikitext2": 24.5}),
                         ("OmniQuant", {"arc_easy": 46.6, "piqa": 64.4, "wikitext2": 19.875})):
        row = rows[method]
        assert row[1] == "W4A8-g128" and row[2] == row[3] == row[6] == "—"     # those runs' weights: groups of 128
        assert [row[4], row[5], row[7]] == [f"{vals['arc_easy']:.2f}†", f"{vals['piqa']:.2f}†",
                                            f"{vals['wikitext2']:.2f}†"]
        assert row[8] == f"{slmq_perf(base, vals):.2f}§"
    assert rows["RTN"][8] == "85.54§" and rows["OmniQuant"][8] == "93.11§"
    assert [rows["Full Prec."][i] for i in (4, 5, 7, 8)] == ["48.80†", "66.20†", "17.12†", "—"]
    t3 = {r[0]: r for r in csv.reader(io.StringIO((tmp_path / "t" / "table3_w4a8-g128.csv").read_text()))}
    assert t3["OmniQuant"][2:9] == ["497.19", "83.94", "28.31", "1210.7", "3.62", "199.4", "396.5"]
    t4 = {r[0]: r for r in csv.reader(io.StringIO((tmp_path / "t" / "table4_w4a8-g128.csv").read_text()))}
    assert t4["RTN"][2:5] == ["1246.00", "0.02", "—"] and t4["OmniQuant"][2:5] == ["2957.87", "90.21", "100.0"]


def test_the_record_sums_wall_time_by_stage_kind(tmp_path, monkeypatch):
    """Each stage's wall time goes to timings.stages under the part of its name before ':'; the report
    sums a folder by stage, and reads older records from load, the quantization cost and evaluations."""
    import llmc.results as results
    from llmc_slm.reports.evaluations import stage_seconds
    clock = iter([0.0, 2.0, 5.0, 6.0, 16.0, 20.0])      # load, quantize x2, evaluate, post-run, finish
    monkeypatch.setattr(results._time, "perf_counter", lambda: next(clock))
    rec = results.RunRecord.start(tmp_path / "r.json")
    for name in ("load", "quantize: transform", "quantize: fake-quantize", "evaluate: wikitext2 at fake_quant",
                 "post-run: track2"):
        rec.stage(name)
    rec.finish("complete")
    stages = rec.data["timings"]["stages"]
    assert stages == {"load": 2.0, "quantize": 4.0, "evaluate": 10.0, "post-run": 4.0}
    assert stage_seconds(rec.result()) == stages
    old = results.RunResult.from_dict({"schema_version": 1, "status": "complete", "timings": {"load": 3.0},
                                       "started": "2026-12-01T10:00:00+00:00", "finished": "2026-12-01T10:01:40+00:00",
                                       "quant_cost": {"time_s": 30.0, "peak_mem_mb": 10},
                                       "metrics": {"fake_quant": {"wikitext2": {"ppl": 20.0, "wall_seconds": 50.0}}}})
    assert stage_seconds(old) == {"load": 3.0, "quantize": 30.0, "evaluate": 50.0, "unrecorded": 17.0}
