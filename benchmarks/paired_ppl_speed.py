"""Paired WikiText-2 (``eval.paired``) with the float reference recomputed, read from its cached hidden states
(``llmc.eval.reference_cache``), and read from the summary of its distributions (``llmc.eval.reference_summary``),
on this machine.

    python benchmarks/paired_ppl_speed.py                          # SmolLM2 (embedded), 6 windows of 2048, 3 rounds
    python benchmarks/paired_ppl_speed.py --models smollm2-135m-instruct,qwen2.5-0.5b-random --windows 4 --out r.json
    python benchmarks/paired_ppl_speed.py --models gemma-3-270m --dtype float32 --windows 2

One process per invocation: each model is loaded (``--dtype``, bfloat16 by default) with a W8A8 RTN fake-quant
copy of its decoder (``eval_speed.fake_quant``: what the quantized model costs does not depend on the method; the
output layer stays the reference's, as in every method without R1), then the first ``--windows`` WikiText-2
windows are scored with the float reference recomputed (``plain``), from its hidden states cached before the clock
starts (``cached``) and, for float32 models, from the summary also written before (``summary``; bfloat16 models do
not use it), in alternation for ``--rounds`` rounds, the order rotating. Reported: seconds per window of each
(median over rounds), the speed-ups plain / cached and plain / summary per round and their medians, whether the
cache gave the same figures (every window's NLL, KL and top-1 agreement, exactly) and whether the summary gave the
same NLLs and top-1 exactly and its KL within float32 rounding (the largest relative difference of a window's
KL, reported). Torch threads are pinned (``--threads``, 2 by default) and reported; the cache lives in a
temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="smollm2-135m-instruct")
    p.add_argument("--windows", type=int, default=6)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--data", default=None, help="data path (as eval.path)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    import torch

    from eval_speed import fake_quant
    from llmc.data.sources import find_dataset
    from llmc.data.wikitext2 import evaluation_text
    from llmc.eval.perplexity import perplexity, window_ids
    from llmc.eval.reference import FloatReference
    from llmc.models.loading import load_model, resolve_model_source

    torch.set_num_threads(args.threads)
    text = evaluation_text(find_dataset("wikitext2", args.data, key="--data"))
    report = {"threads": torch.get_num_threads(), "dtype": args.dtype, "windows": args.windows,
              "seq_len": args.seq_len, "rounds": args.rounds, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "runs": []}
    print(f"threads {report['threads']}, {args.dtype}, {args.windows} windows of {args.seq_len}, "
          f"{args.rounds} round(s)", flush=True)
    for name in [m for m in args.models.split(",") if m]:
        adapter = load_model(resolve_model_source(name), dtype=getattr(torch, args.dtype))
        ids = adapter.tokenizer(text, return_tensors="pt").input_ids[0]
        windows = window_ids(ids, args.seq_len)[: args.windows]
        ref = FloatReference(adapter.model)
        model = fake_quant(adapter.model)
        with tempfile.TemporaryDirectory() as cache, ref.on("cpu") as r:
            def score(kind):
                return perplexity(model, windows, progress=False, reference=r,
                                  reference_cache=None if kind == "plain" else cache,
                                  reference_summary=kind == "summary")
            first = score("summary")["vs_float"]["reference_cache"]
            kinds = ["plain", "cached"] + (["summary"] if first["summary"]["status"] == "written" else [])
            times, outs = {k: [] for k in kinds}, {}
            for k in range(args.rounds):
                for kind in kinds[k % len(kinds):] + kinds[:k % len(kinds)]:
                    t = time.perf_counter()
                    outs[kind] = score(kind)
                    times[kind].append((time.perf_counter() - t) / windows.shape[0])
        plain = outs["plain"]
        cached = outs["cached"]["vs_float"].pop("reference_cache")
        same = plain["per_item"] == outs["cached"]["per_item"] and plain["vs_float"] == outs["cached"]["vs_float"]
        run = {"model": name, "s_per_window": {k: statistics.median(v) for k, v in times.items()},
               "seconds": times, "same_figures": same, "kld": plain["vs_float"]["kld"],
               "cache": {"first": first["status"], "then": cached["status"]},
               "summary": {"first": first["summary"]["status"], "reason": first["summary"].get("reason")}}
        for kind in kinds[1:]:
            ratios = [a / b for a, b in zip(times["plain"], times[kind])]
            run[f"ratios_{kind}"], run[f"speedup_{kind}"] = ratios, statistics.median(ratios)
        if "summary" in outs:
            got = outs["summary"]
            run["summary"].update(
                then=got["vs_float"]["reference_cache"]["summary"]["status"],
                same_nll_top1=all(got["per_item"][c] == plain["per_item"][c]
                                  for c in ("window_nll", "ref_window_nll", "window_top1")),
                kl_max_rel_diff=max(abs(a - b) / abs(b) for a, b in zip(got["per_item"]["window_kl"],
                                                                         plain["per_item"]["window_kl"])),
                kld=got["vs_float"]["kld"])
        report["runs"].append(run)
        text = ", ".join(f"{k} {run['s_per_window'][k]:.2f}" for k in kinds)
        ups = ", ".join(f"plain/{k} {run[f'speedup_{k}']:.2f}x (rounds "
                        f"{', '.join(f'{x:.2f}' for x in run[f'ratios_{k}'])})" for k in kinds[1:])
        extra = (f"; summary: same NLLs and top-1 {run['summary']['same_nll_top1']}, window KL within "
                 f"{run['summary']['kl_max_rel_diff']:.1e} (relative)" if "summary" in outs else
                 f"; summary not used ({run['summary']['reason']})")
        print(f"{name}: s/window {text}; {ups}; cache gave the same figures {same}{extra}", flush=True)
        del adapter, ref, model
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0 if all(r["same_figures"] and r["summary"].get("same_nll_top1", True) and
                    r["summary"].get("kl_max_rel_diff", 0) < 1e-4 for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
