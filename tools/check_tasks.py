#!/usr/bin/env python
"""Check our harness tasks against lm-evaluation-harness's built-in tasks, item by item.

For each task, the same model runs OUR task (``llmc_slm.tasks``: our prompts over our conversion of the
data) and the harness's BUILT-IN task (its installed YAML config, made to read the same local files by
``llmc_slm.tasks.reference``: only the dataset path/kwargs change, the data converted independently of
ours). Both run through ``lm_eval.evaluator.evaluate`` with ``log_samples=True``, and every logged item
is compared: the requests ((context, continuation) pairs), the target, the per-item acc and acc_norm, and
the model's log-likelihoods; then the aggregates (acc, acc_norm and their stderr, per task and group).

Items: the first ``--limit`` documents of a task. MMLU (both formulations) counts ``--limit`` items over
all 57 subjects together: the first k of every subject, k = limit // 57 or one more for the first
limit % 57 subjects in alphabetical order (200 -> 4 items for 29 subjects, 3 for 28), so every subject's
prompt is exercised; the harness runs them as its ``samples`` selection.

    python tools/check_tasks.py --limit 200
    python tools/check_tasks.py --limit 20 --tasks arc_easy,piqa --model smollm2-135m-instruct

Prints a table; exits 1 on any mismatch, 2 on a user error (missing data, unknown model).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from llmc_slm.tasks import TASKS  # noqa: E402  (light: no torch, no lm-eval)

ALL = tuple(name for name, spec in TASKS.items() if spec.builtin)  # the tasks that reproduce a built-in one


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare(ours, ref, res_ours: dict, res_ref: dict) -> dict:
    """Item-by-item and aggregate comparison of two harness runs; returns counts and the first mismatches."""
    problems: list[str] = []
    if set(ours.tasks) != set(ref.tasks):
        problems.append(f"task names differ: {sorted(set(ours.tasks) ^ set(ref.tasks))[:5]}")
    if res_ours.get("group_subtasks", {}) != res_ref.get("group_subtasks", {}):
        problems.append("group structure differs")
    items = requests = same_requests = same_metrics = 0
    max_ll = 0.0
    for t in sorted(set(ours.tasks) & set(ref.tasks)):
        a = sorted(res_ours["samples"][t], key=lambda s: s["doc_id"])
        b = sorted(res_ref["samples"][t], key=lambda s: s["doc_id"])
        if [s["doc_id"] for s in a] != [s["doc_id"] for s in b]:
            problems.append(f"{t}: different documents evaluated")
            continue
        for x, y in zip(a, b):
            items += 1
            ra, rb = [tuple(r) for r in x["arguments"]], [tuple(r) for r in y["arguments"]]
            requests += len(ra)
            if ra == rb and x["target"] == y["target"]:
                same_requests += 1
            elif len(problems) < 8:
                problems.append(f"{t} doc {x['doc_id']}: requests differ: ours {ra[:1]!r} vs built-in {rb[:1]!r}")
            keys = sorted({k for k in ("acc", "acc_norm") if k in x or k in y})
            if all(_same(x.get(k), y.get(k)) for k in keys):
                same_metrics += 1
            elif len(problems) < 8:
                problems.append(f"{t} doc {x['doc_id']}: " + ", ".join(f"{k} {x.get(k)} vs {y.get(k)}" for k in keys))
            for fa, fb in zip(x["filtered_resps"], y["filtered_resps"]):
                max_ll = max(max_ll, abs(float(fa[0]) - float(fb[0])))
    # aggregates: every metric the built-in reports, for every task and group
    agg_checked = agg_same = 0
    for name, entry in res_ref["results"].items():
        mine = res_ours["results"].get(name)
        if mine is None:
            problems.append(f"{name}: missing from our results")
            continue
        for key, value in entry.items():
            if key.split(",")[0] in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr") or key == "sample_len":
                agg_checked += 1
                if _same(mine.get(key), value):
                    agg_same += 1
                elif len(problems) < 8:
                    problems.append(f"{name} {key}: ours {mine.get(key)} vs built-in {value}")
    return {"items": items, "requests": requests, "same_requests": same_requests, "same_metrics": same_metrics,
            "max_abs_loglik_diff": max_ll, "aggregates": agg_checked, "same_aggregates": agg_same,
            "problems": problems,
            "ok": not problems and items > 0 and same_requests == items and same_metrics == items
            and agg_same == agg_checked}


def _pm(entry: dict, metric: str) -> str:
    v, se = entry.get(metric), entry.get(f"{metric}_stderr")
    if v is None:
        return "-"
    return f"{v:.4f} ± {se:.4f}" if se is not None else f"{v:.4f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=200, help="items per task (MMLU: over all 57 subjects); 0 = all")
    p.add_argument("--tasks", default=",".join(ALL), help=f"comma-separated, from {', '.join(ALL)}")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model.path: embedded name, HF dir, .gguf")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"))
    p.add_argument("--bs", type=int, default=16, help="HFLM batch size")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    p.add_argument("--data", default=None, help="data path (as eval.path); default: find_dataset's search order")
    p.add_argument("--json", default=None, help="also write the comparison as JSON here")
    args = p.parse_args(argv)

    import torch

    from llmc.data.sources import find_dataset
    from llmc.errors import UserError
    from llmc.models.loading import load_model, resolve_model_source
    from llmc_slm.harness import make_lm
    from llmc_slm.tasks import load_task_data, lmeval, reference

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in ALL]
    if unknown:
        print(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(ALL)}", file=sys.stderr)
        return 2
    limit = args.limit or None
    torch.set_num_threads(args.threads)
    try:
        locations = {t: find_dataset(t, args.data, key="--data") for t in tasks}
        source = resolve_model_source(args.model)
        t0 = time.perf_counter()
        adapter = load_model(source, dtype=getattr(torch, args.dtype))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model {source.name} ({source.origin}), {args.dtype}, loaded in {time.perf_counter() - t0:.1f} s; "
          f"batch {args.bs}, {args.threads} thread(s); limit {limit}", flush=True)
    lm = make_lm(adapter, args.bs)
    manager = reference.task_manager(tasks)

    rows, report = [], {}
    for name in tasks:
        loc = locations[name]
        ours = lmeval.build_task_set(name, load_task_data(name, loc, key="--data"))
        ref = reference.builtin_task_set(name, loc, manager=manager)
        sel = lmeval.selection(ours, limit)
        if "samples" in sel:
            for task_set in (ours, ref):
                lmeval.prune(task_set, set(sel["samples"]))
        t = time.perf_counter()
        res_ours = lmeval.run(lm, ours.task_dict(), log_samples=True, **sel)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        res_ref = lmeval.run(lm, ref.task_dict(), log_samples=True, **sel)
        t_ref = time.perf_counter() - t
        cmp = compare(ours, ref, res_ours, res_ref)
        mine = lmeval.summarize(ours, res_ours)
        cmp.update({"task": name, "data": loc.describe(), "seconds_ours": t_ours, "seconds_builtin": t_ref,
                    "selection": "samples" if "samples" in sel else f"limit {limit}",
                    "ours": {k: mine.get(k) for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n")}})
        report[name] = cmp
        rows.append([name, cmp["items"], cmp["requests"],
                     f"{cmp['same_requests']}/{cmp['items']}", f"{cmp['same_metrics']}/{cmp['items']}",
                     f"{cmp['max_abs_loglik_diff']:.1e}", f"{cmp['same_aggregates']}/{cmp['aggregates']}",
                     _pm(mine, "acc"), _pm(mine, "acc_norm"), f"{t_ours:.0f}", f"{t_ref:.0f}",
                     "IDENTICAL" if cmp["ok"] else "MISMATCH"])
        print(f"{name}: {rows[-1][-1]} ({cmp['items']} items, {t_ours:.0f} s ours, {t_ref:.0f} s built-in)", flush=True)
        for problem in cmp["problems"]:
            print(f"  {problem}", flush=True)

    from tabulate import tabulate
    print()
    print(tabulate(rows, headers=["task", "items", "requests", "same requests", "same acc/acc_norm",
                                  "max|Δ loglik|", "same aggregates", "ours acc ± se", "ours acc_norm ± se",
                                  "s ours", "s built-in", "result"]))
    print(f"\nsubset: the first {limit} items of each task (MMLU: {limit} over the 57 subjects); "
          f"acc ± stderr over those items, model {source.name} in {args.dtype}" if limit else
          "\nall items of each task")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": source.describe(), "dtype": args.dtype, "limit": limit, "tasks": report}, f,
                      indent=1, default=str)
    return 0 if all(r["ok"] for r in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
