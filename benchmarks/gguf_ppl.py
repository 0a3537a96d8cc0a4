"""Quantized runs exported to GGUF, scored in llama.cpp beside their fake-quant figure (issue 19).

    python -m llmc --config configs/smollm/rtn_w8a8.yml --profile cpu --model.torch_dtype float32 \\
        --eval.eval_pos '[pretrain, fake_quant]' --eval.seq_len 512 --eval.limit 16 \\
        --save.formats '[gguf]' --save.save_path out/gguf
    python benchmarks/gguf_ppl.py out/gguf --threads 2 --peers --json out/gguf/llamacpp.json

For every results file in the folder that has a ``*_gguf_fake_quant`` export, its GGUF is measured in
llama.cpp (``llmc_slm.tracks.runtimes.llamacpp``, a fresh process) with WikiText-2 perplexity on the
same windows the run evaluated (``eval.seq_len``, first ``eval.limit``), tokenized by the model's tokenizer
as the evaluation does; the table puts it beside the run's fake-quant (and float) perplexity. ``--peers``
adds the float model in llama.cpp (F16 GGUF) and llama.cpp's own round-to-nearest Q8_0 / Q4_0 of it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def runs_with_gguf(folder: Path) -> list[tuple[Path, dict, Path]]:
    out = []
    for f in sorted(folder.glob("*.json")):
        data = json.loads(f.read_text())
        if "metrics" not in data:
            continue
        g = folder / f"{f.stem}_gguf_fake_quant" / "model.gguf"
        out.append((f, data, g))
    return out


def ppl_of(data: dict, pos: str):
    m = data.get("metrics", {}).get(pos, {}).get("wikitext2", {})
    return m.get("ppl"), m.get("windows"), m.get("seq_len")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--peers", action="store_true")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--json")
    p.add_argument("--extra-bufts", choices=("on", "off"))
    p.add_argument("--append", action="store_true",
                   help="keep the rows of an existing --json file (same threads), replacing those of the same label")
    args = p.parse_args(argv)
    from benchmarks.edge_runtimes import ppl_windows_of
    from llmc import catalog
    from llmc.models.loading import _load_tokenizer, local_dir, resolve_model_source
    from llmc_slm.tracks.loading import fixed_input_ids
    from llmc_slm.tracks.runtimes import measure_in_child
    catalog.load()
    folder = Path(args.folder)
    runs = runs_with_gguf(folder)
    previous = json.loads(Path(args.json).read_text()) if args.append and args.json and Path(args.json).is_file() else None
    if previous is not None:
        appended(previous, {"threads": args.threads, "rows": [], "torch_float_ppl": None})   # refuse early
    inputs: dict = {}

    def inputs_of(model: str, n: int, seq_len: int, data_path=None):
        """(windows, prefill ids) of a run: its model's tokenizer, its eval.seq_len / limit / path."""
        key = (model, n, seq_len, data_path)
        if key not in inputs:
            source = resolve_model_source(model)
            ids, _ = fixed_input_ids(_load_tokenizer(source, local_dir(source), "fast"), 128)
            inputs[key] = (ppl_windows_of(source, n, seq_len, data_path), ids)
        return inputs[key]

    options = {"warmup": 2, "runs": 5, "decode_runs": 1}
    if args.extra_bufts:
        options["extra_bufts"] = args.extra_bufts == "on"
    rows = []

    def run(label, path, windows, ids, fake=None, float_ppl=None, note=""):
        row = measure_in_child("llamacpp", path, threads=args.threads, prefill_ids=ids, decode_tokens=16,
                               ppl_windows=windows, options=options)
        row.update(label=label, fake_quant_ppl=fake, torch_float_ppl=float_ppl, note=note, windows=len(windows),
                   seq_len=len(windows[0]))
        if fake and row.get("wikitext2_ppl"):
            row["gap_vs_fake_quant"] = row["wikitext2_ppl"] / fake - 1
        rows.append(row)
        print(f"{label}: llama.cpp ppl {row.get('wikitext2_ppl')} fake-quant {fake} "
              f"{row.get('skipped', '')}", flush=True)

    peer_inputs, float_ppl = None, None
    for f, data, g in runs:
        fake, n, seq_len = ppl_of(data, "fake_quant")
        label = f.stem
        if not g.is_file():
            rows.append({"label": label, "fake_quant_ppl": fake, "skipped": "no GGUF export (refused or not asked)",
                         "status": data.get("status"), "error": (data.get("error") or {})})
            print(f"{label}: no GGUF", flush=True)
            continue
        cfg = data.get("config", {})
        model = cfg.get("model", {}).get("path") or args.model
        windows, ids = inputs_of(model, n or 16, seq_len or 512, cfg.get("eval", {}).get("path"))
        run(label, g, windows, ids, fake, ppl_of(data, "pretrain")[0])
        if model == args.model and peer_inputs is None:     # the peers use this run's windows and float figure
            peer_inputs, float_ppl = (windows, ids), ppl_of(data, "pretrain")[0]
    if args.peers:
        import torch
        from llmc.export.gguf import write_float_gguf
        from llmc.models.loading import load_model
        source = resolve_model_source(args.model)
        windows, ids = peer_inputs or inputs_of(args.model, 16, 512)
        adapter = load_model(source, dtype=torch.float32)
        peers = folder / "peers"
        for label, kw in (("float F16", {"dtype": "F16", "embed_type": "F16"}),
                          ("llama.cpp Q8_0 (RTN)", {"rtn": "Q8_0"}), ("llama.cpp Q4_0 (RTN)", {"rtn": "Q4_0"})):
            path = peers / (label.split()[1].lower() + ".gguf")
            write_float_gguf(adapter.model, path, source=source, name=label, **kw)
            run(label, path, windows, ids, None, float_ppl,
                "float model" if "F16" in label else "llama.cpp's own RTN, embeddings Q8_0")
        del adapter
    print()
    print(f"WikiText-2, each run's own windows (the first eval.limit of eval.seq_len tokens); {args.threads} thread(s)")
    print("| model | windows | fake-quant ppl (torch) | llama.cpp ppl | gap | size MiB | prefill tok/s | decode tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("skipped"):
            fake = r.get("fake_quant_ppl")
            print(f"| {r['label']} | | {f'{fake:.3f}' if fake else '-'} | skipped: {r['skipped']} | | | | |")
            continue
        fake = r.get("fake_quant_ppl")
        gap = r.get("gap_vs_fake_quant")
        print(f"| {r['label']} | {r['windows']} x {r['seq_len']} | {f'{fake:.3f}' if fake else '-'} | {r['wikitext2_ppl']:.3f} | "
              f"{f'{gap:+.2%}' if gap is not None else '-'} | {r['stored_bytes'] / 2**20:.1f} | "
              f"{r['prefill_tokens_per_s']:.1f} | {r['decode_tokens_per_s']:.1f} |")
    if args.json:
        from llmc.utils import atomic_write_json
        report = {"threads": args.threads, "torch_float_ppl": float_ppl, "rows": rows}
        if previous is not None:
            report = appended(previous, report)
        atomic_write_json(Path(args.json), report)
    return 0


def appended(old: dict, new: dict) -> dict:
    """``old``'s rows, those of ``new``'s labels replaced in place, then ``new``'s other rows; the two must have been
    measured with the same threads. The float figure is ``old``'s unless it had none."""
    if old.get("threads") != new["threads"]:
        raise SystemExit(f"error: --append: the file was measured with {old.get('threads')} thread(s), this run "
                         f"with {new['threads']}")
    fresh = {r.get("label"): r for r in new["rows"]}
    rows = [fresh.pop(r.get("label"), r) for r in old.get("rows", [])] + list(fresh.values())
    return {**old, "rows": rows, "torch_float_ppl": old.get("torch_float_ppl") or new["torch_float_ppl"]}


if __name__ == "__main__":
    sys.exit(main())
