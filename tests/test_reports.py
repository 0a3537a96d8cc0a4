"""Reports from a results folder: collection, Tables 1-4 (markdown, LaTeX, CSV), the comparison with the
published numbers, the claims, plots and the three command lines. Synthetic results only (fast)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmc_slm.reports import calibration, claims, collect, compare, published, render, tables
from llmc_slm.scoring import slmq_perf
from llmc_slm.tasks import TABLE_METRIC

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import compare_published  # noqa: E402
import make_plots  # noqa: E402
import make_tables  # noqa: E402

SMOL, QWEN = "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"
COLS = ("mmlu", "arc_challenge", "arc_easy", "piqa", "hellaswag", "wikitext2")
ARCH = {"model_type": "llama", "layers": 30, "hidden_size": 576, "heads": 9, "kv_heads": 3, "rope_layers": 30,
        "norm": "LlamaRMSNorm", "tied_embeddings": True, "parameters": 134515008}


def result(model=SMOL, method=None, w=8, a=8, values=None, *, status="complete", n=1000, n_total=1000,
           windows=148, windows_total=148, se=0.5, position="fake_quant", cost=None, inference=None,
           profile=None, task_id=None, error=None, device="cpu"):
    """A results record as the pipeline writes it (schema_version 1); ``values`` in table units (%, ppl)."""
    quant = None if method is None else {"method": method, "weight": {"bit": w}, "act": {"bit": a}}
    metrics = {}
    for ds, v in (values or {}).items():
        if ds == "wikitext2":
            metrics[ds] = {"ppl": v, "windows": windows, "windows_in_split": windows_total, "seq_len": 2048,
                           "limit": windows if windows < windows_total else None}
        else:
            key = "mmlu_continuation" if ds == "mmlu" else ds
            metric = TABLE_METRIC[key]
            metrics[key] = {"acc": v / 100, "acc_stderr": se / 100, "acc_norm": v / 100, "acc_norm_stderr": se / 100,
                            "n": n, "n_total": n_total, "subset": n < n_total, "limit": n if n < n_total else None,
                            "num_fewshot": 0, "table_metric": metric, "table_value": v / 100,
                            "table_stderr": se / 100}
    data = {"schema_version": 1, "status": status, "task_id": task_id, "profile": profile,
            "config": {"quant": quant, "model": {"path": model}}, "model": {"name": model, "arch": ARCH},
            "environment": {"device": device, "dtype": "bfloat16", "cpu": "Test CPU", "gpu": "Test GPU"},
            "metrics": {("pretrain" if quant is None else position): metrics}, "timings": {}}
    if error:
        data["error"] = error
    if cost:
        minutes, mb = cost
        data["quant_cost"] = {"time_s": minutes * 60, "peak_mem_bytes": int(mb * 2 ** 20), "peak_mem_mb": mb,
                              "memory_kind": "cuda_max_allocated" if device == "cuda" else "cpu_peak_rss"}
    if inference:
        data["inference"] = inference
    return data


def profile(mem_mb, size_mb, tps, macs_g, params_m, kind="cpu_peak_rss"):
    return {"peak_mem": int(mem_mb * 2 ** 20), "size": int(size_mb * 2 ** 20), "tps": tps, "decode_tps": tps / 10,
            "macs": int(macs_g * 2e9), "macs_calflops": int(macs_g * 1e9), "params_calflops": int(params_m * 1e6),
            "memory_kind": kind, "threads": 1}


def inference_section(base, comp, scores=True):
    from llmc_slm.scoring import slmq_infer
    sec = {"baseline": base, "compressed": comp}
    if scores:
        sec["scores"] = {
            "measured": {"slmq_infer": slmq_infer({k: base[k] for k in ("peak_mem", "size", "tps")},
                                                  {k: comp[k] for k in ("peak_mem", "size", "tps")})},
            "memory_kind": comp["memory_kind"]}
    return sec


def paper_values(table, method, bits):
    row = published.row(table, method, bits)
    return {c: row[c] for c in COLS}


def write(folder: Path, name: str, data) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def paper_folder(folder: Path, with_qwen: bool = True) -> Path:
    """Results holding exactly the paper's Tables 1 (and 2) numbers, with Table 4's costs (W8A8)."""
    specs = [(SMOL, published.TABLE1, "SmolLM-135M")]
    if with_qwen:
        specs.append((QWEN, published.TABLE2, "QWen2.5-0.5B"))
    for model, table, pname in specs:
        tag = "smol" if model == SMOL else "qwen"
        write(folder / tag, "fp16.json", result(model, values=paper_values(table, "Full Prec.", None)))
        for row in table["rows"][1:]:
            w = 8 if row["bits"] == "W8A8" else 4
            c = published.row(published.TABLE4, row["method"], model=pname)
            cost = (c["quant_time_min"], c["gpu_mem_mb"]) if w == 8 else None
            write(folder / tag, f"{row['method'].lower()}_{row['bits'].lower()}.json",
                  result(model, row["method"], w, 8, {k: row[k] for k in COLS}, cost=cost, device="cuda"))
    return folder


@pytest.fixture
def synthetic(tmp_path) -> Path:
    """A float baseline + RTN/SmoothQuant/OmniQuant/SpinQuant at W8A8/W4A8, some with quant_cost and
    inference, one failed, one evaluated on a subset, a sweep manifest and an unrelated JSON."""
    d = tmp_path / "results"
    fp = {"mmlu": 31.0, "arc_challenge": 30.0, "arc_easy": 58.0, "piqa": 69.0, "hellaswag": 42.0, "wikitext2": 20.0}
    write(d, "fp16.json", result(values=fp))
    base = profile(400, 260, 100.0, 17.2, 134.5)
    runs = {
        ("RTN", 8): ({k: v * (1.01 if k == "wikitext2" else 0.99) for k, v in fp.items()}, (0.0001, 500), None),
        ("SmoothQuant", 8): ({k: v * (1.002 if k == "wikitext2" else 0.998) for k, v in fp.items()}, (2.0, 800),
                             inference_section(base, profile(300, 150, 130.0, 3.6, 30.0))),
        ("OmniQuant", 8): ({k: v * (1.003 if k == "wikitext2" else 0.997) for k, v in fp.items()}, (12.0, 2700),
                           inference_section(base, profile(280, 100, 120.0, 3.6, 30.0), scores=False)),
        ("SpinQuant", 8): ({k: v * (1.001 if k == "wikitext2" else 0.999) for k, v in fp.items()}, (14.0, 1500), None),
        ("SmoothQuant", 4): ({k: v * (2.0 if k == "wikitext2" else 0.85) for k, v in fp.items()}, (1.0, 700),
                             inference_section(base, profile(250, 90, 110.0, 3.6, 30.0))),
        ("SpinQuant", 4): ({k: v * (1.1 if k == "wikitext2" else 0.95) for k, v in fp.items()}, (10.0, 1400), None),
    }
    for (method, w), (vals, cost, inf) in runs.items():
        write(d, f"{method.lower()}_w{w}a8.json", result(method=method, w=w, values=vals, cost=cost, inference=inf))
    # OmniQuant W4A8: evaluated on a subset (first 100 of 1000 items, 40 of 148 windows)
    write(d, "omni_w4a8.json", result(method="OmniQuant", w=4, values={k: v * (30.0 if k == "wikitext2" else 0.7)
                                                                          for k, v in fp.items()},
                                       n=100, windows=40, cost=(13.0, 2800)))
    write(d, "rtn_w4a8.json", result(method="RTN", w=4, values={}, status="failed", error="RuntimeError: boom",
                                     cost=(0.0001, 500)))
    write(d, "sweep.json", {"runs": [], "grid": {}})
    write(d / "other", "notes.json", {"hello": "world"})
    return d


# --------------------------------------------------------------------------------------------- collect
def test_a_baseline_computed_in_another_dtype_is_a_mismatch_and_the_same_dtype_is_preferred(tmp_path):
    """torch_dtype auto is bfloat16 on one CPU and float32 on another: a quantized float32 run pairs with the
    float32 float run when the folder has one, and is marked a mismatch (no paired statistics) when it has
    only a bfloat16 one."""
    vals = {"piqa": 60.0, "wikitext2": 20.0}
    bf16_base, fp32_base = result(values=vals), result(values={"piqa": 61.0, "wikitext2": 19.0})
    fp32_base["environment"]["dtype"] = "float32"
    fp32_run = result(method="RTN", values={"piqa": 58.0, "wikitext2": 21.0})
    fp32_run["environment"]["dtype"] = "float32"
    write(tmp_path, "fp16_bf16.json", bf16_base)
    write(tmp_path, "rtn_w8a8.json", fp32_run)
    coll = collect.collect(tmp_path)
    rtn = next(r for r in coll.runs if not r.is_float)
    assert set(rtn.mismatch) == {"piqa", "wikitext2"} and not rtn.paired
    assert "baseline computed in bfloat16, this run in float32" in rtn.mismatch["piqa"]
    assert any("rtn_w8a8.json: baseline computed in another dtype" in w for w in coll.warnings)
    write(tmp_path, "fp16_fp32.json", fp32_base)
    rtn = next(r for r in collect.collect(tmp_path).runs if not r.is_float)
    assert not rtn.mismatch and rtn.baseline_source["piqa"] == "fp16_fp32.json (pretrain)"
    assert rtn.baseline["piqa"].value == pytest.approx(61.0)


def test_collect_rows_baselines_and_skips(synthetic):
    coll = collect.collect(synthetic)
    assert len(coll.runs) == 9
    assert {p.name for p, _ in coll.skipped} == {"sweep.json", "notes.json"}
    fp = next(r for r in coll.runs if r.is_float)
    assert fp.method == "Full Prec." and fp.bits == "FP" and fp.position == "pretrain"
    smooth = next(r for r in coll.runs if r.method == "SmoothQuant" and r.bits == "W8A8")
    assert smooth.values["mmlu"].source == "mmlu_continuation"
    assert smooth.values["mmlu"].value == pytest.approx(31 * 0.998)
    assert smooth.values["mmlu"].stderr == pytest.approx(0.5) and smooth.values["arc_easy"].metric == "acc_norm"
    assert smooth.baseline_source["mmlu"] == "fp16.json (pretrain)" and not smooth.mismatch
    base = {k: fp.values[k].value for k in COLS}
    assert smooth.perf == pytest.approx(slmq_perf(base, {k: smooth.values[k].value for k in COLS}))
    omni = next(r for r in coll.runs if r.method == "OmniQuant" and r.bits == "W4A8")
    assert omni.values["mmlu"].subset and omni.values["wikitext2"].subset
    assert set(omni.mismatch) == set(COLS)            # baseline on all items, this run on a subset
    assert any("omni_w4a8.json: baseline evaluated on different items" in w for w in coll.warnings)
    failed = next(r for r in coll.runs if r.status == "failed")
    assert failed.perf is None and failed.quant_cost is not None
    assert smooth.inference["measured"] is not None and smooth.quant_cost["time_min"] == pytest.approx(2.0)
    omni8 = next(r for r in coll.runs if r.method == "OmniQuant" and r.bits == "W8A8")
    # no scores stored: computed from the two profiles
    assert omni8.inference["measured"] > 100 and omni8.inference["paper_compatible"] > 100


def test_baseline_on_the_same_items_is_preferred(tmp_path):
    d = tmp_path / "r"
    write(d, "fp_full.json", result(values={"wikitext2": 21.6}))
    own = result(method="RTN", values={"wikitext2": 21.0}, windows=40)
    own["metrics"]["pretrain"] = {"wikitext2": {"ppl": 20.4, "windows": 40, "windows_in_split": 148, "seq_len": 2048,
                                                "limit": 40}}
    write(d, "rtn.json", own)
    write(d, "smooth.json", result(method="SmoothQuant", values={"wikitext2": 20.7}, windows=40))
    coll = collect.collect(d)
    smooth = next(r for r in coll.runs if r.method == "SmoothQuant")
    assert smooth.baseline["wikitext2"].value == 20.4 and "rtn.json" in smooth.baseline_source["wikitext2"]
    assert not smooth.mismatch and not coll.warnings
    t1 = tables.all_tables(coll)[0]
    assert any(r[0].startswith("Full Prec. (pretrain of rtn.json)") and r[7] == "20.40†" for r in t1.rows)


def test_missing_or_empty_folder_is_a_report_error(tmp_path):
    with pytest.raises(collect.ReportError, match="no such folder"):
        collect.collect(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(collect.ReportError, match="no results JSON"):
        collect.collect(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- tables
def test_table1_contents(synthetic):
    coll = collect.collect(synthetic)
    ts = {t.name: t for t in tables.all_tables(coll, with_stderr=False)}
    assert set(ts) == {"table1", "table3", "table3_w4a8", "table4", "table4_w4a8"}
    t1 = ts["table1"]
    assert t1.header == ["Method", "Bits", "MMLU", "ARC-c", "ARC-e", "PIQA", "HellaSwag", "Wiki ppl", "SLMQ_perf"]
    rows = {(r[0], r[1]): r for r in t1.rows}
    assert [r[0] for r in t1.rows][0] == "Full Prec."
    smooth = next(r for r in coll.runs if r.method == "SmoothQuant" and r.bits == "W8A8")
    assert rows[("SmoothQuant", "W8A8")][8] == f"{smooth.perf:.2f}"
    assert rows[("SmoothQuant", "W8A8")][2] == f"{31 * 0.998:.2f}"
    omni = rows[("OmniQuant", "W4A8")]
    assert omni[2].endswith("†‡") and omni[7] == "600.00†‡" and "‡" in omni[8]
    assert any("evaluated on a subset" in n and "first 40 of 148 windows" in n for n in t1.notes)
    assert rows[("RTN", "W4A8")][2:] == ["failed"] * 7
    assert any("status failed" in n and "boom" in n for n in t1.notes)
    assert any("uncapped" in n for n in t1.notes) and any("9 query / 3 key-value heads (GQA)" in n for n in t1.notes)
    # W8 rows before W4 rows, a rule between the groups
    bits = t1.column("Bits")
    assert bits.index("W4A8") > max(i for i, b in enumerate(bits) if b == "W8A8") and t1.rules


def test_stderr_option_and_table2_for_other_models(synthetic):
    write(synthetic, "qwen_fp16.json", result(QWEN, values={"mmlu": 33.0, "wikitext2": 13.0}))
    write(synthetic, "qwen_smooth.json", result(QWEN, "SmoothQuant", 4, 8, {"mmlu": 30.0, "wikitext2": 20.0}))
    coll = collect.collect(synthetic)
    ts = {t.name: t for t in tables.all_tables(coll, with_stderr=True)}
    t1, t2 = ts["table1"], ts["table2"]
    assert "± 0.50" in t1.rows[1][2]
    assert QWEN in t2.title and "Table 2" in t2.title
    q = {r[0]: r for r in t2.rows}["SmoothQuant"]
    assert q[3] == "—" and q[8].endswith("§")       # no ARC-c; SLMQ_perf over two datasets only


def test_tables_3_and_4(synthetic):
    coll = collect.collect(synthetic)
    ts = {t.name: t for t in tables.all_tables(coll)}
    t3 = ts["table3"]
    methods = t3.column("Method")
    assert methods[0] == "Full Prec." and "SmoothQuant" in methods and "OmniQuant" in methods
    smooth = next(r for r in coll.runs if r.method == "SmoothQuant" and r.bits == "W8A8")
    row = t3.rows[methods.index("SmoothQuant")]
    assert row[2] == "300.00" and row[3] == "150.00" and row[7] == f"{smooth.inference['measured']:.1f}"
    assert any("CPU peak resident memory" in n for n in t3.notes)
    assert "extra" in ts["table3_w4a8"].title
    t4 = ts["table4"]
    r4 = {r[0]: r for r in t4.rows}
    assert set(r4) == {"RTN", "SmoothQuant", "OmniQuant", "SpinQuant"}
    assert r4["RTN"][4] == "—" and any("not scored" in n for n in t4.notes)
    # SLMQ_quant of SmoothQuant: T_max = 14 min (SpinQuant), M_max = 2700 MB (OmniQuant)
    expected = 100 * math.sqrt(((14 / 2) ** 2 + (2700 / 800) ** 2) / 2)
    assert float(r4["SmoothQuant"][4]) == pytest.approx(expected, abs=0.06)
    assert r4["SpinQuant"][3] == "14.00"
    t4x = {r[0]: r for r in ts["table4_w4a8"].rows}
    assert t4x["RTN"][2:] == ["failed"] * 3 and "extra" in ts["table4_w4a8"].title


def test_kv_and_weight_only_runs_get_their_own_track2_tables(tmp_path):
    """A W4A8KV4 run adds Table 3 for its bits and the KV-cache table (its cache against the float one); a
    W4A16 run its own Table 3; the bits label carries the KV bits."""
    d = tmp_path / "r"
    d.mkdir()
    write(d, "fp16.json", result(values={"wikitext2": 20.0}))
    kv = lambda kind, per_token: {"kind": kind, "bytes": per_token * 160, "bytes_per_token": per_token,  # noqa: E731
                                  "bytes_at_2048": per_token * 2048, "bytes_at_8192": per_token * 8192}
    base = dict(profile(400, 260, 100.0, 3.6, 135.0), kv_cache=kv("bfloat16", 23040))
    comp = dict(profile(300, 90, 80.0, 3.6, 30.0), kv_cache=kv("int4", 6660))
    rec = result(method="QuaRot", w=4, a=8, values={"wikitext2": 30.0}, inference=inference_section(base, comp))
    rec["config"]["quant"]["kvcache"] = {"bit": 4}
    write(d, "quarot_w4a8kv4.json", rec)
    awq = result(method="AWQ", w=4, values={"wikitext2": 25.0},
                 inference=inference_section(dict(profile(400, 260, 100.0, 3.6, 135.0)), profile(280, 80, 90.0, 3.6, 30.0)))
    awq["config"]["quant"]["act"] = None
    write(d, "awq_w4a16.json", awq)
    coll = collect.collect(d)
    assert {r.bits for r in coll.runs} == {"FP", "W4A8KV4", "W4A16"}
    ts = {t.name: t for t in tables.all_tables(coll)}
    assert {"table3_w4a8kv4", "table3_w4a16", "table3_kv"} <= set(ts)
    row = ts["table3_kv"].rows[0]
    assert row[:4] == ["QuaRot", SMOL, "W4A8KV4", "int4"] and row[4] == "6660"
    assert row[6] == f"{6660 * 8192 / 2 ** 20:.2f}" and row[8] == f"{23040 / 6660:.2f}x"


def test_markdown_and_csv(synthetic):
    coll = collect.collect(synthetic)
    for t in tables.all_tables(coll, with_stderr=True):
        md = render.to_markdown(t)
        lines = [line for line in md.splitlines() if line.startswith("|")]
        assert len({line.count(" | ") for line in lines[:1] + lines[2:]}) == 1
        parsed = list(csv.reader(io.StringIO(render.to_csv(t))))
        assert parsed[0] == t.header + ["Run", "Notes"]
        assert len(parsed) == len(t.rows) + 1 and all(len(r) == len(t.header) + 2 for r in parsed)
    t1 = tables.all_tables(coll)[0]
    rows = list(csv.DictReader(io.StringIO(render.to_csv(t1))))
    omni = next(r for r in rows if r["Method"] == "OmniQuant" and r["Bits"] == "W4A8")
    assert omni["Run"] == "omni_w4a8.json" and "subset" in omni["Notes"] and omni["Wiki ppl"] == "600.00†‡"


def _check_latex(tex: str, ncols: int) -> None:
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    body = tex.split(r"\toprule")[1].split(r"\bottomrule")[0]
    for line in body.splitlines():
        if line.endswith(r"\\"):
            assert len(re.findall(r"(?<!\\)&", line)) == ncols - 1, line
    # specials escaped: no bare %, _, #, & outside of column separators
    for line in tex.splitlines():
        if line.startswith("%"):
            continue
        assert not re.search(r"(?<!\\)[%#_]", line), line
    assert "†" not in tex and "±" not in tex


def test_latex_is_valid(synthetic, tmp_path):
    coll = collect.collect(synthetic)
    ts = tables.all_tables(coll, with_stderr=True)
    special = render.Table("special", "50% of R&D #1 under_score", ["A_b", "B%"])
    special.add(["x & y", "100% #2 ~ ^ \\ {z}"])
    ts.append(special)
    for t in ts:
        _check_latex(render.to_latex(t), len(t.header))
    tex = render.to_latex(special)
    assert r"50\% of R\&D \#1 under\_score" in tex and r"x \& y" in tex and r"\{z\}" in tex
    if shutil.which("pdflatex"):
        doc = tmp_path / "doc.tex"
        doc.write_text(render.latex_document(ts))
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-3000:]


# -------------------------------------------------------------------------------------------- published
def _parse_published(path: Path) -> dict:
    """{table number: [[cells], ...]} from the markdown tables of published.md."""
    out, current = {}, None
    for line in path.read_text().splitlines():
        m = re.match(r"## Table (\d)", line)
        if m:
            current = int(m.group(1))
            out[current] = []
        elif current and line.startswith("|") and not line.startswith("|---") and "Method" not in line:
            out[current].append([c.strip() for c in line.strip("|").split("|")])
    return out


def _num(cell: str):
    if cell in ("-", ""):
        return None
    return float(re.sub(r"\s*(MB|min|G)$", "", cell).replace("MB", ""))


PUBLISHED_MD = next((p for p in (ROOT.parent / "shared" / "reference" / "published.md",
                                 ROOT / "shared" / "reference" / "published.md") if p.exists()), None)


@pytest.mark.skipif(PUBLISHED_MD is None, reason="shared/reference/published.md not beside the project")
def test_stored_numbers_match_published_md():
    md = _parse_published(PUBLISHED_MD)
    for number, table in ((1, published.TABLE1), (2, published.TABLE2)):
        assert len(md[number]) == len(table["rows"])
        for cells, row in zip(md[number], table["rows"]):
            assert cells[0] == row["method"] and cells[1] == row["bits"]
            assert [_num(c) for c in cells[2:]] == [row[k] for k in published.COMPRESSION_COLUMNS]
    for cells, row in zip(md[3], published.TABLE3["rows"]):
        assert [cells[0], cells[1]] == [row["method"], row["model"]]
        expected = [row["gpu_mem_mb"], row["model_size_mb"], row["macs_g"], row["slmq_infer"]]
        assert [_num(c) for c in cells[2:]] == expected
    assert len(md[3]) == len(published.TABLE3["rows"]) and len(md[4]) == len(published.TABLE4["rows"])
    for cells, row in zip(md[4], published.TABLE4["rows"]):
        assert [cells[0], cells[1]] == [row["method"], row["model"]]
        assert [_num(c) for c in cells[2:]] == [row["gpu_mem_mb"], row["quant_time_min"], row["slmq_quant"]]
    text = Path("/work/shared/reference/published.md").read_text()
    for i, claim in published.CLAIMS.items():
        assert f"{i}. {claim}" in text
    assert published.DOI in published.CITATION and "RichMediaGAI '25" in published.CITATION


def test_compare_reproduces_the_papers_slmq_perf(tmp_path):
    coll = collect.collect(paper_folder(tmp_path / "paper", with_qwen=False))
    rows = compare.compression_rows(coll)
    assert {r["status"] for r in rows} == {"complete"}
    for r in rows:
        if r["metric"] == "slmq_perf":
            assert r["delta"] == pytest.approx(0, abs=0.02), r       # printed to 2 decimals from rounded inputs
        else:
            assert r["delta"] == pytest.approx(0, abs=1e-9), r
    assert sum(r["metric"] == "slmq_perf" for r in rows) == 6
    md = "\n".join(render.to_markdown(t) for t in compare.all_comparisons(coll))
    assert "vs the paper's Table 1" in md and "Quantization cost (W8A8) vs the paper's Table 4" in md


# ----------------------------------------------------------------------------------------------- claims
def test_claims_on_the_papers_own_numbers(tmp_path):
    verdicts = {c.number: c for c in claims.evaluate(collect.collect(paper_folder(tmp_path / "paper")))}
    # the paper's own W8A8 rows drop 0.52% (SmoothQuant) and 1.07% (OmniQuant) on SmolLM, relatively
    assert verdicts[1].verdict == claims.FAILS and "SmoothQuant 0.52% " in verdicts[1].evidence
    for n in (2, 3, 4, 5):
        assert verdicts[n].verdict == claims.HOLDS and not verdicts[n].partial, verdicts[n].evidence
    assert "29.07x" in verdicts[3].evidence and "123.53x" in verdicts[3].evidence
    assert "OmniQuant / SmoothQuant 6.25x (in 6-7x)" in verdicts[5].evidence
    assert "OmniQuant / SmoothQuant 7.74x (outside 6-7x)" in verdicts[5].evidence
    assert "the 6-7x part is not tested" not in verdicts[5].evidence      # the paper's runs: no profile
    assert "least degraded at W4A8: SpinQuant" in verdicts[2].evidence


def test_claim5_does_not_test_the_time_ratio_on_runs_of_a_calibration_profile(tmp_path):
    """The CPU profile shrinks SmoothQuant's calibration 8x and OmniQuant's 64x: their ratio is not the paper's."""
    fp = {"mmlu": 30.0, "wikitext2": 15.0}
    write(tmp_path, "fp.json", result(values=fp))
    for m, minutes in (("SmoothQuant", 0.4), ("OmniQuant", 19.0)):
        write(tmp_path, f"{m}.json", result(method=m, values=fp, cost=(minutes, 900), profile="cpu"))
    c5 = {c.number: c for c in claims.evaluate(collect.collect(tmp_path))}[5]
    assert c5.verdict == claims.HOLDS                           # the order, SmoothQuant cheapest, is tested
    assert "OmniQuant / SmoothQuant 47.50x (outside 6-7x)" in c5.evidence
    assert "the 6-7x part is not tested on these runs" in c5.evidence


def test_claims_both_ways(tmp_path):
    fp = {"mmlu": 30.0, "arc_challenge": 30.0, "arc_easy": 60.0, "piqa": 70.0, "hellaswag": 40.0, "wikitext2": 15.0}

    def scaled(acc, ppl):
        return {k: v * (ppl if k == "wikitext2" else acc) for k, v in fp.items()}

    def folder(name, w8, w4, omni_ppl, times, qwen_w4):
        d = tmp_path / name
        for model, w4_factor in ((SMOL, w4), (QWEN, qwen_w4)):
            write(d, f"{model}_fp.json", result(model, values=fp))
            for m in ("SmoothQuant", "OmniQuant", "SpinQuant"):
                write(d, f"{model}_{m}_8.json", result(model, m, 8, 8, scaled(w8[m], 1.01), cost=(times[m], 1000)))
                write(d, f"{model}_{m}_4.json", result(model, m, 4, 8, scaled(w4_factor[m], omni_ppl if m == "OmniQuant"
                                                                                     else 1.5)))
        return {c.number: c for c in claims.evaluate(collect.collect(d))}

    good = folder("good", {"SmoothQuant": 0.999, "OmniQuant": 0.998, "SpinQuant": 0.999},
                  {"SmoothQuant": 0.85, "OmniQuant": 0.75, "SpinQuant": 0.95}, 30.0,
                  {"SmoothQuant": 2.0, "OmniQuant": 13.0, "SpinQuant": 14.0},
                  {"SmoothQuant": 0.80, "OmniQuant": 0.70, "SpinQuant": 0.90})
    assert [good[n].verdict for n in range(1, 6)] == [claims.HOLDS] * 5
    bad = folder("bad", {"SmoothQuant": 0.97, "OmniQuant": 0.998, "SpinQuant": 0.999},
                 {"SmoothQuant": 0.95, "OmniQuant": 0.90, "SpinQuant": 0.80}, 2.0,
                 {"SmoothQuant": 5.0, "OmniQuant": 3.0, "SpinQuant": 14.0},
                 {"SmoothQuant": 0.99, "OmniQuant": 0.99, "SpinQuant": 0.99})
    assert [bad[n].verdict for n in range(1, 6)] == [claims.FAILS] * 5
    assert "SmoothQuant 3.00% " in bad[1].evidence and "least degraded at W4A8: SmoothQuant" in bad[2].evidence
    assert "cheapest OmniQuant" in bad[5].evidence


def test_claim4_compares_the_models_on_the_datasets_both_have(tmp_path):
    """SmolLM scored on six datasets (accuracies kept, perplexity x3.2) against Qwen scored on WikiText-2
    only (x3.0): over each run's own datasets SmolLM would look far more robust (~82 vs 33), but on the one
    dataset they share Qwen degrades less, so the claim does not hold."""
    fp = {"mmlu": 30.0, "arc_challenge": 30.0, "arc_easy": 60.0, "piqa": 70.0, "hellaswag": 40.0, "wikitext2": 15.0}
    smol_w4 = {k: v * (3.2 if k == "wikitext2" else 0.99) for k, v in fp.items()}
    write(tmp_path, "smol_fp.json", result(SMOL, values=fp))
    write(tmp_path, "smol_sq4.json", result(SMOL, "SmoothQuant", 4, 8, smol_w4))
    write(tmp_path, "qwen_fp.json", result(QWEN, values={"wikitext2": 20.0}))
    write(tmp_path, "qwen_sq4.json", result(QWEN, "SmoothQuant", 4, 8, {"wikitext2": 60.0}))
    coll = collect.collect(tmp_path)
    smol = next(r for r in coll.runs if r.model == SMOL and r.method == "SmoothQuant")
    assert smol.perf > 80 and len(smol.perf_datasets) == 6
    c4 = {c.number: c for c in claims.evaluate(coll)}[4]
    assert c4.verdict == claims.FAILS and c4.partial, c4.evidence
    assert "31.25" in c4.evidence and "33.33" in c4.evidence and "datasets they share: Wiki ppl" in c4.evidence


def test_claims_not_testable_and_noise(synthetic):
    cs = {c.number: c for c in claims.evaluate(collect.collect(synthetic))}
    assert cs[4].verdict == claims.UNTESTABLE and "one" not in cs[4].verdict
    assert cs[1].verdict == claims.HOLDS and "within noise" in cs[1].evidence   # 0.2-0.3% drop, stderr ~0.7%
    assert cs[3].verdict == claims.HOLDS and "subset" in cs[3].evidence          # 600 vs 20, on a subset
    assert cs[2].verdict == claims.HOLDS and not cs[2].partial
    coll = collect.collect(synthetic)
    table = claims.claims_table(claims.evaluate(coll), coll)
    assert table.column("Verdict")[3] == "not testable"
    # the subset's items are named once, in a note, not in every run's evidence
    assert "first 40 of 148 windows" not in cs[3].evidence
    assert any(n.startswith("'subset'") and "first 40 of 148 windows" in n for n in table.notes)
    assert not any(n.startswith("'subset'") for n in claims.claims_table(claims.evaluate(coll)).notes)


# ------------------------------------------------------------------------------------------------ plots
def test_plots_write_png_and_pdf(synthetic, tmp_path):
    pytest.importorskip("matplotlib")
    from llmc_slm.reports.plots import make_plots
    paths = make_plots(collect.collect(synthetic), tmp_path / "plots")
    names = {p.name for p in paths}
    assert names == {f"{stem}_{SMOL}.{ext}" for stem in ("slmq_scores", "accuracy_vs_bits") for ext in ("png", "pdf")}
    for p in paths:
        assert p.stat().st_size > 1000
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"


# -------------------------------------------------------------------------------------------------- CLIs
def test_make_tables_cli(synthetic, tmp_path, capsys):
    out = tmp_path / "tables"
    assert make_tables.main([str(synthetic), "--out", str(out), "--stderr"]) == 0
    printed = capsys.readouterr()
    assert "### Table 1: compression performance of smollm2-135m-instruct" in printed.out
    assert "baseline evaluated on different items" in printed.err
    assert {p.name for p in out.iterdir()} >= {"table1.md", "table1.tex", "table1.csv", "table4.md", "table3_w4a8.csv"}
    assert make_tables.main([str(synthetic), "--format", "latex", "--out", str(tmp_path / "tex")]) == 0
    assert {p.suffix for p in (tmp_path / "tex").iterdir()} == {".tex"}
    assert make_tables.main([str(synthetic)]) == 0 and (synthetic / "tables" / "table1.md").is_file()


def test_make_tables_removes_the_tables_it_no_longer_writes(synthetic, tmp_path, capsys):
    """A bits setting renamed (W4A16 -> W4A16-g64) leaves no stale table3_w4a16.md behind; files of
    other names, and formats this command does not write, are kept."""
    out = tmp_path / "tables"
    out.mkdir()
    for name in ("table3_w4a16.md", "stage_times_old.md", "table3_w4a16.tex", "notes.md"):
        (out / name).write_text("old")
    assert make_tables.main([str(synthetic), "--out", str(out), "--format", "markdown"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "table1.md" in names and {"table3_w4a16.md", "stage_times_old.md"}.isdisjoint(names)
    assert {"table3_w4a16.tex", "notes.md"} <= names
    assert "removed " in capsys.readouterr().err


@pytest.mark.parametrize("tool", [make_tables, compare_published, make_plots])
def test_cli_user_errors(tool, tmp_path, capsys):
    assert tool.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no such folder" in err and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert tool.main([str(tmp_path / "empty")]) == 2
    assert "no results JSON found" in capsys.readouterr().err


def test_compare_published_and_make_plots_cli(synthetic, tmp_path, capsys):
    assert compare_published.main([str(synthetic), "--out", str(tmp_path / "cmp.md")]) == 0
    out = capsys.readouterr().out
    assert "vs the paper's Table 1" in out and "The paper's claims" in out and (tmp_path / "cmp.md").is_file()
    pytest.importorskip("matplotlib")
    assert make_plots.main([str(synthetic), "--out", str(tmp_path / "p")]) == 0
    assert len(list((tmp_path / "p").glob("*.pdf"))) == 2


def test_clis_on_the_committed_reference_results(tmp_path, capsys):
    real = ROOT / "results" / "reference"
    assert make_tables.main([str(real), "--out", str(tmp_path / "t"), "--calibration"]) == 0
    assert compare_published.main([str(real)]) == 0
    assert "Table 1" in capsys.readouterr().out


def test_group_without_a_harness_stderr_gets_the_item_stderr():
    """Results written before the evaluator filled MMLU's group stderr in (limit spread one item over some
    subjects) still get a standard error in the tables."""
    metrics = {"mmlu_continuation": {"acc": 0.23, "acc_stderr": None, "table_metric": "acc", "table_value": 0.23,
                                     "table_stderr": None, "n": 100, "n_total": 14042, "limit": 100}}
    v = collect.read_values(metrics)["mmlu"]
    assert v.value == pytest.approx(23.0)
    assert v.stderr == pytest.approx(100 * math.sqrt(0.23 * 0.77 / 99))


def test_omniquant_and_its_keep_best_variant_are_separate_rows(tmp_path):
    """The label a run recorded ("OmniQuant+KB") names its row; an older record without one is labelled
    from its resolved config (keep_best: true was that code's default)."""
    d = tmp_path / "r"
    vals = {"mmlu": 30.0, "wikitext2": 16.0}
    write(d, "fp16.json", result(values={"mmlu": 31.0, "wikitext2": 15.0}))
    official = result(method="OmniQuant", w=4, values=vals)
    official["config"]["quant"]["special"] = {"keep_best": False}
    official["method"] = {"name": "OmniQuant", "label": "OmniQuant", "calibrated": True}
    write(d, "omni_w4a8.json", official)
    kb = result(method="OmniQuant", w=4, values={"mmlu": 30.5, "wikitext2": 15.5})
    kb["config"]["quant"]["special"] = {"keep_best": True}
    kb["method"] = {"name": "OmniQuant", "label": "OmniQuant+KB", "calibrated": True}
    write(d, "omni_kb_w4a8.json", kb)
    legacy = result(method="OmniQuant", w=8, values=vals)
    legacy["config"]["quant"]["special"] = {"keep_best": True}
    write(d, "omni_w8a8.json", legacy)
    coll = collect.collect(d)
    t1 = {t.name: t for t in tables.all_tables(coll, with_stderr=False)}["table1"]
    rows = {(r[0], r[1]) for r in t1.rows}
    assert {("OmniQuant", "W4A8"), ("OmniQuant+KB", "W4A8"), ("OmniQuant+KB", "W8A8")} <= rows
    methods = [r[0] for r in t1.rows if r[1] == "W4A8"]
    assert methods.index("OmniQuant") < methods.index("OmniQuant+KB")


# ------------------------------------------------------------------------------ calibration tables
def _omni(keep_best: bool, blocks: list, ppl: float) -> dict:
    d = result(method="OmniQuant", w=4, values={"wikitext2": ppl}, windows=100)
    d["config"]["quant"]["special"] = {"keep_best": keep_best}
    d["method"] = {"name": "OmniQuant", "label": "OmniQuant+KB" if keep_best else "OmniQuant", "calibrated": True}
    d["blocks"] = blocks
    return d


def _spin(learned: bool, seed: int, ppl: float, windows: int = 100) -> dict:
    d = result(method="SpinQuant", w=4, values={"wikitext2": ppl}, windows=windows)
    d["config"]["quant"]["special"] = {"learn_rotations": learned, "rotation_seed": seed}
    d["config"]["base"] = {"seed": 42}
    d["task_id"] = f"{'learned' if learned else 'random'}_s{seed}"
    return d


def test_block_losses_table_shows_where_the_official_procedure_and_keep_best_part(tmp_path):
    d = tmp_path / "r"
    official = [{"loss_init": 0.1, "loss_final": 0.05}, {"loss_init": 60.0, "loss_final": 72.0},
                {"loss_init": 72.5, "loss_final": float("nan"), "diverged": True, "chosen": "end of training"}]
    kept = [{"loss_init": 0.1, "loss_final": 0.05}, {"loss_init": 60.0, "loss_final": 60.0, "chosen": "init"}]
    write(d, "omni.json", _omni(False, official, 30.5))
    write(d, "omni_kb.json", _omni(True, kept, 28.25))
    write(d, "fp16.json", result(values={"wikitext2": 21.9}, windows=100))
    runs = collect.collect(d).runs
    t = calibration.block_losses_table(runs)
    assert t.header == ["Block", "OmniQuant W4A8", "OmniQuant+KB W4A8"]
    assert t.rows[0] == ["0", "0.1 → 0.05", "0.1 → 0.05"]
    assert t.rows[1] == ["1", "60 → 72▲", "60 → 60"]
    assert t.rows[2] == ["2", "72.5 → nan✗", "—"]
    notes = " ".join(t.notes)
    assert "OmniQuant W4A8: 1 of 3 blocks ended above their start (1), 1 diverged (2); WikiText-2 perplexity 30.500" in notes
    assert "OmniQuant+KB W4A8: 0 of 2 blocks ended above their start; WikiText-2 perplexity 28.250" in notes
    run = next(r for r in runs if r.method == "OmniQuant")
    assert any("kept the parameters reached (blocks 2)" in n for n in run.notes)
    assert not any("restored" in n for n in run.notes)
    assert calibration.block_losses_table([r for r in runs if r.is_float]) is None
    qwen = _omni(False, official, 40.0)                     # a second model's run: each column names its model
    qwen["model"] = {"name": "qwen2.5-coder-0.5b-instruct"}
    qwen["config"]["model"]["path"] = "qwen2.5-coder-0.5b-instruct"
    write(d, "qwen_omni.json", qwen)
    t = calibration.block_losses_table(collect.collect(d).runs)
    assert sorted(t.header[1:]) == ["qwen2.5-coder-0.5b-instruct: OmniQuant W4A8", f"{SMOL}: OmniQuant W4A8",
                                    f"{SMOL}: OmniQuant+KB W4A8"]


def test_seed_spread_pairs_learned_and_random_rotations_seed_by_seed(tmp_path):
    d = tmp_path / "r"
    for s, (rnd, lrn) in enumerate([(30.0, 29.0), (31.0, 29.5), (32.0, 32.5)]):
        write(d, f"random_s{s}.json", _spin(False, s, rnd))
        write(d, f"learned_s{s}.json", _spin(True, s, lrn))
    write(d, "other_windows.json", _spin(True, 3, 10.0, windows=20))   # another evaluation set: not grouped
    runs = collect.collect(d).runs
    assert {r.method for r in runs} == {"SpinQuant", "SpinQuant w/o learning"}   # label read from the config
    t = calibration.seed_spread_table(runs)
    assert t.header == ["Model", "Method", "Bits", "seed 0", "seed 1", "seed 2", "mean ± sd", "range"]
    rows = {r[1]: r for r in t.rows}
    assert rows["SpinQuant w/o learning"][3:] == ["30.000", "31.000", "32.000", "31.000 ± 1.000", "2.000"]
    assert rows["SpinQuant"][3:6] == ["29.000", "29.500", "32.500"]
    paired = [n for n in t.notes if "seed by seed" in n]
    assert len(paired) == 1
    assert "SpinQuant − SpinQuant w/o learning, seed by seed (0, 1, 2): -1.000, -1.500, +0.500" in paired[0]
    assert "SpinQuant lower on 2 of 3 seeds" in paired[0]


def test_seed_spread_compares_learned_and_fixed_rotations_on_kld_and_perf(tmp_path):
    """QuaRot against SpinQuant over seeds (issue 22): the KLD from the float model and SLMQ_perf join the
    perplexity, and the seed-by-seed note pairs the KLDs too."""
    d = tmp_path / "r"
    write(d, "fp16.json", result(values={"wikitext2": 20.0}, windows=100))
    for s, (q, sp) in enumerate([((30.0, 0.50), (28.0, 0.40)), ((31.0, 0.55), (29.0, 0.42)),
                                 ((29.0, 0.45), (29.5, 0.47))]):
        for method, (ppl, kld) in (("QuaRot", q), ("SpinQuant", sp)):
            rec = _spin(True, s, ppl)
            rec["config"]["quant"]["method"] = method
            rec["task_id"] = f"{method.lower()}_s{s}"
            rec["metrics"]["fake_quant"]["wikitext2"]["vs_float"] = {"kld": kld}
            write(d, f"{method}_{s}.json", rec)
    t = calibration.seed_spread_table(collect.collect(d).runs)
    assert t.header[-2:] == ["KLD mean ± sd", "SLMQ_perf mean ± sd"]
    rows = {r[1]: r for r in t.rows}
    assert rows["QuaRot"][-2] == "0.5000 ± 0.0500"
    assert rows["SpinQuant"][-1] == _sd_text([100 * 20 / p for p in (28.0, 29.0, 29.5)])
    note = next(n for n in t.notes if "seed by seed" in n)
    assert "KLD QuaRot − SpinQuant: +0.1000, +0.1300, -0.0200" in note and "QuaRot lower on 1 of 3 seeds." in note


def _sd_text(values):
    import statistics
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def test_make_tables_calibration_option(tmp_path):
    d = tmp_path / "r"
    write(d, "omni.json", _omni(False, [{"loss_init": 1.0, "loss_final": 2.0}], 30.0))
    write(d, "a.json", _spin(False, 0, 30.0))
    write(d, "b.json", _spin(False, 1, 31.0))
    assert make_tables.main([str(d), "--calibration", "--format", "markdown", "--out", str(tmp_path / "t")]) == 0
    assert "| 0 | 1 → 2▲ |" in (tmp_path / "t" / "calibration_blocks.md").read_text()
    assert "31.000" in (tmp_path / "t" / "calibration_seeds.md").read_text()


def test_a_model_the_paper_did_not_table_gets_table_2b_and_no_comparison(tmp_path):
    """Gemma-3 has no counterpart in the paper: its own Table 2b, no row of the comparison with the paper's
    Tables 1-4, and it does not stand in for Qwen in claim 4."""
    gemma = "gemma-3-270m"
    folder = paper_folder(tmp_path / "paper")
    write(folder / "gemma", "fp16.json", result(gemma, values={"mmlu": 25.0, "wikitext2": 30.0}))
    write(folder / "gemma", "smooth_w4a8.json", result(gemma, "SmoothQuant", 4, 8, {"mmlu": 20.0, "wikitext2": 90.0},
                                                       cost=(1.0, 900)))
    coll = collect.collect(folder)
    ts = {t.name: t for t in tables.all_tables(coll)}
    assert "table2b" in ts and gemma in ts["table2b"].title and "no counterpart in the paper" in ts["table2b"].title
    assert "Qwen" in ts["table2"].title and "Table 1" in ts["table1"].title
    assert not [r for r in compare.compression_rows(coll) if r["model"] == gemma]
    md = "\n".join(render.to_markdown(t) for t in compare.all_comparisons(coll))
    assert gemma not in md.split("Table 4")[0]
    c4 = {c.number: c for c in claims.evaluate(coll)}[4]
    assert gemma not in c4.evidence and c4.verdict == claims.HOLDS


def test_sensitivity_compares_the_architectures_on_their_paired_changes(tmp_path):
    """Per method and bits, each model's mean paired accuracy change with its SE, KLD and log-ppl change; a
    difference between two models is called only when it exceeds their combined 95% interval."""
    from llmc_slm.paired import PairedDelta
    from llmc_slm.reports.sensitivity import sensitivity_table
    d = tmp_path / "r"
    d.mkdir()
    for model in (SMOL, QWEN):
        write(d, f"{model}_fp16.json", result(model=model, values={"wikitext2": 20.0, "arc_easy": 50.0}))
        for bits, w in (("w8a8", 8), ("w4a8", 4)):
            write(d, f"{model}_rtn_{bits}.json", result(model=model, method="RTN", w=w,
                                                        values={"wikitext2": 21.0, "arc_easy": 49.0}))
    coll = collect.collect(d)
    drops = {(SMOL, "W8A8"): (-0.5, 0.4), (QWEN, "W8A8"): (-0.9, 0.4), (SMOL, "W4A8"): (-1.0, 0.3),
             (QWEN, "W4A8"): (-6.0, 0.5)}
    for r in coll.runs:
        if not r.is_float:
            delta, se = drops[(r.model, r.bits)]
            r.paired = {ds: PairedDelta(n=500, mean_a=50.0, mean_b=50.0 + delta, delta=delta, stderr=se)
                        for ds in ("arc_easy", "piqa")}
    t = sensitivity_table(coll)
    rows = {(row[0], row[1]): dict(zip(t.header, row)) for row in t.rows}
    assert rows[("RTN", "W4A8")][f"{SMOL}: acc Δ"] == f"-1.00 ± {math.sqrt(2 * 0.3 ** 2) / 2:.2f} (2/5)"
    assert rows[("RTN", "W4A8")][f"{QWEN}: acc Δ"].startswith("-6.00")
    assert f"RTN W4A8: {QWEN} loses more accuracy than {SMOL}" in t.notes
    assert f"RTN W8A8: {QWEN} loses more accuracy than {SMOL} (within the 95% interval: not decided)" in t.notes
    assert not any(n.startswith("Compute dtypes differ") for n in t.notes)      # all bfloat16 here


def test_sensitivity_says_when_the_models_were_computed_in_different_dtypes(tmp_path):
    from llmc_slm.reports.sensitivity import sensitivity_table
    d = tmp_path / "r"
    d.mkdir()
    for model, dtype in ((SMOL, "bfloat16"), (QWEN, "float32")):
        for name, rec in (("fp16", result(model=model, values={"wikitext2": 20.0})),
                          ("rtn_w8a8", result(model=model, method="RTN", values={"wikitext2": 21.0}))):
            rec["environment"]["dtype"] = dtype
            write(d, f"{model}_{name}.json", rec)
    coll = collect.collect(d)
    assert all(not r.mismatch for r in coll.runs)               # each pairs with its own dtype's float run
    notes = [n for n in sensitivity_table(coll).notes if n.startswith("Compute dtypes differ")]
    assert notes == [f"Compute dtypes differ: {QWEN} float32; {SMOL} bfloat16. Each model's changes are against "
                     "its own float run in the same dtype, but across models the dtype differs along with the "
                     "architecture (the folder's README says what it moves)."]


def test_sensitivity_bounds_what_tokenization_moves_across_models(tmp_path):
    """KLD and log-ppl change are per token; models that split the same text into different token counts get a
    note with each count and the largest ratio (a single model gets none), and their KLDs a verdict."""
    from llmc_slm.reports.sensitivity import sensitivity_table, tokenization_note
    d = tmp_path / "r"
    d.mkdir()
    kld = {SMOL: 0.6, QWEN: 0.5}
    for model, windows in ((SMOL, 148), (QWEN, 142)):
        for name, rec in (("fp16", result(model=model, values={"wikitext2": 20.0}, windows=windows,
                                          windows_total=windows)),
                          ("rtn_w8a8", result(model=model, method="RTN", values={"wikitext2": 21.0},
                                              windows=windows, windows_total=windows))):
            rec["metrics"]["fake_quant" if name != "fp16" else "pretrain"]["wikitext2"]["vs_float"] = (
                None if name == "fp16" else {"kld": kld[model], "kld_stderr": 0.01})
            write(d, f"{model}_{name}.json", rec)
    coll = collect.collect(d)
    table = sensitivity_table(coll)
    assert [n for n in table.notes if "KLD is" in n] == [
        f"RTN W8A8: {SMOL}'s KLD is {0.6 / 0.5:.2f}x {QWEN}'s (beyond noise and the {148 / 142:.2f} tokenization factor)"]
    notes = [n for n in table.notes if n.startswith("Tokenization")]
    assert len(notes) == 1
    assert f"{QWEN} 142 windows of 2048; {SMOL} 148 windows of 2048 tokens" in notes[0]
    assert f"at most about {148 / 142:.2f}" in notes[0]
    assert tokenization_note([r for r in coll.runs if r.model == SMOL]) is None


def test_kld_verdict_needs_both_noise_and_the_tokenization_factor():
    from llmc_slm.reports.sensitivity import kld_verdict
    assert kld_verdict("RTN W4A8", "a", "b", (2.10, 0.01), (0.92, 0.01), 1.04) == \
        "RTN W4A8: a's KLD is 2.28x b's (beyond noise and the 1.04 tokenization factor)"
    assert kld_verdict("S", "a", "b", (0.0102, 0.001), (0.0100, 0.001), 1.04).endswith(
        "(within the 95% interval: not decided)")
    assert kld_verdict("S", "a", "b", (1.03, 0.001), (1.0, 0.001), 1.04).endswith(
        "(within the 1.04 tokenization factor: not decided)")
    assert kld_verdict("S", "a", "b", (0.5, None), (1.0, 0.01), 1.04) == \
        "S: b's KLD is 2.00x a's (beyond the 1.04 tokenization factor; no standard error recorded)"
    assert kld_verdict("S", "a", "b", (None, None), (1.0, 0.01), 1.04) is None


def test_pair_tally_counts_each_models_larger_change_and_which_are_decided():
    """The per-pair summary: over the settings both models ran, who has the larger KLD and the larger accuracy
    loss, and how many of those orders pass the verdicts' rules (noise, and the tokenization factor for KLD)."""
    from llmc_slm.reports.sensitivity import PairTally
    t = PairTally("a", "b")
    t.add((2.0, 0.01), (1.0, 0.01), (-8.0, 0.9, 5), (-3.0, 0.6, 5), 1.04)     # a larger, both decided
    t.add((0.0102, 0.001), (0.0100, 0.001), (-0.1, 0.3, 5), (-0.5, 0.3, 5), 1.04)   # a KLD, b acc: neither decided
    t.add((0.5, 0.01), (1.0, 0.01), None, (-1.0, 0.3, 5), 1.04)              # b's KLD decided; no accuracy for a
    t.add((None, None), (1.0, 0.01), (-1.0, 0.2, 5), (-0.2, 0.2, 5), 1.04)   # no KLD for a; a's loss decided
    assert t.settings == 4
    assert t.kld == {"a": [2, 1], "b": [1, 1]} and t.acc == {"a": [2, 2], "b": [1, 0]}
    assert t.line() == ("Across the 4 settings both ran, a against b: the larger KLD a in 2 (1 decided), b in 1 "
                        "(1 decided); the larger accuracy loss a in 2 (2 decided), b in 1 (0 decided).")


def test_pair_tally_weighs_each_loss_by_its_models_headroom_above_chance():
    """Given each model's headroom, the tally also says who loses the larger share of it: a model far above chance
    can lose more points and still the smaller share; the SEs scale with the headroom."""
    from llmc_slm.reports.sensitivity import PairTally
    t = PairTally("a", "b", headroom=(15.0, 5.0))
    t.add((1.0, 0.01), (1.0, 0.01), (-3.0, 0.2, 5), (-1.5, 0.2, 5), 1.04)    # a: 3.0 points = 0.20; b: 1.5 = 0.30
    t.add((1.0, 0.01), (1.0, 0.01), (-1.5, 0.6, 5), (-0.6, 0.3, 5), 1.04)    # 0.10 against 0.12: not decided
    assert t.acc == {"a": [2, 1], "b": [0, 0]} and t.share == {"a": [0, 0], "b": [2, 1]}
    assert t.line().endswith("; the larger share of its headroom above chance lost a in 0 (0 decided), b in 2 "
                             "(1 decided).")
    assert "headroom" not in PairTally("a", "b", headroom=(15.0, 0.0)).line()    # at chance: no share to take


def test_sensitivity_table_ends_with_a_tally_per_pair_of_models(tmp_path):
    from llmc_slm.paired import PairedDelta
    from llmc_slm.reports.sensitivity import sensitivity_table
    d = tmp_path / "r"
    d.mkdir()
    kld = {(SMOL, 8): 0.03, (QWEN, 8): 0.01, (SMOL, 4): 0.9, (QWEN, 4): 0.6}
    for model in (SMOL, QWEN):
        write(d, f"{model}_fp16.json", result(model=model, values={"wikitext2": 20.0, "arc_easy": 50.0}))
        for w in (8, 4):
            rec = result(model=model, method="RTN", w=w, values={"wikitext2": 21.0, "arc_easy": 49.0})
            rec["metrics"]["fake_quant"]["wikitext2"]["vs_float"] = {"kld": kld[(model, w)], "kld_stderr": 0.001}
            write(d, f"{model}_rtn_w{w}a8.json", rec)
    write(d, f"{SMOL}_smooth_w8a8.json", result(model=SMOL, method="SmoothQuant",
                                                 values={"wikitext2": 21.0, "arc_easy": 49.0}))
    coll = collect.collect(d)
    for r in coll.runs:
        if not r.is_float:
            delta = -1.0 if r.model == SMOL else -0.5
            r.paired = {"arc_easy": PairedDelta(n=500, mean_a=50.0, mean_b=50.0 + delta, delta=delta, stderr=0.2)}
    tallies = [n for n in sensitivity_table(coll).notes if n.startswith("Across")]
    assert tallies == [f"Across the 2 settings both ran, {QWEN} against {SMOL}: the larger KLD {QWEN} in 0 "
                       f"(0 decided), {SMOL} in 2 (2 decided); the larger accuracy loss {QWEN} in 0 (0 decided), "
                       f"{SMOL} in 2 (0 decided); the larger share of its headroom above chance lost {QWEN} in 0 "
                       f"(0 decided), {SMOL} in 2 (0 decided)."]      # both 25 points above chance on ARC-e


def test_sensitivity_names_the_methods_calibrated_on_wikitext(tmp_path):
    """KLD and log-ppl change are measured on WikiText-2's test split: methods fitted on WikiText-2 text are named,
    since for them those figures are in-domain; RTN (no calibration) and other calibration texts are not."""
    from llmc_slm.reports.sensitivity import calibration_note, sensitivity_table
    d = tmp_path / "r"
    d.mkdir()
    write(d, "fp16.json", result(values={"wikitext2": 20.0}))
    write(d, "rtn.json", result(method="RTN", values={"wikitext2": 21.0}))
    for method, cal in (("GPTQ", {"file": "/data/wikitext2/wiki.valid.tokens", "preproc": "wikitext2_gptq"}),
                        ("SmoothQuant", {"file": "/data/pile/val.jsonl", "preproc": "pileval"})):
        rec = result(method=method, values={"wikitext2": 21.0})
        rec["calibration"] = cal
        write(d, f"{method}.json", rec)
    coll = collect.collect(d)
    note = [n for n in sensitivity_table(coll).notes if n.startswith("Calibrated on WikiText-2")]
    assert note and note[0].startswith("Calibrated on WikiText-2 text (the record's calibration file): GPTQ. ")
    assert calibration_note([r for r in coll.runs if r.method in ("RTN", "SmoothQuant")]) is None


def test_plot_lines_keep_weight_only_and_kv_runs_apart():
    from types import SimpleNamespace
    from llmc_slm.reports.plots import series_suffix
    assert series_suffix(SimpleNamespace(abits=8, bits="W4A8")) == ""
    assert series_suffix(SimpleNamespace(abits=16, bits="W4A16")) == " (A16)"
    assert series_suffix(SimpleNamespace(abits=8, bits="W4A8KV4")) == " (KV4)"
    assert series_suffix(SimpleNamespace(abits=8, bits="W4A8-g64")) == " (g64)"
    assert series_suffix(SimpleNamespace(abits=16, bits="W4A16-g128")) == " (A16, g128)"


def test_the_bits_figure_has_a_kld_panel_and_standard_errors(tmp_path):
    from llmc_slm.reports.plots import KLD, bits_data
    d = tmp_path / "r"
    d.mkdir()
    write(d, "fp16.json", result(values={"wikitext2": 20.0, "arc_easy": 50.0}))
    rec = result(method="RTN", w=4, values={"wikitext2": 30.0, "arc_easy": 45.0}, se=1.5)
    rec["metrics"]["fake_quant"]["wikitext2"]["vs_float"] = {"kld": 0.9, "top1_agreement": 0.5}
    write(d, "rtn_w4a8.json", rec)
    data = bits_data(collect.collect(d), SMOL)
    assert data[KLD]["RTN"] == [(16, 0.0, None), (4, 0.9, None)]
    assert data["arc_easy"]["RTN"][-1] == (4, 45.0, 1.5)


def test_stage_times_total_each_model_then_the_folder(tmp_path):
    from llmc_slm.reports.evaluations import stage_time_table
    d = tmp_path / "results"
    stages = {SMOL: [(10, 100, 1000), (20, 300, 900)], QWEN: [(40, 2000, 3000)]}
    for model, runs in stages.items():
        for i, (load, quantize, evaluate) in enumerate(runs):
            data = result(model, "RTN", 8, 8, {"wikitext2": 20.0})
            data["timings"] = {"stages": {"load": load, "quantize": quantize, "evaluate": evaluate}}
            write(d / model, f"run{i}.json", data)
    table = stage_time_table(collect.collect(d))
    rows = {r[0]: r for r in table.rows}
    col = {name: i for i, name in enumerate(table.header)}
    smol, qwen, both = rows[f"total, {SMOL}"], rows[f"total, {QWEN}"], rows["total, all models"]
    assert (smol[col["load"]], smol[col["quantize"]], smol[col["evaluate"]], smol[col["total"]]) == \
        ("30", "400", "1900", "2330")
    assert (qwen[col["quantize"]], qwen[col["total"]]) == ("2000", "5040")
    assert (both[col["evaluate"]], both[col["total"]]) == ("4900", "7370")
    # each model's runs come before its total, and the folder's total is last
    names = [r[0] for r in table.rows]
    assert names.index(f"total, {SMOL}") > names.index(f"{SMOL}/run1")
    assert names[-1] == "total, all models"
    # one model: its total only
    one = stage_time_table(collect.collect(d / SMOL))
    assert [r[0] for r in one.rows if r[0].startswith("total")] == [f"total, {SMOL}"]


def test_sensitivity_gives_each_models_float_accuracy_and_headroom_above_chance(tmp_path):
    """A model nearer chance has less accuracy to lose: the note gives each model's float mean accuracy over
    its table tasks and that mean less chance (1/4 for ARC, 1/2 for PIQA); one model alone gets no note."""
    from llmc_slm.reports.sensitivity import float_headroom, headroom_note
    d = tmp_path / "r"
    d.mkdir()
    for model, arc, piqa in ((SMOL, 45.0, 61.0), (QWEN, 30.0, 55.0)):
        write(d, f"{model}_fp16.json", result(model=model, values={"wikitext2": 20.0, "arc_easy": arc, "piqa": piqa}))
        write(d, f"{model}_rtn_w8a8.json", result(model=model, method="RTN",
                                                  values={"wikitext2": 21.0, "arc_easy": arc - 1, "piqa": piqa}))
    coll = collect.collect(d)
    room = float_headroom(coll)
    assert room[SMOL] == pytest.approx((53.0, 53.0 - 37.5, 2))
    assert room[QWEN] == pytest.approx((42.5, 5.0, 2))
    note = headroom_note(coll)
    assert f"{SMOL} 53.0 (+15.5 above chance, 2 tasks)" in note and f"{QWEN} 42.5 (+5.0 above chance, 2 tasks)" in note
    from llmc_slm.reports.sensitivity import sensitivity_table
    assert note in sensitivity_table(coll).notes
    one = tmp_path / "one"
    one.mkdir()
    write(one, "fp16.json", result(model=SMOL, values={"arc_easy": 45.0}))
    assert headroom_note(collect.collect(one)) is None


def test_every_table_task_states_its_chance_level():
    """The headroom note needs each column's chance; a task added without one would drop out silently."""
    from llmc_slm.tasks import TASKS
    for column, names in collect.COLUMN_TASKS.items():
        for name in names:
            assert 0 < TASKS[name].chance < 1, name
    assert TASKS["piqa"].chance == 0.5 and TASKS["arc_challenge"].chance == 0.25
