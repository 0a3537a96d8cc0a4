"""Paired WikiText-2 (``eval.paired``) with and without the float reference's cached hidden states
(``llmc.eval.reference_cache``), on this machine.

    python benchmarks/paired_ppl_speed.py                          # SmolLM2 (embedded), 6 windows of 2048, 3 rounds
    python benchmarks/paired_ppl_speed.py --models smollm2-135m-instruct,qwen2.5-0.5b-random --windows 4 --out r.json

One process per invocation: each model is loaded (``--dtype``, bfloat16 by default) with a W8A8 RTN fake-quant
copy (``eval_speed.fake_quant``: what the quantized model costs does not depend on the method), then the first
``--windows`` WikiText-2 windows are scored with the float reference recomputed (``plain``) and read from a cache
written before the clock starts (``cached``), in alternation for ``--rounds`` rounds, the order rotating. Reported:
seconds per window of each (median over rounds), the speed-up plain / cached per round and its median, and whether
both gave the same figures (every window's NLL, KL and top-1 agreement, exactly). Torch threads are pinned
(``--threads``, 2 by default) and reported; the cache lives in a temporary folder.
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
                                  reference_cache=cache if kind == "cached" else None)
            written = score("cached")["vs_float"]["reference_cache"]["status"]
            times, outs = {"plain": [], "cached": []}, {}
            for k in range(args.rounds):
                for kind in (("plain", "cached") if k % 2 == 0 else ("cached", "plain")):
                    t = time.perf_counter()
                    outs[kind] = score(kind)
                    times[kind].append((time.perf_counter() - t) / windows.shape[0])
        status = outs["cached"]["vs_float"].pop("reference_cache")["status"]
        same = outs["plain"]["per_item"] == outs["cached"]["per_item"] and \
            outs["plain"]["vs_float"] == outs["cached"]["vs_float"]
        ratios = [a / b for a, b in zip(times["plain"], times["cached"])]
        run = {"model": name, "s_per_window": {k: statistics.median(v) for k, v in times.items()},
               "seconds": times, "ratios": ratios, "speedup": statistics.median(ratios), "same_figures": same,
               "cache": {"first": written, "then": status}, "kld": outs["plain"]["vs_float"]["kld"]}
        report["runs"].append(run)
        print(f"{name}: plain {run['s_per_window']['plain']:.2f} s/window, cached {run['s_per_window']['cached']:.2f} "
              f"s/window, speed-up {run['speedup']:.2f}x (rounds {', '.join(f'{x:.2f}' for x in ratios)}), "
              f"same figures {same}, cache {written} then {status}", flush=True)
        del adapter, ref, model
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0 if all(r["same_figures"] for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
