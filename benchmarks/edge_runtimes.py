"""Track 2 in the runtimes SLMs ship with: torch (float and our integer deployment), ExecuTorch and llama.cpp,
for SmolLM2 and the Qwen2.5 architecture, in one run (issue 19).

    python benchmarks/edge_runtimes.py --threads 1 --json out/edge.json
    python benchmarks/edge_runtimes.py --models smollm2-135m-instruct --ppl-windows 16    # real weights + ppl

For each model (by default the random exact-architecture twins of SmolLM2-135M and Qwen2.5-0.5B: speed,
size and memory depend on the architecture only) it quantizes with RTN, W8A8 (8-bit symmetric per-channel
weights) and W4A8 (4-bit symmetric per-channel), 8-bit per-token activations, and exports each variant to

* ``torch``: the bfloat16 float checkpoint and the packed integer checkpoints (``llmc_slm.tracks.inference``);
* ``llamacpp``: the F16 GGUF of the float model, our exact codes as Q8_0 / Q4_0 (``llmc.export.gguf``), and
  llama.cpp's own round-to-nearest Q8_0 / Q4_0 of the float model (``peer_q8_0`` / ``peer_q4_0``: every
  linear, embeddings Q8_0 as ours), the edge peer;
* ``executorch``: through the exporter registered as ``executorch`` (its float ``.pte`` and 8da8w / 8da4w),
  reported as skipped with the reason where the exporter, its module or the package is missing.

Every artifact is measured in its own fresh process (``llmc_slm.tracks.runtimes`` contract: stored bytes,
idle and peak RSS and the peak above idle, prefill tokens/s at 1 x 128 WikiText-2 tokens with logits of the
last position, decode tokens/s), threads pinned (``--threads``, also ``OMP_NUM_THREADS``) and reported, and
each row's ratios are against the same runtime's float model measured in the same run. For torch the
protocol's full-logit prefill TPS is kept beside (``prefill_full_logits_tokens_per_s``).
``--ppl-windows N`` adds WikiText-2 perplexity on the first N windows of ``--ppl-seq-len`` tokens in each
runtime (meaningful for real weights only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

MODELS = ("smollm2-135m-random", "qwen2.5-0.5b-random")
RUNTIME_NAMES = ("torch", "llamacpp", "executorch")
VARIANTS = {"w8a8": 8, "w4a8": 4}


def quant_cfg(bits: int, work: Path, formats: list[str], context: int = 256):
    """RTN W{bits}A8 (symmetric per-channel weights, per-token activations); ``context``: the longest sequence
    a program serves (``eval.seq_len``: the ExecuTorch program's ``max_seq_len``, its KV cache's length)."""
    from llmc.config import load_config
    return load_config(None, ["--eval.seq_len", str(context), "--quant.method", "RTN", "--quant.weight.bit", str(bits), "--quant.weight.symmetric",
                              "true", "--quant.weight.granularity", "per_channel", "--quant.act.bit", "8",
                              "--quant.act.symmetric", "true", "--quant.act.granularity", "per_token",
                              "--save.save_path", str(work), "--save.formats", json.dumps(formats)])


def _registry_export(name: str, adapter, cfg):
    """(path, None) from the exporter registered as ``name``, or (None, why not)."""
    from llmc.registry import EXPORTER_REGISTRY
    try:
        exporter = EXPORTER_REGISTRY[name]()
    except Exception as e:  # noqa: BLE001 - a missing plug-in is a skip, not a crash
        return None, f"no exporter '{name}' here ({str(e).splitlines()[0][:160]})"
    try:
        return exporter.export(adapter, None, cfg, "fake_quant"), None
    except Exception as e:  # noqa: BLE001
        return None, f"the {name} export failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"


def context_length(seq_len: int, decode_tokens: int, ppl_seq_len: int = 0) -> int:
    """The context every runtime is given: llama.cpp's ``n_ctx`` for prefill + decode (rounded up to 256, as
    ``llmc_slm.tracks.runtimes.llamacpp`` does), or the perplexity window if longer. The ExecuTorch program's
    KV cache has this length, so that both attend over caches of the same size."""
    return max(256, -(-(seq_len + decode_tokens + 1) // 256) * 256, ppl_seq_len)


def _executorch_float(adapter, out: Path, context: int):
    """(path, None) of the float32 ExecuTorch program of ``adapter``'s model (the runtime's baseline), or
    (None, why not)."""
    import copy
    try:
        from llmc.export.executorch import write_program
        model = copy.deepcopy(adapter.model).float().eval()
        info = {"source": "float32 model", "quant": None, "conversions": []}
        return write_program(model, None, out, max_seq_len=context, info=info, tokenizer=adapter.tokenizer), None
    except Exception as e:  # noqa: BLE001 - a missing runtime is a skip, not a crash
        return None, f"the float ExecuTorch program failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"


class Artifacts:
    """The artifacts of one model under ``base`` and ``artifacts.json`` listing those made (written after
    each, atomically), so that a rerun with the same ``--work`` folder and context reuses them (the
    ExecuTorch lowerings take minutes each) and makes only what is missing."""

    def __init__(self, base: Path, context: int):
        self.base, self.context = base, context
        self.path = base / "artifacts.json"
        data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.made = data.get("made", {}) if data.get("context") == context else {}

    def have(self, runtime: str, variant: str):
        entry = self.made.get(f"{runtime}/{variant}")
        return Path(entry) if entry and Path(entry).exists() else None

    def record(self, runtime: str, variant: str, path) -> None:
        from llmc.utils import atomic_write_json
        if isinstance(path, Path):
            self.made[f"{runtime}/{variant}"] = str(path)
            self.base.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path, {"context": self.context, "made": self.made})


def prepare(name: str, work: Path, runtimes, seq_len: int, context: int) -> tuple[dict, object, dict, object]:
    """Export every artifact of one model: {(runtime, variant): path or {'skipped': reason}}, the prefill ids,
    their source and the model source; ``context``: :func:`context_length`. Artifacts already made in
    ``work`` for the same context are reused (:class:`Artifacts`)."""
    import torch
    from llmc.export.gguf import write_float_gguf
    from llmc.models.loading import load_model, resolve_model_source
    from llmc.pipeline import quantize_model
    from llmc.quant.packed import save_packed_model
    from llmc_slm.tracks.inference import save_baseline_checkpoint
    from llmc_slm.tracks.loading import fixed_input_ids

    source = resolve_model_source(name)
    base = work / name
    made = Artifacts(base, context)
    out: dict = {}
    adapter = load_model(source, dtype=torch.bfloat16, seed=42)
    ids, info = fixed_input_ids(adapter.tokenizer, seq_len, vocab_size=adapter.model.config.vocab_size)
    t = time.perf_counter()

    def make(runtime: str, variant: str, build) -> None:
        path = made.have(runtime, variant)
        if path is None:
            path, why = build()
            made.record(runtime, variant, path)
        else:
            why = None
        out[(runtime, variant)] = path or {"skipped": why}

    def written(path: Path, write):
        write()
        return path, None

    if "torch" in runtimes:
        make("torch", "float", lambda: (save_baseline_checkpoint(adapter.model, adapter.tokenizer,
                                                                 base / "torch_bf16"), None))
    if "llamacpp" in runtimes:
        make("llamacpp", "float", lambda: written(base / "f16.gguf", lambda: write_float_gguf(
            adapter.model, base / "f16.gguf", source=source, dtype="F16", name=f"{name} F16")))
        for peer in ("Q8_0", "Q4_0"):
            path = base / f"peer_{peer.lower()}.gguf"
            make("llamacpp", f"peer_{peer.lower()}", lambda path=path, peer=peer: written(path, lambda: write_float_gguf(
                adapter.model, path, source=source, rtn=peer, name=f"{name} llama.cpp {peer}")))
    if "executorch" in runtimes:
        make("executorch", "float", lambda: _executorch_float(adapter, base / "et_float", context))
    print(f"  {name}: float artifacts ({time.perf_counter() - t:.1f} s)", flush=True)
    del adapter
    for variant, bits in VARIANTS.items():
        t = time.perf_counter()
        wanted = [r for r in ("torch", "llamacpp", "executorch") if r in runtimes]
        if all(made.have(r, variant) for r in wanted):
            for r in wanted:
                out[(r, variant)] = made.have(r, variant)
            print(f"  {name} {variant}: artifacts reused from {base}", flush=True)
            continue
        adapter = load_model(source, dtype=torch.bfloat16, seed=42)
        cfg = quant_cfg(bits, base / variant, [], context)
        quantize_model(adapter, cfg)
        if "torch" in runtimes:
            make("torch", variant, lambda: written(base / variant / "packed", lambda: save_packed_model(
                adapter, cfg, base / variant / "packed")))
        for runtime in ("llamacpp", "executorch"):
            if runtime in runtimes:
                exporter = {"llamacpp": "gguf", "executorch": "executorch"}[runtime]
                make(runtime, variant, lambda exporter=exporter: _registry_export(exporter, adapter, cfg))
        print(f"  {name} {variant}: artifacts ({time.perf_counter() - t:.1f} s)", flush=True)
        del adapter
    return out, ids, info, source


def _torch_row(profile: dict) -> dict:
    """A torch child's profile (``llmc_slm.tracks.inference``) in the runtimes' contract."""
    return {"runtime": "torch", "artifact": profile.get("checkpoint"), "stored_bytes": profile.get("size"),
            "idle_rss_bytes": profile.get("rss_before_load"), "peak_rss_bytes": profile.get("peak_mem"),
            "peak_above_idle_bytes": profile.get("peak_mem_above_runtime"),
            "prefill_tokens_per_s": profile.get("prefill_last_logit_tps"),
            "prefill_full_logits_tokens_per_s": profile.get("tps"),
            "decode_tokens_per_s": profile.get("decode_tps"), "wikitext2_ppl": None, "ppl_windows": 0,
            "threads": profile.get("threads"), "compute_dtype": profile.get("compute_dtype")}


def torch_ppl(path: Path, windows) -> dict:
    """WikiText-2 perplexity of a torch checkpoint (packed or HF) on the given windows, in this process."""
    import torch
    from llmc.eval.perplexity import perplexity
    from llmc_slm.tracks.loading import load_for_inference
    model, _, _ = load_for_inference(path, dtype="float32")
    result = perplexity(model, torch.tensor(windows), progress=False)
    del model
    return {"wikitext2_ppl": result["ppl"], "ppl_windows": len(windows)}


def measure_all(artifacts: dict, ids, threads: int, args, windows) -> list[dict]:
    from llmc_slm.tracks.inference import profile_inference
    from llmc_slm.tracks.runtimes import measure_in_child, skipped
    rows = []
    for (runtime, variant), path in artifacts.items():
        t = time.perf_counter()
        if isinstance(path, dict):
            row = skipped(runtime, path["skipped"])
        elif runtime == "torch":
            try:
                row = _torch_row(profile_inference(path, threads=threads, input_ids=ids, warmup=args.warmup,
                                                   runs=args.runs, decode_tokens=args.decode_tokens,
                                                   decode_runs=args.decode_runs, last_logit_runs=args.runs,
                                                   macs=False))
                if windows:
                    row.update(torch_ppl(path, windows))
            except Exception as e:  # noqa: BLE001 - one failed child is a row, not the end of the run
                row = skipped(runtime, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", path)
        else:
            options = {"warmup": args.warmup, "runs": args.runs, "decode_runs": args.decode_runs}
            if runtime == "llamacpp" and args.extra_bufts is not None:
                options["extra_bufts"] = args.extra_bufts == "on"
            row = measure_in_child(runtime, path, threads=threads, prefill_ids=ids, decode_tokens=args.decode_tokens,
                                   ppl_windows=windows, options=options)
        row["variant"] = variant
        rows.append(row)
        state = row.get("skipped") or (f"prefill {row['prefill_tokens_per_s']:.1f} tok/s, "
                                       f"decode {row['decode_tokens_per_s'] or 0:.1f} tok/s")
        print(f"    {runtime:10s} {variant:10s} {state} ({time.perf_counter() - t:.0f} s)", flush=True)
    add_ratios(rows)
    return rows


RATIOS = (("size_x", "stored_bytes", False), ("peak_x", "peak_rss_bytes", False),
          ("peak_above_idle_x", "peak_above_idle_bytes", False), ("prefill_x", "prefill_tokens_per_s", True),
          ("decode_x", "decode_tokens_per_s", True))


def add_ratios(rows: list[dict]) -> None:
    """Each row's ratios against its runtime's float row: sizes and memories float / row (higher = smaller),
    speeds row / float (higher = faster)."""
    floats = {r["runtime"]: r for r in rows if r["variant"] == "float" and not r.get("skipped")}
    for r in rows:
        f = floats.get(r["runtime"])
        if f is None or r.get("skipped"):
            continue
        for name, key, speed in RATIOS:
            a, b = r.get(key), f.get(key)
            if a and b:
                r[name] = a / b if speed else b / a


def _mb(v) -> str:
    return "-" if v is None else f"{v / 2**20:,.1f}"


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def table(name: str, rows: list[dict]) -> str:
    head = ("| runtime | variant | size MiB | peak RSS MiB | idle MiB | peak above idle MiB | prefill tok/s | "
            "decode tok/s | size x | peak x | above-idle x | prefill x | decode x | ppl |")
    lines = [f"**{name}**", "", head, "|" + "---|" * 14]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['runtime']} | {r['variant']} | skipped: {r['skipped']} |" + " |" * 11)
            continue
        ppl = r.get("wikitext2_ppl")
        lines.append(f"| {r['runtime']} | {r['variant']} | {_mb(r['stored_bytes'])} | {_mb(r['peak_rss_bytes'])} | "
                     f"{_mb(r['idle_rss_bytes'])} | {_mb(r['peak_above_idle_bytes'])} | "
                     f"{r['prefill_tokens_per_s']:.1f} | {(r['decode_tokens_per_s'] or 0):.1f} | "
                     f"{_x(r.get('size_x'))} | {_x(r.get('peak_x'))} | {_x(r.get('peak_above_idle_x'))} | "
                     f"{_x(r.get('prefill_x'))} | {_x(r.get('decode_x'))} | "
                     f"{'-' if ppl is None else f'{ppl:.3f}'} |")
    return "\n".join(lines)


def ppl_windows_of(source, n: int, seq_len: int, data_path=None):
    """The first ``n`` WikiText-2 windows of ``seq_len`` tokens, tokenized as the evaluation does."""
    from llmc.data.sources import find_dataset
    from llmc.data.wikitext2 import evaluation_text
    from llmc.eval.perplexity import window_ids
    from llmc.models.loading import _load_tokenizer, local_dir
    tok = _load_tokenizer(source, None if source.kind == "random" else local_dir(source), "fast")
    ids = tok(evaluation_text(find_dataset("wikitext2", data_path)), return_tensors="pt").input_ids[0]
    return window_ids(ids, seq_len)[:n].tolist()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--runtimes", nargs="+", default=list(RUNTIME_NAMES), choices=RUNTIME_NAMES)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--decode-runs", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--ppl-windows", type=int, default=0, help="WikiText-2 windows to score in each runtime (0: none)")
    p.add_argument("--ppl-seq-len", type=int, default=512)
    p.add_argument("--extra-bufts", choices=("on", "off"), help="llama.cpp's use_extra_bufts (default: library's)")
    p.add_argument("--work", help="folder for the artifacts (default: a temporary one); a rerun with the same folder "
                                  "reuses the artifacts it made")
    p.add_argument("--prepare-only", action="store_true",
                   help="make the artifacts in --work and stop (the lowerings need no quiet machine; the measurement does)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.prepare_only and not args.work:
        p.error("--prepare-only needs --work (the folder the measurement will reuse)")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    from llmc import catalog
    catalog.load()
    from llmc_slm.tracks.runtimes import availability
    report = {"threads": args.threads, "protocol": {k: getattr(args, k) for k in (
        "warmup", "runs", "decode_tokens", "decode_runs", "seq_len", "ppl_windows", "ppl_seq_len")},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
                        "cpu": _cpu(), "runtimes": {r: availability(r) or "available" for r in ("llamacpp", "executorch")}},
        "models": {}}
    with tempfile.TemporaryDirectory(prefix="slmq_edge_") as tmp:
        work = Path(args.work or tmp)
        for name in args.models:
            print(f"{name}: exporting", flush=True)
            context = context_length(args.seq_len, args.decode_tokens, args.ppl_seq_len if args.ppl_windows else 0)
            report["protocol"]["context"] = context
            artifacts, ids, info, source = prepare(name, work, args.runtimes, args.seq_len, context)
            if args.prepare_only:
                continue
            windows = ppl_windows_of(source, args.ppl_windows, args.ppl_seq_len) if args.ppl_windows else None
            print(f"{name}: measuring ({args.threads} thread(s))", flush=True)
            rows = measure_all(artifacts, ids, args.threads, args, windows)
            report["models"][name] = {"input": info, "rows": rows}
            print(table(name, rows), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


def _cpu() -> str:
    try:
        from llmc.utils import cpu_name
        return cpu_name()
    except Exception:  # noqa: BLE001
        return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
