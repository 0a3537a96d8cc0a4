"""Our figures beside the paper's published ones (``published``), with deltas (ours - paper).

Per model: the paper's Table 1 for a SmolLM model, Table 2 for another; one of our runs per method and
bits (:func:`~llmc_slm.reports.collect.primary_runs`), the float run for Full Prec. Then Table 3
(inference, W8A8) and Table 4 (quantization cost, W8A8) where our runs have those sections. The paper's
SmolLM2-135M / Qwen2.5-0.5B were FP16 checkpoints on an A800 GPU: a different baseline, dtype or device
changes the absolute numbers, which the notes say.
"""

from __future__ import annotations

import math
from typing import Optional

from . import published
from .collect import DATASETS, FLOAT, LABELS, Collection, primary_runs, sort_key
from .render import Table
from .tables import DASH, MISMATCH, PARTIAL, SUBSET, cost_scores, fmt, slug

METRIC_LABELS = {**LABELS, "slmq_perf": "SLMQ_perf"}


def _delta(ours: Optional[float], paper: Optional[float]) -> tuple[Optional[float], Optional[float]]:
    if ours is None or paper is None or not math.isfinite(ours):
        return None, None
    d = ours - paper
    return d, (100.0 * d / paper if paper else None)


def compression_rows(coll: Collection) -> list[dict]:
    """One dict per (model, paper row, metric) our runs have: {model, paper_model, method, bits, metric, ours,
    ours_stderr, paper, delta, delta_rel, subset, mismatch, partial, run, status}; rows of the paper with no
    run of ours have ``status`` 'no run' and ``metric`` None."""
    primary = primary_runs(coll.runs)
    out = []
    for model in coll.models():
        paper = published.compression_table(model)
        if paper is None:       # a model the paper did not table (Gemma-3)
            continue
        floats = sorted((r for r in coll.of_model(model) if r.is_float and r.complete and r.values),
                        key=lambda r: (-len(r.values), r.rel))
        for prow in paper["rows"]:
            is_float = prow["method"] == FLOAT
            run = (floats[0] if floats else None) if is_float else primary.get((model, prow["method"], prow["bits"]))
            base = {"model": model, "paper_model": paper["model"], "method": prow["method"], "bits": prow["bits"]}
            if run is None or not run.complete:
                out.append({**base, "metric": None, "status": "no run" if run is None else run.status,
                            "run": run.rel if run else None})
                continue
            for col in published.COMPRESSION_COLUMNS:
                if col == "slmq_perf":
                    if is_float or run.perf is None:
                        continue
                    ours, se = run.perf, run.perf_stderr
                    subset = any(run.values[d].subset for d in run.perf_datasets)
                    mismatch = any(d in run.mismatch for d in run.perf_datasets)
                    partial = len(run.perf_datasets) < len(DATASETS)
                else:
                    v = run.values.get(col)
                    if v is None or v.value is None:
                        continue
                    ours, se, subset, mismatch, partial = v.value, v.stderr, v.subset, col in run.mismatch, False
                d, rel = _delta(ours, prow[col])
                out.append({**base, "metric": col, "ours": ours, "ours_stderr": se, "paper": prow[col], "delta": d,
                            "delta_rel": rel, "subset": subset, "mismatch": mismatch, "partial": partial,
                            "run": run.rel, "status": run.status})
    return out


def compression_tables(coll: Collection, with_stderr: bool = True) -> list[Table]:
    rows = compression_rows(coll)
    tables = []
    for model in coll.models():
        paper = published.compression_table(model)
        if paper is None:
            continue
        number = 1 if paper is published.TABLE1 else 2
        t = Table(f"compare_table{number}_{slug(model)}",
                  f"{model} vs the paper's Table {number} ({paper['model']})",
                  ["Method", "Bits", "Metric", "Ours", "Paper", "Δ", "Δ rel."], left=3)
        missing, flags = [], set()
        last = None
        for r in (x for x in rows if x["model"] == model):
            if r["metric"] is None:
                missing.append(f"{r['method']} {r['bits']} ({r['status']})")
                continue
            ours = fmt(r["ours"])
            if with_stderr and r.get("ours_stderr"):
                ours += f" ± {r['ours_stderr']:.2f}"
            for flag, mark in (("subset", SUBSET), ("mismatch", MISMATCH), ("partial", PARTIAL)):
                if r[flag]:
                    ours += mark
                    flags.add(flag)
            rel = DASH if r["delta_rel"] is None else f"{r['delta_rel']:+.1f}%"
            t.add([r["method"], r["bits"], METRIC_LABELS[r["metric"]], ours, fmt(r["paper"]),
                   DASH if r["delta"] is None else f"{r['delta']:+.2f}", rel], source=r["run"],
                  new_group=(r["method"], r["bits"]) != last)
            last = (r["method"], r["bits"])
        t.notes.append(f"Paper: {published.CITATION}, Table {number}. Δ = ours - paper (points for accuracies "
                       f"in %, perplexity units for Wiki ppl); Δ rel. = Δ / paper.")
        t.notes.append(f"Ours: quantized runs at {coll.position}, one run per method and bits (complete, not a "
                       f"variant); SLMQ_perf uncapped (the paper caps it at 100).")
        runs = [r for r in coll.of_model(model)]
        env = sorted({f"{r.environment.dtype or '?'} on {r.device}" for r in runs if r.environment.device})
        if env:
            t.notes.append(f"Our runs: {', '.join(env)}; the paper: FP16 on an NVIDIA A800.")
        model_notes = next((r.result.model.notes for r in runs if r.result.model.notes), None)
        if model_notes:
            t.notes.append("Model: " + "; ".join(map(str, model_notes)) + ".")
        if "subset" in flags:
            t.notes.append(f"{SUBSET} ours evaluated on a subset of the items/windows (see Tables 1/2): the paper "
                           "used the full sets.")
        if "mismatch" in flags:
            t.notes.append(f"{MISMATCH} our baseline was evaluated on different items than the quantized run.")
        if "partial" in flags:
            t.notes.append(f"{PARTIAL} our SLMQ_perf covers fewer than the paper's six datasets: not comparable.")
        if missing:
            t.notes.append("Paper rows without a complete run of ours: " + ", ".join(missing) + ".")
        tables.append(t)
    return tables


def inference_table(coll: Collection) -> Optional[Table]:
    """Our W8A8 Track 2 figures beside the paper's Table 3 (None without W8A8 inference runs)."""
    runs = [r for r in sorted(primary_runs(coll.runs).values(), key=sort_key)
            if r.bits == "W8A8" and r.complete and r.inference]
    if not runs:
        return None
    t = Table("compare_table3", "Inference (W8A8) vs the paper's Table 3",
              ["Method", "Model", "Metric", "Ours", "Paper", "Δ"], left=3)
    seen_models = []
    for r in runs:
        pmodel = published.paper_model(r.model, published.TABLE3)
        entries = []
        if r.model not in seen_models:
            seen_models.append(r.model)
            b = r.inference["baseline"]
            p = (published.row(published.TABLE3, FLOAT, model=pmodel) or {}) if pmodel else {}
            entries.append((FLOAT, [("Peak Mem. (MB)", b["peak_mem_mb"], p.get("gpu_mem_mb")),
                                    ("Params (M) / paper's Model Size", b["params_m"], p.get("model_size_mb")),
                                    ("MACs (G, calflops)", b["macs_g"], p.get("macs_g"))]))
        c = r.inference["compressed"]
        p = (published.row(published.TABLE3, r.method, model=pmodel) or {}) if pmodel else {}
        entries.append((r.method, [("Peak Mem. (MB)", c["peak_mem_mb"], p.get("gpu_mem_mb")),
                                   ("Params (M) / paper's Model Size", c["params_m"], p.get("model_size_mb")),
                                   ("MACs (G, calflops)", c["macs_g"], p.get("macs_g")),
                                   ("SLMQ_infer (paper-compat.)", r.inference["paper_compatible"], p.get("slmq_infer")),
                                   ("SLMQ_infer (measured)", r.inference["measured"], p.get("slmq_infer"))]))
        for i, (method, metrics) in enumerate(entries):
            for j, (label, ours, paper) in enumerate(metrics):
                d, _ = _delta(ours, paper)
                t.add([method, r.model, label, fmt(ours), fmt(paper), DASH if d is None else f"{d:+.2f}"],
                      source=r.rel, new_group=j == 0)
    kinds = sorted({r.inference.get("memory_kind") or "?" for r in runs})
    t.notes.append(f"Paper: {published.CITATION}, Table 3 (GPU memory on an A800). Ours: peak memory of kind "
                   f"{', '.join(kinds)} on {', '.join(sorted({r.device for r in runs}))}: not the same quantity "
                   f"on a CPU.")
    t.notes.append("The paper's 'Model Size' is a parameter count in millions; its SLMQ_infer uses MACs in place of "
                   "TPS (our paper-compatible variant); our measured score uses TPS and bytes.")
    return t


def cost_table(coll: Collection) -> Optional[Table]:
    """Our W8A8 quantization cost beside the paper's Table 4 (None without W8A8 quant_cost runs)."""
    runs = [r for r in sorted(primary_runs(coll.runs).values(), key=sort_key)
            if r.bits == "W8A8" and r.complete and r.quant_cost]
    if not runs:
        return None
    scores, notes = cost_scores(runs)
    t = Table("compare_table4", "Quantization cost (W8A8) vs the paper's Table 4",
              ["Method", "Model", "Metric", "Ours", "Paper", "Δ"], left=3)
    for r in runs:
        pmodel = published.paper_model(r.model, published.TABLE4)
        p = (published.row(published.TABLE4, r.method, model=pmodel) or {}) if pmodel else {}
        metrics = [("Memory (MB)", r.quant_cost["peak_mem_mb"], p.get("gpu_mem_mb")),
                   ("Quant Time (min)", r.quant_cost["time_min"], p.get("quant_time_min")),
                   ("SLMQ_quant", (scores.get(r.rel) or {}).get("slmq_quant"), p.get("slmq_quant"))]
        for j, (label, ours, paper) in enumerate(metrics):
            d, _ = _delta(ours, paper)
            t.add([r.label, r.model, label, fmt(ours), fmt(paper), DASH if d is None else f"{d:+.2f}"],
                  source=r.rel, new_group=j == 0)
    kinds = sorted({r.quant_cost.get("memory_kind") or "?" for r in runs})
    t.notes.append(f"Paper: {published.CITATION}, Table 4 (NVIDIA A800, GPU memory). Ours: "
                   f"{', '.join(sorted({r.device for r in runs}))}, memory kind {', '.join(kinds)}"
                   + (f", profile {', '.join(sorted({str(r.profile) for r in runs if r.profile}))}"
                      if any(r.profile for r in runs) else "") + ".")
    t.notes.append("SLMQ_quant is relative to the costliest method compared: it depends on which methods ran.")
    t.notes.extend(notes)
    return t


def all_comparisons(coll: Collection, with_stderr: bool = True) -> list[Table]:
    tables = compression_tables(coll, with_stderr)
    for t in (inference_table(coll), cost_table(coll)):
        if t is not None:
            tables.append(t)
    return tables


__all__ = ["compression_rows", "compression_tables", "inference_table", "cost_table", "all_comparisons"]
