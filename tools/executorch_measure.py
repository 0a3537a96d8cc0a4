"""SmolLM2 runs lowered to ExecuTorch (XNNPACK) and measured there beside the float32 program (issue 19).

    python -m llmc --config configs/smollm/rtn_w8a8.yml --profile cpu --model.torch_dtype float32 \\
        --eval.eval_pos '[pretrain, fake_quant]' --eval.seq_len 512 --eval.limit 16 --eval.paired false \\
        --save.save_real true --save.real_embed_bit null --save.save_path out/runs
    OMP_NUM_THREADS=1 python tools/executorch_measure.py rtn_w8a8 smooth_w8a8 spin_w4a8 --runs-dir out/runs

Each named run needs its results file ``<runs-dir>/<name>_cpu.json`` and its packed checkpoint
``<runs-dir>/<name>_cpu_real_quant`` (``save.save_real``). Its program is lowered from the packed codes and
scales (``llmc.export.executorch.export_packed``, once), then measured in a fresh process
(``llmc_slm.tracks.runtimes.measure_in_child``) with the float32 program of the model: stored bytes, idle /
peak / peak-above-idle resident memory, prefill (1 x 128 WikiText-2 tokens) and decode tokens/s, and the
WikiText-2 perplexity of the run's own windows (``eval.seq_len``, first ``eval.limit``) beside the run's
fake-quant and float figures. Results are added to ``--out`` (default ``out/et_results.json``) after each
program, so an interrupted measurement keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", default=["rtn_w8a8", "smooth_w8a8", "spin_w4a8"])
    p.add_argument("--runs-dir", default="out/runs")
    p.add_argument("--work", default="out/et", help="where the programs are written")
    p.add_argument("--out", default="out/et_results.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep-measured", action="store_true",
                   help="programs already in --out (fp32 included) are kept, not lowered or measured again")
    args = p.parse_args(argv)
    from benchmarks.edge_runtimes import ppl_windows_of
    from llmc import catalog
    from llmc.errors import UserError
    from llmc.export.executorch import ensure_float_pte, export_packed
    from llmc.models.loading import _load_tokenizer, local_dir, resolve_model_source
    from llmc.utils import atomic_write_json
    from llmc_slm.tracks.loading import fixed_input_ids
    from llmc_slm.tracks.runtimes import measure_in_child
    catalog.load()
    runs_dir, work, out = Path(args.runs_dir), Path(args.work), Path(args.out)
    records = {}
    for name in args.runs:
        path = runs_dir / f"{name}_cpu.json"
        if not path.is_file() or not (runs_dir / f"{name}_cpu_real_quant").is_dir():
            print(f"error: {path} or its packed checkpoint {name}_cpu_real_quant is missing (module docstring)",
                  file=sys.stderr)
            return 2
        records[name] = json.loads(path.read_text())
    first = next(iter(records.values()))
    model = first["config"]["model"]["path"]
    seq_len, limit = first["config"]["eval"]["seq_len"], first["config"]["eval"]["limit"] or 16
    source = resolve_model_source(model)
    ids, info = fixed_input_ids(_load_tokenizer(source, local_dir(source), "fast"), 128)
    windows = ppl_windows_of(source, limit, seq_len, first["config"]["eval"].get("path"))
    results = json.loads(out.read_text()) if out.is_file() else {}
    protocol = {"threads": args.threads, "prefill_tokens": int(ids.shape[1]), "decode_tokens": 32,
                "ppl_windows": len(windows), "ppl_seq_len": seq_len, "input": info}
    kept = {n for n in results if n != "protocol"} if args.keep_measured else set()
    if kept and results.get("protocol") != protocol:
        print(f"error: --keep-measured: {out} was measured under another protocol ({results.get('protocol')})",
              file=sys.stderr)
        return 2
    results["protocol"] = protocol
    try:
        artifacts = {} if "fp32" in kept else {"fp32": ensure_float_pte(model, seq_len, work / "fp32")}
        for name in (n for n in args.runs if n not in kept):
            art = work / name
            if not (art / "model.pte").is_file():
                t = time.perf_counter()
                export_packed(runs_dir / f"{name}_cpu_real_quant", art, seq_len)
                print(f"{name}: exported in {time.perf_counter() - t:.0f} s", flush=True)
            artifacts[name] = art
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, art in artifacts.items():
        row = measure_in_child("executorch", art, threads=args.threads, prefill_ids=ids, decode_tokens=32,
                               ppl_windows=windows)
        row["export_info"] = json.loads((Path(art) / "executorch.json").read_text())
        if name in records:
            metrics = records[name]["metrics"]
            row["fake_quant_ppl"] = metrics["fake_quant"]["wikitext2"]["ppl"]
            row["float_torch_ppl"] = metrics.get("pretrain", {}).get("wikitext2", {}).get("ppl")
        results[name] = row
        atomic_write_json(out, results)
        print(name, row.get("skipped") or {k: row.get(k) for k in (
            "stored_bytes", "idle_rss_bytes", "peak_rss_bytes", "peak_above_idle_bytes", "prefill_tokens_per_s",
            "decode_tokens_per_s", "wikitext2_ppl", "fake_quant_ppl")}, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
