"""Track 3: quantization consumption (protocol.md), scored from typed run results.

The pipeline records, around quantization only (calibration, search, training and weight updates; not
model loading, saving or evaluation), the ``quant_cost`` section (:class:`llmc.results.QuantCost`)::

    {time_s, peak_mem_bytes, start_mem_bytes, peak_mem_mb, memory_kind, stages_s}

``memory_kind`` is ``cuda_max_allocated`` (the allocator's peak) or ``cpu_peak_rss`` (the process's
resident set, sampled during quantization; it includes the loaded model, as the GPU figure does).

    SLMQ_quant = 100 * sqrt( (1/2) * ( (T_max / T)^2 + (M_max / M)^2 ) )

with T_max, M_max the largest among the methods compared for the same model (and the same bits, the
paper's Table 4 is W8A8). :func:`quant_table` groups results that way and scores each group with
``llmc_slm.scoring.slmq_quant``. Whether a method calibrates is what its run recorded
(``method.calibrated``, see :class:`llmc.results.MethodInfo`); nothing here imports the algorithms.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Union

from llmc.results import ResultsError, RunResult, read_result
from llmc_slm.scoring import quant_ratios, slmq_quant

ResultLike = Union[RunResult, str, Path, Mapping]

__all__ = ["as_result", "bits_label", "read_quant_cost", "quant_scores", "quant_table"]


def as_result(result: ResultLike) -> RunResult:
    """A typed run result, from itself, its JSON file (:func:`llmc.results.read_result`) or its dict."""
    if isinstance(result, RunResult):
        return result
    if isinstance(result, Mapping):
        return RunResult.from_dict(dict(result))
    return read_result(result)


def bits_label(quant: Mapping | None) -> str:
    """``W8A8``, ``W4A16`` (no activation quantizer), ``W4A8KV4`` (a quantized KV cache), ``W4A16-g64`` (weights
    in groups of 64 along the input: more scales stored, so not the per-channel setting of the same bits and
    never ranked or tested against it), ``FP`` (no quant section)."""
    if not quant:
        return "FP"
    w, a, kv = quant.get("weight"), quant.get("act"), quant.get("kvcache")
    group = w.get("group_size") if w and w.get("granularity") == "per_group" else None
    return (f"W{w['bit'] if w else 16}A{a['bit'] if a else 16}" + (f"KV{kv['bit']}" if kv else "")
            + (f"-g{group}" if isinstance(group, int) and group > 0 else ""))


def read_quant_cost(result: ResultLike) -> dict:
    """``{model, method, bits, profile, task_id, calibrated, time_s, peak_mem_bytes, peak_mem_mb, memory_kind,
    device, status, source}`` of one run (``method``: the label the run recorded, e.g. "OmniQuant+KB");
    raises ValueError when the run has no ``quant_cost`` (an FP run, or one that failed before quantizing)."""
    r = as_result(result)
    source = str(r.path) if r.path else str(r.task_id or r.config_file)
    cost = r.quant_cost
    if cost is None or cost.peak_mem_bytes is None:
        raise ValueError(f"{source}: no quant_cost in this result (status {r.status!r})")
    return {
        "model": r.model.name, "method": r.method.label if r.method else None, "bits": bits_label(r.quant),
        "profile": r.profile, "task_id": r.task_id,
        "calibrated": r.calibrated is not False,    # unknown (another toolkit's record) counts as calibrated
        "time_s": cost.time_s, "peak_mem_bytes": cost.peak_mem_bytes, "peak_mem_mb": cost.peak_mem_mb,
        "memory_kind": cost.memory_kind, "device": r.environment.device, "status": r.status, "source": source,
    }


def _cost_rows(results: Iterable[ResultLike]) -> list[dict]:
    """:func:`read_quant_cost` of many runs (typed results, files, dicts, or folders searched for
    ``*.json``); runs without a quant_cost, and files that are not results, are skipped."""
    rows = []
    for r in results:
        items = sorted(Path(r).rglob("*.json")) if isinstance(r, (str, Path)) and Path(r).is_dir() else [r]
        for item in items:
            try:
                rows.append(read_quant_cost(item))
            except ValueError:   # ResultsError included
                continue
    return rows


def quant_scores(costs_by_method: Mapping[str, Mapping[str, float]]) -> dict[str, dict]:
    """``{method: {"time": T, "peak_mem": M}}`` (one model) -> ``{method: {slmq_quant, time_ratio,
    mem_ratio}}`` (the ratios are T_max/T and M_max/M)."""
    scores = slmq_quant(costs_by_method)
    ratios = quant_ratios(costs_by_method)
    return {m: {"slmq_quant": scores[m], "time_ratio": ratios[m]["time"], "mem_ratio": ratios[m]["peak_mem"]}
            for m in costs_by_method}


def quant_table(results: Iterable[ResultLike], group_by: tuple[str, ...] = ("model", "bits", "profile"),
                score_uncalibrated: bool = False) -> list[dict]:
    """Score SLMQ_quant within each group of runs (same model, bits and profile by default), one row per run.

    Rows carry the group, the method (its label), ``time_s``, ``peak_mem_mb``, ``slmq_quant`` and the ratios.
    Within a group each method must appear once (ValueError otherwise: pass only the runs to compare) and
    every run must use the same ``memory_kind``.

    SLMQ_quant compares what calibration-based methods cost (the paper's Table 4: SmoothQuant, OmniQuant,
    SpinQuant). A method without calibration (its run recorded ``method.calibrated`` false: RTN) only
    rounds its weights, in about a second, so T_max / T would be ~10^3 and its score would say nothing
    about cost; its row keeps its time and memory with ``slmq_quant`` None and a ``note``, and it is left
    out of T_max and M_max. ``score_uncalibrated=True`` scores every run.
    """
    rows = _cost_rows(results)
    groups: dict = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in group_by), []).append(row)
    table = []
    for key, members in groups.items():
        kinds = {m["memory_kind"] for m in members}
        if len(kinds) > 1:
            raise ValueError(f"group {dict(zip(group_by, key))}: peak memories of different kinds {sorted(kinds)}")
        methods = [m["method"] for m in members]
        dup = {m for m in methods if methods.count(m) > 1}
        if dup:
            raise ValueError(f"group {dict(zip(group_by, key))}: method(s) {sorted(dup)} appear more than once: "
                             f"{[m['source'] for m in members if m['method'] in dup]}")
        scored = {m["method"]: {"time": m["time_s"], "peak_mem": m["peak_mem_bytes"]} for m in members
                  if m["time_s"] > 0 and (score_uncalibrated or m["calibrated"])}
        scores = quant_scores(scored) if scored else {}
        for m in members:
            s = scores.get(m["method"], {})
            if m["method"] in scored:
                note = None
            elif m["time_s"] <= 0:
                note = "not scored: no quantization time recorded"
            else:
                note = f"not scored: {m['method']} has no calibration (only weight rounding, {m['time_s']:.3g} s)"
            table.append({**dict(zip(group_by, key)), "method": m["method"], "time_s": m["time_s"],
                          "time_min": m["time_s"] / 60, "peak_mem_mb": m["peak_mem_mb"],
                          "memory_kind": m["memory_kind"], "slmq_quant": s.get("slmq_quant"),
                          "time_ratio": s.get("time_ratio"), "mem_ratio": s.get("mem_ratio"),
                          "methods_compared": len(scored), "source": m["source"], "note": note})
    return table
