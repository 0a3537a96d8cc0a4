"""Items per second of the accuracy tasks with lm-eval's HFLM and with our backend (``llmc_slm.backend``).

    python benchmarks/eval_speed.py                                   # both models, float + fake-quant, 6 tasks
    python benchmarks/eval_speed.py --models smollm2-135m-instruct --items 24 --rounds 1 --out speed.json

One process: each model is loaded once (``--dtype``, bfloat16 by default), and a fake-quant copy is made
(``--quant``: RTN W8A8, 8-bit symmetric per-channel weights and 8-bit symmetric per-token dynamic
activations on every decoder linear; speed does not depend on the method). For every model variant and
task, the same ``--items`` documents (MMLU: spread over the 57 subjects, as ``eval.limit``) are evaluated
by the harness (``llmc_slm.tasks.lmeval.run``: requests built, scored, aggregated) with each backend in
alternation, ``--rounds`` rounds, the order rotating each round; the harness objects are built before the
clock starts. Reported per task: items/s of each backend (median over rounds), the ratio ours / HFLM per
round and its median (and the same from process CPU time, steadier on a shared machine), and whether both gave the same acc and acc_norm. Torch threads are pinned
(``--threads``, 2 by default) and reported.

``qwen2.5-0.5b-random`` is the embedded random model of the Qwen2.5-0.5B architecture: its 151,936-word
vocabulary makes HFLM's full log-softmax costlier, which ours skips. ``--hf-bs`` is HFLM's batch size,
``--bs`` ours (items per forward; 0 = its default, bounded by ``max_batch_tokens``).

Goals (bf16, 2 threads): ours >= 3x HFLM on mmlu_continuation, arc_easy, arc_challenge, >= 2.5x on
hellaswag, >= 1.3x on piqa.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

TASKS = ("mmlu_continuation", "arc_easy", "arc_challenge", "piqa", "hellaswag", "mmlu")
MODELS = ("smollm2-135m-instruct", "qwen2.5-0.5b-random")
GOALS = {"mmlu_continuation": 3.0, "arc_easy": 3.0, "arc_challenge": 3.0, "hellaswag": 2.5, "piqa": 1.3}


def fake_quant(model):
    """A W8A8 RTN fake-quant copy of ``model`` (per-channel weights, per-token dynamic activations)."""
    import copy

    import torch

    from llmc.quant.fake_linear import replace_linears
    from llmc.quant.quantizer import Quantizer
    q = copy.deepcopy(model)
    decoder = q.get_decoder()
    names = [n for n, m in decoder.named_modules() if isinstance(m, torch.nn.Linear)]
    replace_linears(decoder, {n: (Quantizer(bit=8, symmetric=True, granularity="per_channel"),
                                  Quantizer(bit=8, symmetric=True, granularity="per_token")) for n in names})
    return q


def markdown(report: dict) -> str:
    """The results of a run (its ``--out`` JSON) as a markdown table, with the settings it ran under."""
    head = (f"{report['dtype']}, {report['threads']} threads, {report['items']} items per task, "
            f"{report['rounds']} rounds (median), HFLM batch {report['hf_bs']}, torch {report['torch']}, "
            f"{report['machine']}")
    lines = [head, "", "| model | variant | task | items | HFLM items/s | ours items/s | ratio (rounds) | "
             "CPU-time ratio | goal | same acc |", "|---|---|---|---:|---:|---:|---|---:|---|---|"]
    for r in report["runs"]:
        goal = "" if r["goal"] is None else f">= {r['goal']}x {'met' if r['ratio'] >= r['goal'] else 'NOT met'}"
        rounds = ", ".join(f"{x:.2f}" for x in r["ratios"])
        lines.append(f"| {r['model']} | {r['variant']} | {r['task']} | {r['n']} | {r['items_per_s']['hf']:.2f} | "
                     f"{r['items_per_s']['slmquant']:.2f} | {r['ratio']:.2f}x ({rounds}) | {r['cpu_ratio']:.2f}x | "
                     f"{goal} | {r['same_acc']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--tasks", default=",".join(TASKS[:5]))
    p.add_argument("--variants", default="float,fakequant", help="float and/or fakequant")
    p.add_argument("--items", type=int, default=96, help="documents per task (MMLU: over the 57 subjects)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"))
    p.add_argument("--hf-bs", type=int, default=16, help="HFLM's batch size")
    p.add_argument("--bs", type=int, default=0, help="ours: items per forward (0: its default)")
    p.add_argument("--data", default=None, help="data path (as eval.path)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="print the markdown table of an earlier run's --out file (nothing is measured)")
    args = p.parse_args(argv)
    if args.render:
        print(markdown(json.loads(Path(args.render).read_text())))
        return 0

    import torch

    from llmc.data.sources import find_dataset
    from llmc.models.loading import load_model, resolve_model_source
    from llmc_slm.harness import make_lm
    from llmc_slm.tasks import lmeval, load_task_data

    torch.set_num_threads(args.threads)
    tasks = [t for t in args.tasks.split(",") if t]
    data = {t: load_task_data(t, find_dataset(t, args.data, key="--data"), key="--data") for t in tasks}
    t_start = time.perf_counter()
    report = {"threads": torch.get_num_threads(), "dtype": args.dtype, "items": args.items, "rounds": args.rounds,
              "hf_bs": args.hf_bs, "bs": args.bs, "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "runs": []}
    print(f"threads {torch.get_num_threads()}, {args.dtype}, {args.items} items per task, {args.rounds} round(s), "
          f"HFLM batch {args.hf_bs}", flush=True)
    rows = []
    for model_name in [m for m in args.models.split(",") if m]:
        adapter = load_model(resolve_model_source(model_name), dtype=getattr(torch, args.dtype))
        variants = {}
        for v in args.variants.split(","):
            if v == "float":
                variants[v] = adapter.model
            elif v == "fakequant":
                variants[v] = fake_quant(adapter.model)
        for variant, model in variants.items():
            import types
            ad = types.SimpleNamespace(model=model, tokenizer=adapter.tokenizer)
            lms = {"hf": make_lm(ad, args.hf_bs, "hf"), "slmquant": make_lm(ad, args.bs or 1, "slmquant")}
            for task in tasks:
                times = {b: [] for b in lms}
                cpu = {b: [] for b in lms}
                results = {}
                for r in range(args.rounds):
                    order = list(lms) if r % 2 == 0 else list(lms)[::-1]
                    for b in order:
                        task_set = lmeval.build_task_set(task, data[task])
                        sel = lmeval.selection(task_set, args.items)
                        if "samples" in sel:
                            lmeval.prune(task_set, set(sel["samples"]))
                        t, c = time.perf_counter(), time.process_time()
                        res = lmeval.run(lms[b], task_set.task_dict(), **sel)
                        times[b].append(time.perf_counter() - t)
                        cpu[b].append(time.process_time() - c)
                        results[b] = lmeval.summarize(task_set, res)
                n = results["hf"]["n"]
                ratios = [h / s for h, s in zip(times["hf"], times["slmquant"])]
                run = {"model": model_name, "variant": variant, "task": task, "n": n,
                       "items_per_s": {b: n / statistics.median(ts) for b, ts in times.items()},
                       "seconds": times, "cpu_seconds": cpu, "ratios": ratios, "ratio": statistics.median(ratios),
                       "cpu_ratio": statistics.median(h / s for h, s in zip(cpu["hf"], cpu["slmquant"])),
                       "same_acc": all(results["hf"].get(k) == results["slmquant"].get(k) for k in ("acc", "acc_norm")),
                       "acc": {b: results[b].get("acc") for b in results},
                       "backend": lms["slmquant"].backend_name, "goal": GOALS.get(task)}
                report["runs"].append(run)
                rows.append([model_name, variant, task, n, f"{run['items_per_s']['hf']:.2f}",
                             f"{run['items_per_s']['slmquant']:.2f}", f"{run['ratio']:.2f}x", f"{run['cpu_ratio']:.2f}x",
                             "" if run["goal"] is None else f">= {run['goal']}x", run["same_acc"]])
                print(f"{model_name} {variant} {task}: HFLM {run['items_per_s']['hf']:.2f} items/s, ours "
                      f"{run['items_per_s']['slmquant']:.2f} items/s, ratio {run['ratio']:.2f}x "
                      f"(rounds {', '.join(f'{x:.2f}' for x in ratios)}), same acc {run['same_acc']}", flush=True)
            del lms
        del variants, adapter
    report["seconds_total"] = time.perf_counter() - t_start
    from tabulate import tabulate
    print()
    print(tabulate(rows, headers=["model", "variant", "task", "items", "HFLM items/s", "ours items/s", "ratio", "CPU-time ratio",
                                  "goal", "same acc"]))
    print(f"\ntotal {report['seconds_total']:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
