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
