"""The edge-runtime report tables (llmc_slm.reports.edge) from the JSON the edge benchmarks write."""

from __future__ import annotations

import json

import pytest

from llmc_slm.reports.collect import ReportError
from llmc_slm.reports.edge import edge_tables
from llmc_slm.reports.render import to_markdown

MIB = 2 ** 20


def _edge_report():
    rows = [
        {"runtime": "llamacpp", "variant": "float", "stored_bytes": 100 * MIB, "peak_above_idle_bytes": 120 * MIB,
         "prefill_tokens_per_s": 400.0, "decode_tokens_per_s": 50.0},
        {"runtime": "llamacpp", "variant": "w4a8", "stored_bytes": 30 * MIB, "peak_above_idle_bytes": 40 * MIB,
         "prefill_tokens_per_s": 600.0, "decode_tokens_per_s": 90.0, "size_x": 100 / 30, "peak_above_idle_x": 3.0,
         "prefill_x": 1.5, "decode_x": 1.8},
        {"runtime": "executorch", "variant": "float", "skipped": "the executorch package is not installed"},
    ]
    return {"threads": 1, "protocol": {"seq_len": 128, "decode_tokens": 32, "context": 256},
            "environment": {"torch": "2.13.0", "cpu": "test cpu"}, "models": {"tiny": {"rows": rows}}}


def test_runtime_table_shows_sizes_speeds_ratios_and_skips(tmp_path):
    (tmp_path / "edge.json").write_text(json.dumps(_edge_report()))
    md = to_markdown(edge_tables(tmp_path)["edge_runtimes"])
    assert "| tiny | llamacpp | w4a8 | 30.0 | 40.0 | 600.0 | 90.0 | 3.33x | 3.00x | 1.50x | 1.80x |" in md
    assert "| tiny | executorch | float | skipped: the executorch package is not installed |" in md
    assert "context 256 in every runtime" in md


def test_perplexity_table_puts_each_runtime_beside_the_fake_quant_figure(tmp_path):
    llamacpp = {"threads": 2, "rows": [
        {"label": "rtn_w8a8_cpu", "fake_quant_ppl": 38.0, "wikitext2_ppl": 38.38, "windows": 16, "seq_len": 512,
         "stored_bytes": 150 * MIB, "prefill_tokens_per_s": 500.0, "decode_tokens_per_s": 60.0},
        {"label": "spin_w4a8_cpu", "fake_quant_ppl": 40.0, "skipped": "no GGUF export (refused or not asked)",
         "error": {}},
        {"label": "float F16", "fake_quant_ppl": None, "torch_float_ppl": 36.6, "wikitext2_ppl": 36.6, "windows": 16,
         "seq_len": 512, "stored_bytes": 260 * MIB, "prefill_tokens_per_s": 300.0, "decode_tokens_per_s": 40.0}]}
    executorch = {"protocol": {"threads": 1},
                  "fp32": {"wikitext2_ppl": 36.6, "ppl_windows": 16, "ppl_window_len": 512},
                  "spin_w4a8": {"wikitext2_ppl": 41.0, "fake_quant_ppl": 40.0, "float_torch_ppl": 36.6,
                                "ppl_windows": 16, "ppl_window_len": 512, "stored_bytes": 90 * MIB}}
    (tmp_path / "llamacpp_ppl.json").write_text(json.dumps(llamacpp))
    (tmp_path / "executorch_ppl.json").write_text(json.dumps(executorch))
    md = to_markdown(edge_tables(tmp_path)["edge_perplexity"])
    assert "| rtn_w8a8_cpu | llama.cpp | 16 x 512 | 38.000 | 38.380 | +1.00% |" in md
    assert "| spin_w4a8_cpu | llama.cpp | — | 40.000 | skipped: no GGUF export (refused or not asked) |" in md
    assert "| float F16 | llama.cpp | 16 x 512 | 36.600 | 36.600 | +0.00% |" in md
    assert "| spin_w4a8 | ExecuTorch | 16 x 512 | 40.000 | 41.000 | +2.50% | 90.0 |" in md
    assert "Prefill" not in md.split("\n\n")[1]         # speeds are the benchmark's, run alone
    assert "| fp32 | ExecuTorch | 16 x 512 | 36.600 | 36.600 | +0.00% |" in md     # against the float torch figure


def test_reports_of_several_invocations_are_merged_and_must_agree(tmp_path):
    first, second = _edge_report(), _edge_report()
    second["models"] = {"other": second["models"].pop("tiny")}
    (tmp_path / "edge_a.json").write_text(json.dumps(first))
    (tmp_path / "edge_b.json").write_text(json.dumps(second))
    md = to_markdown(edge_tables(tmp_path)["edge_runtimes"])
    assert "| tiny | llamacpp | w4a8 |" in md and "| other | llamacpp | w4a8 |" in md
    second["threads"] = 2
    (tmp_path / "edge_b.json").write_text(json.dumps(second))
    with pytest.raises(ReportError, match="edge_b.json: its threads differs"):
        edge_tables(tmp_path)


def test_a_broken_file_is_a_one_line_report_error(tmp_path):
    (tmp_path / "edge.json").write_text("{not json")
    with pytest.raises(ReportError, match="edge.json: not JSON"):
        edge_tables(tmp_path)


def test_gguf_ppl_append_replaces_rows_in_place_and_refuses_other_threads():
    from benchmarks.gguf_ppl import appended
    old = {"threads": 1, "torch_float_ppl": 36.6, "rows": [{"label": "rtn", "ppl": 1}, {"label": "float F16"}]}
    new = {"threads": 1, "torch_float_ppl": None, "rows": [{"label": "rtn", "ppl": 2}, {"label": "spin_no_r4"}]}
    got = appended(old, new)
    assert [r["label"] for r in got["rows"]] == ["rtn", "float F16", "spin_no_r4"]
    assert got["rows"][0]["ppl"] == 2 and got["torch_float_ppl"] == 36.6
    with pytest.raises(SystemExit, match="measured with 1 thread.*this run with 2"):
        appended(old, {**new, "threads": 2})
