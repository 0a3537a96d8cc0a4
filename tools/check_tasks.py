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

``--backends``: instead, the same items of OUR tasks scored by our loglikelihood backend
(``llmc_slm.backend``, ``eval.backend: slmquant``) and by lm-eval's ``HFLM`` (``hf``), every request compared
(the same requests, |Δ log-likelihood|, is_greedy), every item's chosen answer (argmax of the
log-likelihoods for acc, of the length-normalized ones for acc_norm) and every aggregate (acc, acc_norm per
task and group). Criteria: in float32 every item chooses the same answer except near-ties (the two best
scores of HFLM or ours within 1e-4), which are counted and listed; in bfloat16 (or float16) at least 99.5%
of the items choose the same answer and every aggregate is within one standard error (HFLM's). Exits 1
when a criterion fails.

    python tools/check_tasks.py --backends --limit 200 --dtype float32
    python tools/check_tasks.py --backends --limit 200 --dtype bfloat16 --fp32-reference

``--fp32-reference`` (with a bfloat16 or float16 ``--dtype``) also scores the items with HFLM on a float32
copy of the model and counts, for each backend in the low-precision dtype, the items whose chosen answer
differs from the float32 one (informative; the verdict is still ours against HFLM). In bfloat16 the hidden
states depend on the shapes a computation runs in (batch, padding, attention kernel) and the sums of
log-probabilities are rounded to bfloat16 (a step of 1/16 near -10, of 0.5 near -100), so two correct
computations disagree on items whose best answers are close; this shows whether ours strays from the
float32 answers more than HFLM does.

``--hf-control-bs N`` also scores the items with HFLM at batch size N and counts the items whose chosen
answer differs between HFLM at ``--bs`` and HFLM at N: the same code on the same model, only the padding and
the kernels' shapes changed: how far HFLM's own answers move with the shapes alone in that dtype (in
float32, 0 up to near-ties; measured in bfloat16 on 6 x 200 items: 0-2 per task).
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



def aligned_samples(res_a: dict, res_b: dict, task: str, problems: list) -> list:
    """The two runs' logged samples of ``task`` paired by document; none (and a problem noted) when the two
    evaluated different documents."""
    a = sorted(res_a["samples"][task], key=lambda s: s["doc_id"])
    b = sorted(res_b["samples"][task], key=lambda s: s["doc_id"])
    if [s["doc_id"] for s in a] != [s["doc_id"] for s in b]:
        problems.append(f"{task}: different documents evaluated")
        return []
    return list(zip(a, b))


def requested_tasks(spec: str, known: tuple) -> list | None:
    """``--tasks a,b`` as a list, or None after one line on stderr naming the unknown ones."""
    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in known]
    if unknown:
        print(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return None
    return tasks


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
        for x, y in aligned_samples(res_ours, res_ref, t, problems):
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
    p.add_argument("--fp32-reference", action="store_true",
                   help="--backends: also score with HFLM in float32 and count each backend's answers that differ")
    p.add_argument("--hf-control-bs", type=int, default=0, metavar="N",
                   help="--backends: also score with HFLM at batch size N and count its answers that differ from "
                        "HFLM's at --bs (HFLM against itself)")
    p.add_argument("--softmax-dtype", default=None, choices=("float32",),
                   help="--backends: log-softmax and sums in this dtype in both backends (HFLM's softmax_dtype)")
    p.add_argument("--backends", action="store_true",
                   help="compare our loglikelihood backend with HFLM on our tasks (instead of ours vs built-in)")
    args = p.parse_args(argv)
    if args.backends:
        return backends_main(args)

    import torch

    from llmc.data.sources import find_dataset
    from llmc.errors import UserError
    from llmc.models.loading import load_model, resolve_model_source
    from llmc_slm.harness import make_lm
    from llmc_slm.tasks import load_task_data, lmeval, reference

    tasks = requested_tasks(args.tasks, ALL)
    if tasks is None:
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
    lm = make_lm(adapter, args.bs, "hf")
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


# ------------------------------------------------------------------------------------- --backends
NEAR_TIE = 1e-4
SAME_ANSWER_SHARE = 0.995   # bfloat16 / float16: at least this share of items choose the same answer


def _choice(scores) -> tuple[int, float]:
    """(argmax, gap between the two best) of one item's scores."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    gap = scores[order[0]] - scores[order[1]] if len(scores) > 1 else float("inf")
    return order[0], gap


def compare_backends(task_set, res_ours: dict, res_hf: dict, exact: bool) -> dict:
    """Request-, item- and aggregate-level comparison of one task set scored by the two backends."""
    problems, ties = [], []
    items = requests = same_requests = same_greedy = 0
    disagree = {"acc": 0, "acc_norm": 0}
    max_ll = 0.0
    for t in sorted(task_set.tasks):
        task = task_set.tasks[t]
        for x, y in aligned_samples(res_ours, res_hf, t, problems):
            items += 1
            ra, rb = [tuple(r) for r in x["arguments"]], [tuple(r) for r in y["arguments"]]
            requests += len(ra)
            same_requests += ra == rb
            lla = [float(r[0]) for r in x["filtered_resps"]]
            llb = [float(r[0]) for r in y["filtered_resps"]]
            same_greedy += sum(bool(p[1]) == bool(q[1]) for p, q in zip(x["filtered_resps"], y["filtered_resps"]))
            max_ll = max([max_ll] + [abs(p - q) for p, q in zip(lla, llb)])
            lengths = [float(len(c)) for c in task.doc_to_choice(x["doc"])]
            for metric in ("acc", "acc_norm"):
                if metric not in x:
                    continue
                sa = lla if metric == "acc" else [v / n for v, n in zip(lla, lengths)]
                sb = llb if metric == "acc" else [v / n for v, n in zip(llb, lengths)]
                (ca, gap_a), (cb, gap_b) = _choice(sa), _choice(sb)
                if ca != cb:
                    disagree[metric] += 1
                    tie = min(gap_a, gap_b) < NEAR_TIE
                    entry = f"{t} doc {x['doc_id']} {metric}: ours {ca} vs HFLM {cb} (gaps {gap_a:.2e} / {gap_b:.2e})"
                    (ties if tie else problems).append(entry if tie or not exact else entry + ": not a near-tie")
    aggregates = within = 0
    for name, entry in res_hf["results"].items():
        mine = res_ours["results"].get(name, {})
        for metric in ("acc", "acc_norm"):
            v, se, w = entry.get(f"{metric},none"), entry.get(f"{metric}_stderr,none"), mine.get(f"{metric},none")
            if not isinstance(v, float) or not isinstance(w, float):
                continue
            aggregates += 1
            se = se if isinstance(se, float) else 0.0
            if abs(w - v) <= se + 1e-12:
                within += 1
            elif len(problems) < 12:
                problems.append(f"{name} {metric}: ours {w:.4f} vs HFLM {v:.4f} ± {se:.4f}")
    same_answers = items - max(disagree.values())
    if exact:
        ok = not [p for p in problems if "not a near-tie" in p or "different documents" in p]
        ok = ok and same_requests == items
    else:
        ok = same_requests == items and items > 0 and same_answers >= SAME_ANSWER_SHARE * items \
            and within == aggregates
    return {"items": items, "requests": requests, "same_requests": same_requests, "same_greedy": same_greedy,
            "max_abs_loglik_diff": max_ll, "disagree_acc": disagree["acc"], "disagree_acc_norm": disagree["acc_norm"],
            "near_ties": ties, "aggregates": aggregates, "aggregates_within_stderr": within,
            "problems": problems, "ok": bool(ok and items > 0)}


def backends_main(args) -> int:
    import torch

    from llmc.data.sources import find_dataset
    from llmc.errors import UserError
    from llmc.models.loading import load_model, resolve_model_source
    from llmc_slm.harness import make_lm
    from llmc_slm.tasks import load_task_data, lmeval

    tasks = requested_tasks(args.tasks, tuple(TASKS))
    if tasks is None:
        return 2
    limit = args.limit or None
    torch.set_num_threads(args.threads)
    try:
        data = {t: load_task_data(t, find_dataset(t, args.data, key="--data"), key="--data") for t in tasks}
        source = resolve_model_source(args.model)
        adapter = load_model(source, dtype=getattr(torch, args.dtype))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    exact = args.dtype == "float32"
    sd = args.softmax_dtype
    lms = {"slmquant": make_lm(adapter, 1, "slmquant", sd), "hf": make_lm(adapter, args.bs, "hf", sd)}
    reference = args.fp32_reference and args.dtype != "float32"
    if reference:
        lms["hf_fp32"] = make_lm(load_model(source, dtype=torch.float32), args.bs, "hf", sd)
    control = args.hf_control_bs > 0
    if control:
        lms["hf_control"] = make_lm(adapter, args.hf_control_bs, "hf", sd)
    print(f"model {source.name}, {args.dtype}, log-softmax in {sd or 'the logits dtype'}, {args.threads} thread(s), "
          f"limit {limit}; ours: "
          f"{lms['slmquant'].backend_name}, HFLM batch {args.bs}", flush=True)
    rows, report = [], {}
    for name in tasks:
        res, secs, sets = {}, {}, {}
        for backend, lm in lms.items():
            task_set = lmeval.build_task_set(name, data[name])
            sel = lmeval.selection(task_set, limit)
            if "samples" in sel:
                lmeval.prune(task_set, set(sel["samples"]))
            t = time.perf_counter()
            res[backend] = lmeval.run(lm, task_set.task_dict(), log_samples=True, **sel)
            secs[backend] = time.perf_counter() - t
            sets[backend] = task_set
        cmp = compare_backends(sets["slmquant"], res["slmquant"], res["hf"], exact)
        ours, ref = lmeval.summarize(sets["slmquant"], res["slmquant"]), lmeval.summarize(sets["hf"], res["hf"])
        cmp.update({"task": name, "seconds": secs, "ours": ours, "hf": ref})
        if reference:
            cmp["vs_fp32"] = {}
            for backend in ("slmquant", "hf"):
                ref32 = compare_backends(sets[backend], res[backend], res["hf_fp32"], False)
                cmp["vs_fp32"][backend] = {k: ref32[k] for k in ("items", "max_abs_loglik_diff", "disagree_acc",
                                                                 "disagree_acc_norm")}
        if control:
            self_cmp = compare_backends(sets["hf"], res["hf_control"], res["hf"], exact)
            cmp["hf_control"] = {"batch_size": args.hf_control_bs, **{
                k: self_cmp[k] for k in ("items", "max_abs_loglik_diff", "disagree_acc", "disagree_acc_norm")}}
        report[name] = cmp
        n = cmp["items"]
        rows.append([name, n, cmp["requests"], f"{cmp['same_requests']}/{n}", f"{cmp['max_abs_loglik_diff']:.1e}",
                     f"{cmp['same_greedy']}/{cmp['requests']}", f"{cmp['disagree_acc']}/{cmp['disagree_acc_norm']}",
                     len(cmp["near_ties"]), f"{cmp['aggregates_within_stderr']}/{cmp['aggregates']}",
                     f"{_pm(ours, 'acc')} | {_pm(ref, 'acc')}", f"{secs['slmquant']:.0f}", f"{secs['hf']:.0f}",
                     "OK" if cmp["ok"] else "FAIL"])
        if reference:
            rows[-1][-1:-1] = [" | ".join(f"{v['disagree_acc']}/{v['disagree_acc_norm']}"
                                          for v in (cmp["vs_fp32"]["slmquant"], cmp["vs_fp32"]["hf"]))]
        if control:
            rows[-1][-1:-1] = [f"{cmp['hf_control']['disagree_acc']}/{cmp['hf_control']['disagree_acc_norm']}"]
        print(f"{name}: {rows[-1][-1]} ({n} items, {secs['slmquant']:.0f} s ours, {secs['hf']:.0f} s HFLM)", flush=True)
        for line in cmp["near_ties"]:
            print(f"  near-tie: {line}", flush=True)
        for problem in cmp["problems"]:
            print(f"  {problem}", flush=True)
    from tabulate import tabulate
    print()
    print(tabulate(rows, headers=["task", "items", "requests", "same requests", "max|Δ loglik|", "same greedy",
                                  "answers differ acc/acc_norm", "near-ties", "aggregates within 1 se",
                                  "acc ours | HFLM", "s ours", "s HFLM"]
                   + (["answers differ from float32 acc/acc_norm: ours | HFLM"] if reference else [])
                   + ([f"HFLM batch {args.bs} vs {args.hf_control_bs}: answers differ"] if control else [])
                   + ["result"]))
    print(f"\ncriteria ({args.dtype}): " + ("every chosen answer the same except near-ties (< 1e-4)" if exact else
          f">= {SAME_ANSWER_SHARE:.1%} of items choose the same answer, every aggregate within one stderr"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": source.describe(), "dtype": args.dtype, "softmax_dtype": sd, "limit": limit,
                       "hf_batch_size": args.bs,
                       "hf_control_batch_size": args.hf_control_bs or None, "threads": args.threads, "tasks": report}, f, indent=1, default=str)
    return 0 if all(r["ok"] for r in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
