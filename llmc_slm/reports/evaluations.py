"""A table of every evaluation in a folder: what was scored, on how many items, with which backend, how long.

Tables 1 and 2 show one cell per (setting, dataset); this one shows where each cell came from, one row per
(run, dataset, evaluation position): items (windows for WikiText-2) of the split's total, the table metric
with its standard error (acc and acc_norm for an accuracy task, perplexity for WikiText-2), the
loglikelihood backend (``eval.backend``), the dtype and threads, the evaluation's wall time
(``eval_seconds``, else ``wall_seconds``) and the commit. It is what a reader needs to judge a
full-length or subset number and to reproduce it.
"""

from __future__ import annotations

from .collect import Collection
from .render import Table
from .tables import fmt


def _pct(value, stderr) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.2f}" + (f" ± {100 * stderr:.2f}" if stderr is not None else "")


def _items(m) -> str:
    if m.ppl is not None:
        return f"{m.windows} of {m.windows_in_split} x {m.seq_len} tokens"
    return f"{m.n:,} of {m.n_total:,}" if m.n is not None and m.n_total is not None else "—"


def _seconds(m) -> str:
    s = m.extra.get("eval_seconds", m.wall_seconds)
    return f"{s:,.0f}" if isinstance(s, (int, float)) else "—"


def evaluation_table(coll: Collection, name: str = "evaluations") -> Table:
    t = Table(name, "Evaluations: items, score, backend and wall time of every run and dataset",
              ["Run", "Dataset", "Items", "Table metric", "acc", "Backend", "dtype, threads", "Eval (s)", "Commit"],
              left=2)
    for run in sorted(coll.runs, key=lambda r: r.rel):
        res, env = run.result, run.result.environment
        for position, datasets in res.metrics.items():
            for ds, m in datasets.items():
                if m.ppl is not None:
                    score, acc = f"ppl {fmt(m.ppl, 3)}", "—"
                else:
                    score = f"{m.table_metric} {_pct(m.table_value, m.table_stderr)}" if m.table_metric else "—"
                    acc = _pct(m.acc, m.acc_stderr)
                label = run.rel.removesuffix(".json") + ("" if position == "pretrain" else f" ({position})")
                t.add([label, ds, _items(m), score, acc, m.extra.get("backend", "—"),
                       f"{env.dtype or '—'}, {env.torch_threads or '—'}", _seconds(m),
                       (res.git.get("commit") or "—")[:7]], source=run.rel)
    t.notes.append("Items: evaluated of the split's total (a subset is a seeded random sample unless the run says "
                   "otherwise); Table metric: the one Tables 1 and 2 use, in % ± standard error; Eval (s): wall time "
                   "of that dataset's evaluation in the run.")
    return t


STAGE_COLUMNS = ("load", "calibrate", "quantize", "evaluate", "export", "deploy", "post-run")


def stage_seconds(res) -> dict:
    """A run's wall time by stage kind. Records that kept ``timings.stages`` give it directly (the pipeline's
    stage transitions; ``post-run`` is Track 2); older ones give what they hold: load, the quantization
    cost and the sum of the evaluations' wall times."""
    stages = res.timings.get("stages") if isinstance(res.timings.get("stages"), dict) else None
    if stages:
        return {k: float(v) for k, v in stages.items() if isinstance(v, (int, float))}
    out = {}
    if isinstance(res.timings.get("load"), (int, float)):
        out["load"] = float(res.timings["load"])
    if res.quant_cost is not None and res.quant_cost.time_s is not None:
        out["quantize"] = float(res.quant_cost.time_s)
    evals = [m.extra.get("eval_seconds", m.wall_seconds) for d in res.metrics.values() for m in d.values()]
    evals = [s for s in evals if isinstance(s, (int, float))]
    if evals:
        out["evaluate"] = float(sum(evals))
    span = _span_seconds(res.started, res.finished)
    if span is not None and span > sum(out.values()):
        out["unrecorded"] = span - sum(out.values())    # the rest of the run's wall time (Track 2, exports, ...)
    return out


def _span_seconds(started, finished):
    import datetime as dt
    try:
        return (dt.datetime.fromisoformat(finished) - dt.datetime.fromisoformat(started)).total_seconds()
    except (TypeError, ValueError):
        return None


def stage_time_table(coll: Collection, name: str = "stage_times") -> Table:
    """Wall time of every run by stage, each model's total per stage (the cost of its grid) and, with more
    than one model, the folder's: what the results cost to make."""
    t = Table(name, "Time by stage: wall seconds of every run (load, calibration text, quantization, evaluation, "
                    "exports, Track 2)", ["Run", *STAGE_COLUMNS, "other", "total", "threads"], left=1)
    keys = (*STAGE_COLUMNS, "other", "total")

    def total_row(label: str, totals: dict) -> None:
        t.add([label, *[fmt(totals.get(k), 0) if totals.get(k) else "—" for k in keys], ""], new_group=True)

    overall: dict = {}
    timed_models = 0
    for model in coll.models():
        totals: dict = {}
        for run in sorted(coll.of_model(model), key=lambda r: r.rel):
            sec = stage_seconds(run.result)
            if not sec:
                continue
            other = sum(v for k, v in sec.items() if k not in STAGE_COLUMNS)
            row = [sec.get(k) for k in STAGE_COLUMNS] + [other or None, sum(sec.values())]
            for k, v in zip(keys, row):
                if v:
                    totals[k] = totals.get(k, 0.0) + v
                    overall[k] = overall.get(k, 0.0) + v
            t.add([run.rel.removesuffix(".json"), *[fmt(v, 0) if v else "—" for v in row],
                   str(run.result.environment.torch_threads or "—")], source=run.rel)
        if totals:
            timed_models += 1
            total_row(f"total, {model}", totals)
    if timed_models > 1:
        total_row("total, all models", overall)
    t.notes.append("post-run: Track 2 (the deployed model profiled in fresh processes, with its float baseline); "
                   "quantize: the method's transform and fake quantization (Track 3 measures the same span); "
                   "evaluate: every evaluation position. Runs written before stages were recorded show load, the "
                   "quantization cost and the evaluations, and the rest of their wall time (started to finished, "
                   "whole seconds) as other: Track 2, calibration text and exports. Writing the quantized model for "
                   "resuming, and reloading it, count as other.")
    resumed = [f"{run.rel.removesuffix('.json')} ({len(run.result.section('resumed'))}x)"
               for run in sorted(coll.runs, key=lambda r: r.rel) if isinstance(run.result.section("resumed"), list)]
    if resumed:
        t.notes.append("Resumed after their quantization (llmc.resume; both attempts' stage times are counted, "
                       "the quantization once): " + ", ".join(resumed) + ".")
    return t
