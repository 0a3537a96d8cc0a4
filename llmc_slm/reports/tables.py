"""Tables 1-4 of the SLMQuant paper, in its layout, from a :class:`~llmc_slm.reports.collect.Collection`.

- Table 1 (SmolLM models) / Table 2 (Qwen models) / Table 2b (a model the paper did not table: Gemma-3), one
  table per model: Method, Bits, MMLU, ARC-c, ARC-e, PIQA, HellaSwag, Wiki ppl, SLMQ_perf
  (``llmc_slm.scoring.slmq_perf``, uncapped);
- Table 3: inference (Peak Mem., Model Size, Params, TPS, MACs, SLMQ_infer measured and paper-compatible,
  the peak above the process's idle footprint);
- Table 4: quantization cost (Memory, Quant Time, SLMQ_quant via ``llmc_slm.tracks.quant_cost.quant_table``).

Tables 3 and 4 are W8A8 as in the paper; W4A8 versions are added, labelled as extra, when such runs exist.
Every run of the folder reaches Tables 1/2 (variants named by their task id); Table 4 scores one run per
method (:func:`~llmc_slm.reports.collect.primary_runs`) since SLMQ_quant compares methods.
"""

from __future__ import annotations

import math
import re
from typing import Optional

from llmc_slm.tasks import TASKS
from llmc_slm.tracks.quant_cost import quant_table

from .collect import COLUMN_TASKS, DATASETS, FLOAT, LABELS, MB, Collection, Run, primary_runs, sort_key
from .render import Table

DASH = "—"
SUBSET, MISMATCH, PARTIAL = "†", "‡", "§"
MEMORY_KINDS = {
    "cpu_peak_rss": "CPU peak resident memory (RSS) of the process",
    "cpu_rss_sampled": "CPU resident memory (RSS) sampled every 5 ms",
    "cuda_max_allocated": "GPU memory, PyTorch allocator peak (max_memory_allocated)",
}
PROFILE_NOTE = {"cpu": "profile cpu: reduced calibration (configs/profiles/cpu.yml), not the paper's full protocol"}


def is_smollm(model: str) -> bool:
    return "smollm" in model.lower()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def fmt(x: Optional[float], digits: int = 2) -> str:
    if x is None:
        return DASH
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def arch_line(arch: dict) -> str:
    """The architecture read from the model's config (never the paper's description)."""
    if not arch:
        return "architecture: not recorded"
    parts = []
    if arch.get("model_type"):
        parts.append(str(arch["model_type"]))
    if arch.get("layers"):
        parts.append(f"{arch['layers']} layers")
    if arch.get("hidden_size"):
        parts.append(f"hidden {arch['hidden_size']}")
    h, kv = arch.get("heads"), arch.get("kv_heads")
    if h and kv:
        kind = "MHA" if kv == h else ("MQA" if kv == 1 else "GQA")
        parts.append(f"{h} query / {kv} key-value heads ({kind})")
    layers, rope = arch.get("layers"), arch.get("rope_layers")
    if rope is not None and layers:
        parts.append("RoPE in every layer" if rope == layers else "no positional encoding (NoPE)" if rope == 0
                     else f"RoPE in {rope} of {layers} layers (NoPE in the others)")
    if arch.get("norm"):
        parts.append(str(arch["norm"]))
    if arch.get("tied_embeddings") is not None:
        parts.append("tied embeddings" if arch["tied_embeddings"] else "untied embeddings")
    if arch.get("parameters"):
        parts.append(f"{arch['parameters'] / 1e6:.1f}M parameters")
    return "architecture (from the model's config): " + ", ".join(parts)


def _status_cell(run: Run) -> str:
    return "diverged" if run.status == "diverged" else run.status


def _value_text(v, with_stderr: bool, mismatch: bool = False) -> str:
    if v is None or v.value is None:
        return DASH
    if not v.finite:
        text = "diverged" if v.dataset == "wikitext2" else fmt(v.value)
    else:
        text = fmt(v.value)
        if with_stderr and v.stderr is not None:
            text += f" ± {v.stderr:.2f}"
    if v.subset:
        text += SUBSET
    if mismatch:
        text += MISMATCH
    return text


def _value_cell(run: Run, ds: str, with_stderr: bool) -> str:
    return _value_text(run.values.get(ds), with_stderr, ds in run.mismatch)


def borrowed_baselines(runs) -> dict:
    """{source: {dataset: Value}} of the baselines taken from another run's ``pretrain`` metrics (same
    model, same items) rather than from a float run."""
    out: dict = {}
    for r in runs:
        for ds, src in r.baseline_source.items():
            if src.endswith("(pretrain, same items)"):
                out.setdefault(src, {})[ds] = r.baseline[ds]
    return out


def _perf_cell(run: Run, with_stderr: bool) -> str:
    if run.perf is None:
        return DASH
    text = fmt(run.perf)
    if with_stderr and run.perf_stderr:
        text += f" ± {run.perf_stderr:.2f}"
    if len(run.perf_datasets) < len(DATASETS):
        text += PARTIAL
    if any(ds in run.mismatch for ds in run.perf_datasets):
        text += MISMATCH
    return text


def _profiles_label(runs) -> tuple[bool, list]:
    """(whether the runs mix profiles, the notes about the profiles used)."""
    profiles = sorted({r.profile for r in runs if not r.is_float}, key=str)
    notes = [PROFILE_NOTE.get(p, f"profile {p}") for p in profiles if p]
    return len(profiles) > 1, notes


def _method_cell(run: Run, mixed_profiles: bool) -> str:
    label = run.label
    if mixed_profiles and run.profile and not run.is_float:
        label += f" [{run.profile}]"
    return label


def _metrics_note() -> str:
    """``acc for MMLU, acc_norm for ARC-c, ARC-e, PIQA, HellaSwag``: each column's table metric."""
    by_metric: dict[str, list[str]] = {}
    for column, names in COLUMN_TASKS.items():
        by_metric.setdefault(TASKS[names[0]].table_metric, []).append(LABELS[column])
    return ", ".join(f"{metric} for {', '.join(labels)}" for metric, labels in by_metric.items())


def table_number(model: str) -> str:
    """Our table of ``model``: "1" for a SmolLM model and "2" for a Qwen one (the paper's Tables 1 and 2),
    "2b" for a model the paper did not table (Gemma-3)."""
    from . import published
    paper = published.compression_table(model)
    return "1" if paper is published.TABLE1 else "2" if paper is published.TABLE2 else "2b"


def compression_table(coll: Collection, model: str, name: str, number, with_stderr: bool = False) -> Table:
    """Table 1/2/2b for one model: every run of the model, float first, then W8 before W4."""
    from . import published
    runs = sorted(coll.of_model(model), key=sort_key)
    arch = next((r.arch for r in runs if r.arch), {})
    paper = published.compression_table(model)
    counterpart = f"the paper's Table {number}: {paper['model']}" if paper else "no counterpart in the paper"
    t = Table(name, f"Table {number}: compression performance of {model} ({counterpart})",
              ["Method", "Bits"] + [LABELS[d] for d in DATASETS] + ["SLMQ_perf"], left=2)
    mixed, profile_notes = _profiles_label(runs)
    subset_notes, mismatch_notes, status_notes, other_notes = {}, [], [], []
    forms = set()
    last_bits = None
    borrowed = borrowed_baselines(runs)
    for r in runs:
        if borrowed and not r.is_float:
            for src, vals in borrowed.items():
                rel = src.split(" (")[0]
                label = f"{FLOAT} (pretrain of {rel.rsplit('/', 1)[-1]})"
                for ds, v in vals.items():
                    if v.subset:
                        subset_notes.setdefault((LABELS[ds], v.describe_items()), []).append(label)
                t.add([label, "FP"] +
                      [_value_text(vals.get(ds), with_stderr) for ds in DATASETS] + [DASH], source=rel,
                      note="float model's pretrain metrics recorded by this run; the baseline of runs evaluated "
                           "on the same items", new_group=last_bits != "FP")
                last_bits = "FP"
            borrowed = {}
        note = []
        if r.complete:
            cells = [_value_cell(r, ds, with_stderr) for ds in DATASETS] + [
                DASH if r.is_float else _perf_cell(r, with_stderr)]
        else:
            cells = [_status_cell(r)] * (len(DATASETS) + 1)
            status_notes.append(f"{r.rel}: status {r.status}" + (f" ({_clip(r.error)})" if r.error else ""))
            note.append(f"status {r.status}")
        for ds, v in r.values.items():
            if ds == "mmlu":
                forms.add(v.source)
            if v.subset and r.complete:
                subset_notes.setdefault((LABELS[ds], v.describe_items()), []).append(r.label)
                note.append(f"subset: {LABELS[ds]} {v.describe_items()}")
        for ds, text in r.mismatch.items():
            if r.complete:
                mismatch_notes.append(f"{r.label}: {text}")
                note.append(f"baseline on other items: {text}")
        if r.complete and not r.is_float and r.perf is not None and len(r.perf_datasets) < len(DATASETS):
            note.append(f"SLMQ_perf over {', '.join(LABELS[d] for d in r.perf_datasets)}")
        for n in r.notes:
            other_notes.append(f"{r.label} [{r.rel}]: {n}")
        t.add([_method_cell(r, mixed), r.bits] + cells, source=r.rel, note="; ".join(note),
              new_group=r.bits != last_bits)
        last_bits = r.bits
    pos = coll.position
    t.notes.append(arch_line(arch))
    mmlu = ("MMLU: cloze form (mmlu_continuation), as the paper's tables" if forms == {"mmlu_continuation"} else
            "MMLU: letter form (mmlu)" if forms == {"mmlu"} else
            "MMLU: cloze form (mmlu_continuation) where a run has it, else the letter form (mmlu)" if forms else "")
    t.notes.append(f"Accuracies in %: {_metrics_note()} (the tasks' table_metric, llmc_slm.tasks); "
                   "Wiki ppl: WikiText-2 perplexity." + (f" {mmlu}." if mmlu else "")
                   + (" Values ± standard error." if with_stderr else ""))
    t.notes.append(f"Quantized runs at evaluation position {pos}; {FLOAT} at pretrain.")
    t.notes.append("SLMQ_perf = 100·sqrt(mean of r_i²) against the Full Prec. baseline (llmc_slm.scoring.slmq_perf), "
                   "uncapped: the paper caps it at 100, so values above 100 are printed as computed.")
    sources = sorted({s for r in runs for s in r.baseline_source.values()})
    if sources:
        t.notes.append("Baselines of the quantized runs (same items where possible): " + "; ".join(sources) + ".")
    t.notes.extend(profile_notes)
    for (label, items), who in subset_notes.items():
        t.notes.append(f"{SUBSET} evaluated on a subset: {label} on the {items} ({', '.join(_uniq(who))}).")
    if any(PARTIAL in c for c in t.column("SLMQ_perf")):
        t.notes.append(f"{PARTIAL} SLMQ_perf over the datasets this run and its baseline both have (fewer than the "
                       f"paper's six): not comparable with the paper's score.")
    for m in mismatch_notes:
        t.notes.append(f"{MISMATCH} baseline evaluated on different items: {m}.")
    not_there = [r.rel for r in runs if r.complete and not r.is_float and not r.values]
    if not_there:
        t.notes.append(f"{DASH}: not evaluated. No results at {pos} in: {', '.join(not_there)}.")
    t.notes.extend(status_notes)
    t.notes.extend(other_notes)
    return t


def _paired_cell(run: Run, ds: str) -> str:
    p = run.paired.get(ds)
    if p is None:
        v = run.values.get(ds)
        b = run.baseline.get(ds)
        if v is None or b is None or not (v.finite and b.finite):
            return DASH
        return ("unpaired " if ds != "wikitext2" else "") + (
            f"{v.value - b.value:+.2f}" if ds != "wikitext2" else f"{math.log(v.value / b.value):+.4f}")
    digits = 4 if ds == "wikitext2" else 2
    se = f" ± {p.stderr:.{digits}f}" if p.stderr is not None else ""
    if p.unpaired_stderr is not None:
        se += f" [unpaired ± {p.unpaired_stderr:.{digits}f}]"
    if ds == "wikitext2":
        text = f"{p.delta:+.4f}{se}"
        vs = (run.values.get(ds).vs_float or {}) if run.values.get(ds) else {}
        if vs.get("kld") is not None:
            text += f"; KLD {vs['kld']:.4f}, top-1 {100 * vs['top1_agreement']:.1f}%"
        return text
    return f"{p.delta:+.2f}{se}" + (f" ({100 * p.flips:.1f}%)" if p.flips is not None else "")


def paired_table(coll: Collection, model: str, name: str, number) -> Table:
    """Table 1/2, paired: each quantized run's change against its Full Prec. baseline on the same items
    (``llmc_slm.paired``): accuracy delta in points ± paired standard error (flips in parentheses),
    WikiText-2 per-token log-perplexity difference ± paired SE over windows (KLD and top-1 agreement where
    the run compared with the float model in-process), SLMQ_perf with its paired bootstrap interval."""
    runs = [r for r in sorted(coll.of_model(model), key=sort_key) if not r.is_float and r.complete]
    t = Table(name, f"Table {number} (paired): change against {FLOAT} on the same items, {model}",
              ["Method", "Bits"] + [LABELS[d] if d != "wikitext2" else "Wiki Δln ppl" for d in DATASETS]
              + ["SLMQ_perf [95% CI]"], left=2)
    last_bits = None
    subsets: dict = {}
    for r in runs:
        ci = r.perf_interval
        perf = DASH if r.perf is None else fmt(r.perf) + (f" [{ci['low']:.2f}, {ci['high']:.2f}]" if ci else "")
        cells = []
        for ds in DATASETS:
            cell, v = _paired_cell(r, ds), r.values.get(ds)
            if v is not None and v.subset and cell != DASH:
                cell += SUBSET
                subsets.setdefault((LABELS[ds], v.describe_items()), []).append(r.label)
            cells.append(cell)
        t.add([r.label, r.bits] + cells + [perf], source=r.rel, new_group=r.bits != last_bits)
        last_bits = r.bits
    t.notes.append("Accuracies: mean(quantized - float) over the same items, in points, ± paired standard error "
                   "sd(b - a)/sqrt(n); in brackets the standard error of the same difference were the two runs "
                   "independent samples, sqrt(SE_a^2 + SE_b^2); in parentheses the flips, the share of items whose "
                   "chosen answer differs "
                   "from the float model's (Dutta et al. 2024). 'unpaired': no per-item outcomes on the same "
                   "items for both runs (the plain difference, no paired error).")
    t.notes.append("Wiki: mean over windows of the per-token log-perplexity difference (quantized - float) ± paired "
                   "SE over windows [and unpaired]; KLD: mean KL(p_float || p_quant) per predicted token, top-1: share of tokens "
                   "whose most likely next token is the float model's (eval.paired, computed in the run).")
    t.notes.append("SLMQ_perf [95% CI]: 2.5 and 97.5 percentiles of a paired bootstrap over items (items resampled "
                   "jointly for both runs, per dataset; 1000 replicates, seed 0), where every dataset is paired.")
    for (label, items), who in subsets.items():
        t.notes.append(f"{SUBSET} evaluated on a subset: {label} on the {items} ({', '.join(_uniq(who))}).")
    if not runs:
        t.notes.append("No complete quantized run of this model.")
    return t


def _uniq(items) -> list:
    out = []
    for i in items:
        if i not in out:
            out.append(i)
    return out


def _clip(text, n: int = 160) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _memory_note(kinds) -> str:
    kinds = sorted(k for k in kinds if k)
    if not kinds:
        return "memory kind not recorded"
    return "; ".join(f"{MEMORY_KINDS.get(k, k)} [{k}]" for k in kinds)


def _devices(runs) -> str:
    return ", ".join(_uniq(r.device for r in runs)) or "unknown"


def inference_table(coll: Collection, bits: str = "W8A8", name: str = "table3") -> Table:
    """Table 3 (inference performance) for ``bits``: per model a Full Prec. row (the baseline profiled in
    the first run listed) and every run of those bits with an ``inference`` section."""
    extra = bits != "W8A8"
    title = f"Table 3: inference performance ({bits})" + (
        " — extra, the paper's Table 3 is W8A8 only" if extra else "")
    t = Table(name, title, ["Method", "Model", "Peak Mem. (MB)", "Model Size (MB)", "Params (M)", "TPS", "MACs (G)",
                            "SLMQ_infer (measured)", "SLMQ_infer (paper-compat.)", "Peak above idle (MB)"], left=2)
    runs = [r for r in sorted(coll.runs, key=sort_key) if r.bits == bits and not r.is_float]
    with_inf = [r for r in runs if r.inference]
    mixed, profile_notes = _profiles_label(with_inf)
    kinds, baseline_notes = set(), []
    for model in _uniq(r.model for r in with_inf):
        members = [r for r in with_inf if r.model == model]
        first = members[0]
        b = first.inference["baseline"]
        kinds.add(b.get("memory_kind"))
        t.add([FLOAT, model, fmt(b["peak_mem_mb"]), fmt(b["size_mb"]), fmt(b["params_m"]), fmt(b["tps"], 1),
               fmt(b["macs_g"]), DASH, DASH, fmt(b.get("peak_above_idle_mb"))], source=first.rel, note="baseline profiled in this run", new_group=True)
        tps = [m.inference["baseline"]["tps"] for m in members if m.inference["baseline"]["tps"]]
        baseline_notes.append(f"{model}: Full Prec. row = the baseline profiled with {first.rel}" +
                              (f" (baseline TPS across the {len(tps)} runs: {min(tps):.1f}-{max(tps):.1f})"
                               if len(tps) > 1 else ""))
        for r in members:
            c = r.inference["compressed"]
            kinds.add(r.inference.get("memory_kind"))
            if r.complete:
                cells = [fmt(c["peak_mem_mb"]), fmt(c["size_mb"]), fmt(c["params_m"]), fmt(c["tps"], 1),
                         fmt(c["macs_g"]), fmt(r.inference["measured"], 1), fmt(r.inference["paper_compatible"], 1),
                         fmt(c.get("peak_above_idle_mb"))]
            else:
                cells = [_status_cell(r)] * 8
            note = [f"status {r.status}"] if not r.complete else []
            if r.inference.get("warning"):
                note.append(r.inference["warning"])
            t.add([_method_cell(r, mixed), model] + cells, source=r.rel, note="; ".join(note))
    if with_inf:
        threads = with_inf[0].inference.get("threads")
        t.notes.append(f"Peak Mem.: {_memory_note(kinds)}; device {_devices(with_inf)}"
                       + (f", {threads} thread(s)" if threads else "") + ". MB = 2^20 bytes.")
        t.notes.append("Peak above idle: the peak minus the measuring process's resident memory after its imports and "
                       "before the model loads (llmc_slm.tracks.memory): resident weights, activations and caches "
                       "without the runtime's own footprint, what compares with a GPU allocator's peak; — for results "
                       "written before it was recorded.")
    t.notes.append("Model Size: bytes of the stored checkpoint (packed integer codes and their scales; "
                   "embeddings and lm_head as int8 rows with float scales by default, save.real_embed_bit; "
                   "float norms); Params: calflops' parameter count in millions (what the paper's "
                   "'Model Size' column holds); MACs: calflops' count for one forward pass (batch 1 x 128 tokens), "
                   "as in the paper: it sees neither attention nor integer GEMMs.")
    t.notes.append("SLMQ_infer (measured): peak memory, prefill TPS and bytes (the protocol). (paper-compat.): peak "
                   "memory, calflops MACs in place of TPS and calflops parameters as the size: the variant that "
                   "reproduces the paper's Table 3 (protocol.md). Each run is scored against the baseline profiled "
                   "in the same run.")
    t.notes.extend(baseline_notes)
    t.notes.extend(profile_notes)
    missing = [r.rel for r in runs if not r.inference]
    if missing:
        t.notes.append(f"{len(missing)} {bits} run(s) without an inference section (run with --save.save_real true "
                       f"--eval.inference true): {', '.join(missing)}.")
    if not with_inf:
        t.notes.append(f"No {bits} run with an inference section in this folder.")
    return t


def cost_scores(runs) -> tuple[dict, list]:
    """SLMQ_quant of complete runs with a quant_cost, scored by ``quant_table`` within each (model, bits,
    profile) group (pass one run per method): ({run.rel: quant_table row}, notes)."""
    scores, notes = {}, []
    groups: dict = {}
    for r in runs:
        if r.complete and r.quant_cost:
            groups.setdefault((r.model, r.bits, r.profile), []).append(r)
    for (model, bits, profile), members in groups.items():
        try:
            rows = quant_table([m.result for m in members])
        except (ValueError, KeyError, TypeError) as e:
            notes.append(f"{model} {bits}: SLMQ_quant not computed: {e}")
            continue
        by_method = {row["method"]: row for row in rows}
        for m in members:
            row = by_method.get(m.method)
            if row:
                scores[m.rel] = row
                if row.get("note"):
                    notes.append(f"{m.label} ({model}): {row['note']}")
    return scores, notes


def cost_table(coll: Collection, bits: str = "W8A8", name: str = "table4") -> Table:
    """Table 4 (quantization consumption) for ``bits``: one run per method and model
    (:func:`primary_runs`), SLMQ_quant within (model, bits, profile) by ``quant_table``."""
    extra = bits != "W8A8"
    title = f"Table 4: quantization consumption ({bits})" + (
        " — extra, the paper's Table 4 is W8A8 only" if extra else "")
    t = Table(name, title, ["Method", "Model", "Memory (MB)", "Quant Time (min)", "SLMQ_quant"], left=2)
    primary = [r for r in sorted(primary_runs(coll.runs).values(), key=sort_key) if r.bits == bits]
    with_cost = [r for r in primary if r.quant_cost]
    mixed, profile_notes = _profiles_label(with_cost)
    scores, score_notes = cost_scores(with_cost)
    last_model = None
    for r in with_cost:
        c = r.quant_cost
        if r.complete:
            row = scores.get(r.rel) or {}
            cells = [fmt(c["peak_mem_mb"]), fmt(c["time_min"]), fmt(row.get("slmq_quant"), 1)]
        else:
            cells = [_status_cell(r)] * 3
        t.add([_method_cell(r, mixed), r.model] + cells, source=r.rel,
              note="" if r.complete else f"status {r.status}", new_group=r.model != last_model)
        last_model = r.model
    if with_cost:
        t.notes.append(f"Device: {_devices(with_cost)}. Memory: "
                       f"{_memory_note({r.quant_cost['memory_kind'] for r in with_cost})}; MB = 2^20 bytes. Quant "
                       "Time: wall clock of quantization only (calibration, search, training; not loading or "
                       "evaluation).")
    t.notes.append("SLMQ_quant = 100·sqrt(((T_max/T)² + (M_max/M)²)/2), T_max and M_max over the methods of the same "
                   "model, bits and profile (llmc_slm.tracks.quant_cost.quant_table); one run per method.")
    t.notes.extend(profile_notes)
    t.notes.extend(score_notes)
    left_out = [r.rel for r in coll.runs if not r.is_float and r.bits == bits and r.quant_cost and r not in primary]
    if left_out:
        t.notes.append(f"Other runs of the same method and bits left out (variants): {', '.join(left_out)}.")
    if not with_cost:
        t.notes.append(f"No {bits} run with a quant_cost section in this folder.")
    return t


def all_tables(coll: Collection, with_stderr: bool = False, paired: bool = False) -> list[Table]:
    """Tables 1, 2 and 2b (one per model), each followed by its paired version with ``paired``
    (:func:`paired_table`) and the ranking of its methods (``ranking.ranking_table``), 3 and 4 (W8A8), and the extra W4A8 versions of 3 and 4 when the folder holds
    such runs."""
    tables = []
    by_number: dict[str, list[str]] = {}
    for model in coll.models():
        by_number.setdefault(table_number(model), []).append(model)
    for number in sorted(by_number):
        models = by_number[number]
        for model in models:
            name = f"table{number}" if len(models) == 1 else f"table{number}_{slug(model)}"
            tables.append(compression_table(coll, model, name, number, with_stderr))
            if paired:
                from .ranking import ranking_table
                tables.append(paired_table(coll, model, f"{name}_paired", number))
                ranking = ranking_table(coll, model, f"{name}_ranking", number)
                if ranking is not None:
                    tables.append(ranking)
    if paired and len(coll.models()) > 1:
        from .sensitivity import sensitivity_table
        tables.append(sensitivity_table(coll))
    others = [b for b in _uniq(r.bits for r in sorted(coll.runs, key=sort_key))
              if b not in ("W8A8", "FP", "?")]
    tables.append(inference_table(coll, "W8A8", "table3"))
    tables.extend(inference_table(coll, b, f"table3_{b.lower()}") for b in others
                  if any(r.bits == b and r.inference for r in coll.runs))
    if any(_kv_profile(r) for r in coll.runs):
        tables.append(kv_cache_table(coll))
    tables.append(cost_table(coll, "W8A8", "table4"))
    tables.extend(cost_table(coll, b, f"table4_{b.lower()}") for b in others
                  if any(r.bits == b and r.quant_cost for r in coll.runs))
    return tables


def _kv_profile(run) -> Optional[dict]:
    """The compressed model's KV-cache footprint of a run whose cache is quantized (its Track 2)."""
    if not run.inference or "KV" not in run.bits:
        return None
    return run.inference["compressed"].get("kv_cache")


def kv_cache_table(coll: Collection, name: str = "table3_kv") -> Table:
    """The KV cache of the deployed models with a quantized cache, against their float baseline's: bytes per
    token (every full-attention layer's keys and values, codes and ranges) and at 2,048 / 8,192 tokens."""
    t = Table(name, "Table 3 (KV cache): the deployed KV cache (extra, beyond the paper)",
              ["Method", "Model", "Bits", "Cache", "Bytes / token", "KV @2,048 (MB)", "KV @8,192 (MB)",
               "Float KV @8,192 (MB)", "Ratio", "Decode mem @ctx (MB)", "Float decode mem @ctx (MB)", "Decode TPS",
               "Float decode TPS"], left=3)
    for r in sorted(coll.runs, key=sort_key):
        kv = _kv_profile(r)
        if kv is None:
            continue
        base = r.inference["baseline"]
        bkv = base.get("kv_cache") or {}
        ratio = (bkv["bytes_at_8192"] / kv["bytes_at_8192"]) if bkv.get("bytes_at_8192") and kv.get("bytes_at_8192") \
            else None
        t.add([_method_cell(r, False), r.model, r.bits, kv.get("kind") or DASH, fmt(kv.get("bytes_per_token"), 0),
               fmt(_mb(kv.get("bytes_at_2048"))), fmt(_mb(kv.get("bytes_at_8192"))), fmt(_mb(bkv.get("bytes_at_8192"))),
               DASH if ratio is None else f"{ratio:.2f}x", fmt(_mb(_long(r.inference["compressed"]))),
               fmt(_mb(_long(base))), fmt(r.inference["compressed"].get("decode_tps"), 1),
               fmt(base.get("decode_tps"), 1)], source=r.rel)
    t.notes.append("Bytes / token and the KV columns: measured on the deployed model's cache after Track 2's decode "
                   "(llmc_slm.tracks.inference.kv_cache_footprint): integer codes (4 bits two per byte) with a float32 "
                   "scale and, for asymmetric grids, a uint8 zero point per token and kv head "
                   "(llmc.quant.int_kv_cache); the float baseline's cache in its dtype. MB = 2^20 bytes.")
    contexts = sorted({(r.inference["compressed"].get("long_context") or {}).get("context") for r in coll.runs
                       if _kv_profile(r)} - {None})
    t.notes.append(f"Decode mem @ctx: peak memory above the runtime's idle footprint while decoding 8 tokens with "
                   f"{', '.join(f'{c:,}' for c in contexts) or 'a long prompt'} tokens in the cache "
                   f"(llmc_slm.tracks.inference.decode_at_context): weights, cache and one token's activations.")
    return t


def _long(profile: dict) -> Optional[float]:
    lc = profile.get("long_context") or {}
    return lc.get("peak_above_idle_bytes")


def _mb(v) -> Optional[float]:
    return None if v is None else v / MB
