"""Track 2: inference performance of a stored model (protocol.md), measured in a fresh process.

    python -m llmc_slm.tracks.inference --checkpoint DIR [--threads 1] [--out result.json]

``DIR`` is either a packed real-quant checkpoint (``save.save_real``; loaded straight into an
integer-deployed model by :func:`llmc.deploy.load_deployed`) or an ordinary Hugging Face checkpoint (the
float baseline, e.g. saved in bfloat16 by :func:`save_baseline_checkpoint`). From Python,
:func:`profile_inference` spawns that command (:func:`llmc_slm.tracks.child.run_module`) and returns its
dict; :func:`infer_scores` turns a baseline's and a compressed model's dicts into the SLMQ_infer variants
(:func:`llmc_slm.scoring.infer_variants`), and :func:`track2_for_run` does all of it for one quantization
run (its packed checkpoint against the float baseline of its model, made once and cached).

This module times the model (prefill, decode) and runs the child; what it measures with lives beside
what it measures: the checkpoint's kind and bytes in :mod:`llmc.quant.packed_info` (beside the packed
format), peak memory in :mod:`llmc.profiling` (:class:`~llmc.profiling.PeakMemory`), MACs in
:mod:`llmc_slm.tracks.macs`, loading and the fixed input in :mod:`llmc_slm.tracks.loading`.

What is measured (defaults = the protocol):

* ``tps``: prefill tokens per second: batch 1, sequence 128, a fixed input (the first 128 tokens of the
  WikiText-2 test text, tokenized by the checkpoint's tokenizer, or ids given by the caller so that the
  baseline and the compressed model read the same tokens), 10 warm-up then 100 timed forward passes
  (full logits, ``use_cache=False``): ``tps = batch * seq_len * runs / seconds``.
* ``decode_tps`` (extra): greedy decoding of ``decode_tokens`` (32) new tokens after a 128-token prefill
  with the KV cache, one warm-up then ``decode_runs`` (3) timed runs; only the decode steps are timed.
* ``kv_cache`` (extra): the KV cache's bytes after that decoding, per token and at 2,048 / 8,192 tokens
  (:func:`kv_cache_footprint`; an integer cache, ``quant.kvcache``, counts its codes and ranges).
* ``long_context`` (extra): decoding 8 tokens with ``long_context`` (2,048) tokens already in the cache
  (:func:`decode_at_context`): its peak memory (and above the runtime, ``peak_above_idle_bytes``), the
  cache's footprint and the decode speed at that context.
* ``prefill_last_logit_tps`` (extra): the same prefill computing the logits of the last position only
  (``logits_to_keep=1``, what ``generate`` does); lm_head, which stays in float, then costs ~nothing.
* ``peak_mem``: bytes. CPU: the process's peak resident set size during the inference passes (the
  kernel's ``VmHWM``, reset after loading by writing 5 to ``/proc/self/clear_refs``, after ``gc`` and
  ``malloc_trim`` so that freed loading buffers do not count): runtime + resident weights + activations.
  Weights are first copied out of the checkpoint's memory map (``materialize_weights``) so that every
  checkpoint's weights are resident in the same way. ``peak_mem_process`` is the whole process's peak,
  loading included (``VmHWM`` before the reset); ``rss_before_load`` is the bare runtime's (Python, torch,
  transformers and the model's modeling code: ~0.4 GB here, common to every checkpoint) and
  ``peak_mem_above_runtime`` the difference (also written as ``idle_rss_bytes`` and
  ``peak_above_idle_bytes``, the names the edge runtimes use: :mod:`llmc_slm.tracks.memory`; the section's
  ``scores.peak_above_idle`` holds the baseline / compressed ratio of it). CUDA: the PyTorch allocator's peak
  (``max_memory_allocated``). ``memory_kind`` says which.
* ``size``: bytes of the stored checkpoint's ``*.safetensors`` files (packed integer codes, float32
  scales, uint8 zeros; embeddings and lm_head as int8 rows + float32 row scales by default
  (``save.real_embed_bit``), a tied lm_head once; norms in the dtype they were saved in); ``storage``
  breaks it down by role and dtype.
* ``macs``: multiply-accumulates of one forward pass at batch x seq_len: calflops 0.3.2's count
  (``macs_calflops``; it sees ``F.linear`` and ``torch.matmul`` but neither scaled-dot-product attention
  nor the integer kernels) + ``macs_attention`` (``llmc_slm.tracks.macs.ATTENTION_MACS_FORMULA``) + ``macs_integer`` (the
  integer linears' in x out x tokens). ``params`` is calflops' parameter count (parameters with
  ``requires_grad``; the integer codes are buffers and are not counted): the paper's "Model Size".

Threads: ``torch.set_num_threads(threads)`` (default 1; on a loaded 2-core machine one thread was ~4x
faster than two) and ``OMP_NUM_THREADS`` in the child's environment; recorded as ``threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from llmc.profiling import PeakMemory, release_free_memory, rss_bytes
from llmc.quant.packed_info import checkpoint_size, storage_breakdown
from llmc.utils import cache_kwarg
from llmc_slm.scoring import infer_variants

from .child import emit_json, read_ids_file, run_module
from .loading import fixed_input_ids, load_for_inference, load_tokenizer, warm_runtime
from .macs import count_macs
from .memory import peak_above_idle
from .records import InferenceSection

DEFAULTS = {"batch": 1, "seq_len": 128, "warmup": 10, "runs": 100, "decode_tokens": 32, "decode_runs": 3,
            "last_logit_runs": 20, "threads": 1, "long_context": 2048}
LONG_DECODE_TOKENS = 8
RESULT_KEYS = ("peak_mem", "size", "tps", "macs", "params", "decode_tps")


# ------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_prefill(model, ids: torch.Tensor, warmup: int, runs: int, logits_to_keep: int = 0) -> float:
    """Seconds for ``runs`` forward passes (after ``warmup`` untimed ones)."""
    kwargs = {"use_cache": False}
    if logits_to_keep:
        kwargs["logits_to_keep"] = logits_to_keep
    for _ in range(warmup):
        model(input_ids=ids, **kwargs)
    _sync(ids.device)
    t0 = time.perf_counter()
    for _ in range(runs):
        model(input_ids=ids, **kwargs)
    _sync(ids.device)
    return time.perf_counter() - t0


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


KV_CONTEXTS = (2048, 8192)


def kv_cache_footprint(cache, contexts=KV_CONTEXTS) -> dict:
    """Bytes of a filled KV cache, and what it holds at ``contexts`` tokens: an integer cache
    (``llmc.quant.int_kv_cache``) counts its codes and ranges, a float one its key and value tensors; a
    sliding-window layer holds at most its window. Exact: both grow by the same bytes per token."""
    per_token, kinds, total = [], set(), 0
    for layer in cache.layers:
        if hasattr(layer, "nbytes"):                      # integer codes + ranges
            n, tokens = layer.nbytes(), layer.get_seq_length()
            kinds.add(f"int{layer.quantizer.bit}")
        else:
            n = layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
            tokens = layer.keys.shape[-2]
            kinds.add(str(layer.keys.dtype).replace("torch.", ""))
        window = getattr(layer, "sliding_window", None) if getattr(layer, "is_sliding", False) else None
        per_token.append((n / max(tokens, 1), window))
        total += n
    out = {"kind": "+".join(sorted(kinds)), "bytes": int(total),
           "bytes_per_token": sum(b for b, w in per_token if w is None)}
    for n in contexts:
        out[f"bytes_at_{n}"] = int(round(sum(b * (n if w is None else min(n, w)) for b, w in per_token)))
    return out


@torch.no_grad()
def time_decode(model, ids: torch.Tensor, new_tokens: int, runs: int) -> float:
    """Seconds of the decode steps only (greedy, KV cache) over ``runs`` runs, after one warm-up run. The
    last run's cache is kept in ``time_decode.last_cache`` (for :func:`kv_cache_footprint`)."""
    arg = cache_kwarg(model)
    total = 0.0
    for r in range(runs + 1):
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache, nxt = _cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(ids.device)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=nxt, use_cache=True, **{arg: cache})
            cache, nxt = _cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(ids.device)
        if r:
            total += time.perf_counter() - t0
    time_decode.last_cache = cache
    return total


@torch.no_grad()
def decode_at_context(model, ids: torch.Tensor, context: int, new_tokens: int = LONG_DECODE_TOKENS) -> dict:
    """Memory of decoding with ``context`` tokens in the KV cache: the prompt (``ids`` repeated to
    ``context`` tokens) is prefilled first, outside the measurement, then the peak is taken over
    ``new_tokens`` greedy steps: resident weights, the filled cache and one token's activations (what a
    phone holds while it generates with a long prompt), not the prefill's activations."""
    arg = cache_kwarg(model)
    long_ids = ids[:1].repeat(1, -(-context // ids.shape[1]))[:, :context]
    out = model(input_ids=long_ids, use_cache=True, logits_to_keep=1)
    cache, nxt = _cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True)
    del out
    with PeakMemory(ids.device) as memory:
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=nxt, use_cache=True, **{arg: cache})
            cache, nxt = _cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True)
        seconds = time.perf_counter() - t0
    return {"context": context, "decode_tokens": new_tokens, "decode_tps": new_tokens / seconds,
            **memory.as_dict(), "kv_cache": kv_cache_footprint(cache)}


def measure_model(model, ids: torch.Tensor, *, warmup: int = 10, runs: int = 100, decode_tokens: int = 32,
                  decode_runs: int = 3, last_logit_runs: int = 20, macs: bool = True,
                  long_context: int = 0) -> dict:
    """Time and memory of a loaded model, in this process (the fresh-process protocol is
    :func:`profile_inference`, whose child calls this right after loading)."""
    device = ids.device
    batch, seq = ids.shape
    with PeakMemory(device) as memory:
        t_prefill = time_prefill(model, ids, warmup, runs)
        t_last = (time_prefill(model, ids, min(warmup, 3), last_logit_runs, logits_to_keep=1)
                  if last_logit_runs else 0.0)
        t_decode = time_decode(model, ids, decode_tokens, decode_runs) if decode_tokens and decode_runs else 0.0
    result = {
        "tps": batch * seq * runs / t_prefill,
        "decode_tps": (batch * decode_tokens * decode_runs / t_decode) if t_decode else None,
        "prefill_last_logit_tps": (batch * seq * last_logit_runs / t_last) if t_last else None,
        **memory.as_dict(),
        "prefill_seconds": t_prefill, "decode_seconds": t_decode,
        "batch": batch, "seq_len": seq, "warmup": warmup, "runs": runs, "decode_tokens": decode_tokens,
        "decode_runs": decode_runs, "last_logit_runs": last_logit_runs,
        "threads": torch.get_num_threads(), "device": str(device),
    }
    if t_decode:
        result["kv_cache"] = kv_cache_footprint(time_decode.last_cache)
        time_decode.last_cache = None
    if long_context:
        result["long_context"] = decode_at_context(model, ids, long_context)
    if macs:
        result.update(count_macs(model, ids))
    return result


# ------------------------------------------------------------------------------------- the child
def run_child(args: argparse.Namespace) -> dict:
    """The fresh process: load, measure, report."""
    torch.set_num_threads(args.threads)
    from llmc.quant.int_linear import int_mm_info
    warm_runtime(args.checkpoint)
    release_free_memory()
    rss_runtime = rss_bytes()
    t0 = time.perf_counter()
    model, tokenizer, info = load_for_inference(args.checkpoint, dtype=args.dtype, device=args.device,
                                                backend=args.backend, unpack=args.unpack)
    info["load_seconds"] = time.perf_counter() - t0
    if args.ids_file:
        ids, source = read_ids_file(args.ids_file)
        ids, info["input"] = torch.tensor(ids, dtype=torch.long), {"source": source}
    else:
        ids, info["input"] = fixed_input_ids(tokenizer, args.seq_len, args.batch, args.data_path,
                                             vocab_size=model.config.vocab_size)
    ids = ids.to(args.device)
    result = measure_model(model, ids, warmup=args.warmup, runs=args.runs, decode_tokens=args.decode_tokens,
                           decode_runs=args.decode_runs, last_logit_runs=args.last_logit_runs,
                           macs=not args.no_macs, long_context=args.long_context)
    result["rss_before_load"] = rss_runtime
    if result.get("long_context") and args.device == "cpu":
        result["long_context"]["peak_above_idle_bytes"] = result["long_context"]["peak_mem"] - rss_runtime
    result["peak_mem_above_runtime"] = result["peak_mem"] - rss_runtime if args.device == "cpu" else None
    # the edge runtimes' names for the same two figures (llmc_slm.tracks.memory, llmc_slm.tracks.runtimes)
    result["idle_rss_bytes"] = rss_runtime if args.device == "cpu" else None
    result["peak_above_idle_bytes"] = result["peak_mem_above_runtime"]
    result["size"] = checkpoint_size(args.checkpoint)
    result["storage"] = storage_breakdown(args.checkpoint)
    result.update(info)
    result["fresh_process"] = True
    result["environment"] = {"torch": torch.__version__, "python": sys.version.split()[0],
                             "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "int_kernels": int_mm_info(),
                             "cpu": _cpu_name()}
    return result


def _cpu_name() -> str:
    try:
        from llmc.utils import cpu_name
        return cpu_name()
    except Exception:  # noqa: BLE001
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llmc_slm.tracks.inference", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="packed real-quant folder or Hugging Face folder")
    p.add_argument("--out", help="write the result JSON here (default: print it)")
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"])
    p.add_argument("--batch", type=int, default=DEFAULTS["batch"])
    p.add_argument("--seq-len", type=int, default=DEFAULTS["seq_len"])
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"])
    p.add_argument("--runs", type=int, default=DEFAULTS["runs"])
    p.add_argument("--decode-tokens", type=int, default=DEFAULTS["decode_tokens"])
    p.add_argument("--decode-runs", type=int, default=DEFAULTS["decode_runs"])
    p.add_argument("--last-logit-runs", type=int, default=DEFAULTS["last_logit_runs"])
    p.add_argument("--dtype", default="bfloat16", help="compute dtype of the float parts ('stored': as saved)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", choices=("auto", "onednn", "int_mm"))
    p.add_argument("--unpack", default="load", choices=("load", "call"))
    p.add_argument("--ids-file", help="JSON {input_ids: [[...]], source: ...}: the input to use")
    p.add_argument("--data-path", help="WikiText-2 folder (default: the usual search, see llmc.data.sources)")
    p.add_argument("--no-macs", action="store_true", help="skip calflops")
    p.add_argument("--long-context", type=int, default=DEFAULTS["long_context"],
                   help=f"also measure the memory of decoding with this many tokens in the KV cache (0: skip; "
                        f"default {DEFAULTS['long_context']})")
    return p


def main(argv=None) -> int:
    from llmc.errors import UserError
    from llmc.library_logs import quiet_import_noise
    args = _parser().parse_args(argv)
    quiet_import_noise()
    try:
        emit_json(run_child(args), args.out)
    except UserError as e:          # a damaged or foreign checkpoint, missing data: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------------- parent API
def profile_inference(checkpoint: str | Path, *, threads: int = DEFAULTS["threads"], batch: int = DEFAULTS["batch"],
                      seq_len: int = DEFAULTS["seq_len"], warmup: int = DEFAULTS["warmup"],
                      runs: int = DEFAULTS["runs"], decode_tokens: int = DEFAULTS["decode_tokens"],
                      decode_runs: int = DEFAULTS["decode_runs"], last_logit_runs: int = DEFAULTS["last_logit_runs"],
                      input_ids: Optional[torch.Tensor] = None, input_source: str = "given by the caller",
                      dtype: str = "bfloat16", device: str = "cpu", backend: str = "auto", unpack: str = "load",
                      macs: bool = True, data_path: Optional[str] = None, timeout: Optional[float] = 3600,
                      nice: int = 0, env: Optional[dict] = None, long_context: int = DEFAULTS["long_context"]) -> dict:
    """Track 2 of one checkpoint, measured in a fresh ``python -m llmc_slm.tracks.inference`` process.

    Pass the same ``input_ids`` [batch, seq_len] for a baseline and its compressed models (their
    tokenizers are the same, but this makes it certain). Returns the child's dict (see the module
    docstring); raises :class:`~llmc_slm.tracks.child.ChildError` (a RuntimeError) if it fails.
    """
    args = ["--checkpoint", checkpoint, "--threads", threads, "--batch", batch, "--seq-len", seq_len,
            "--warmup", warmup, "--runs", runs, "--decode-tokens", decode_tokens, "--decode-runs", decode_runs,
            "--last-logit-runs", last_logit_runs, "--dtype", dtype, "--device", device, "--backend", backend,
            "--unpack", unpack, "--long-context", long_context]
    if not macs:
        args.append("--no-macs")
    if data_path:
        args += ["--data-path", data_path]
    return run_module("llmc_slm.tracks.inference", args, threads=threads, input_ids=input_ids,
                      input_source=input_source, timeout=timeout, nice=nice, env=env,
                      what=f"Track 2 child on {checkpoint}")


def save_baseline_checkpoint(model, tokenizer, out: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Save a float model as the Track 2 baseline: an ordinary HF checkpoint in ``dtype`` (default
    bfloat16, the CPU's half type; the paper's baseline is FP16 on a GPU). The model is not modified."""
    import copy
    from llmc.utils import atomic_dir
    out = Path(out)
    clone = copy.deepcopy(model).to(dtype)
    with atomic_dir(out) as tmp:
        clone.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out


def ensure_baseline_checkpoint(model_path: str, out: Optional[str | Path] = None, dtype: str = "bfloat16",
                               seed: int = 42) -> Path:
    """The float baseline of ``model.path`` as a ``dtype`` HF checkpoint, made once (cached under
    ``$SLMQUANT_CACHE/track2``) by loading the model the way the pipeline does."""
    from llmc.models.loading import load_model, resolve_model_source
    from llmc.utils import cache_root
    source = resolve_model_source(model_path)
    if out is None:
        key = re.sub(r"[^\w.-]+", "_", f"{source.name}-{source.pinned_sha256 or source.kind}-{dtype}-seed{seed}")
        out = cache_root() / "track2" / key
    out = Path(out)
    if (out / "config.json").is_file():
        return out
    adapter = load_model(source, dtype=getattr(torch, dtype), seed=seed)
    return save_baseline_checkpoint(adapter.model, adapter.tokenizer, out, getattr(torch, dtype))


def track2_for_run(packed_dir: str | Path, model_path: str, *, dtype: str = "bfloat16", seed: int = 42,
                   data_path: Optional[str] = None, baseline_dir: Optional[str | Path] = None,
                   **opts) -> InferenceSection:
    """Track 2 of one quantization run, the ``inference`` section of its results record: the packed
    checkpoint and the float baseline of ``model_path`` (a ``dtype`` HF checkpoint made once and cached,
    see :func:`ensure_baseline_checkpoint`), each measured in a fresh process on the same WikiText-2 input,
    and the SLMQ_infer variants. ``opts`` go to :func:`profile_inference` (threads, runs, ...)."""
    base_dir = Path(baseline_dir) if baseline_dir else ensure_baseline_checkpoint(model_path, dtype=dtype, seed=seed)
    tokenizer = load_tokenizer(base_dir)
    vocab = json.loads((base_dir / "config.json").read_text()).get("vocab_size")
    ids, info = fixed_input_ids(tokenizer, opts.get("seq_len", DEFAULTS["seq_len"]),
                                opts.get("batch", DEFAULTS["batch"]), data_path, vocab_size=vocab)
    opts = {**opts, "input_ids": ids, "input_source": info["source"], "dtype": dtype}
    baseline = profile_inference(base_dir, **opts)
    compressed = profile_inference(packed_dir, **opts)
    return InferenceSection(
        baseline=baseline, compressed=compressed, scores=infer_scores(baseline, compressed), input=info,
        protocol={k: opts.get(k, v) for k, v in DEFAULTS.items()},
        notes=["peak_mem: process peak RSS (CPU) or allocator peak (CUDA), see memory_kind",
               "measured score uses TPS and bytes; paper_compatible uses calflops MACs and parameter count"])


# --------------------------------------------------------------------------------------- scores
def infer_scores(baseline: dict, compressed: dict) -> dict:
    """The ``scores`` of a Track 2 section: every SLMQ_infer variant of a compressed model against its
    baseline (both dicts from :func:`profile_inference`; :func:`llmc_slm.scoring.infer_variants`: measured,
    paper_compatible, counted_macs), the peak memory's kind and a warning when the two were measured
    differently."""
    out = infer_variants(baseline, compressed)
    out["memory_kind"] = compressed.get("memory_kind")
    above = peak_above_idle(baseline), peak_above_idle(compressed)
    if all(v and v > 0 for v in above):
        out["peak_above_idle"] = {"baseline_bytes": above[0], "compressed_bytes": above[1],
                                  "ratio": above[0] / above[1]}
    if baseline.get("memory_kind") != compressed.get("memory_kind"):
        out["warning"] = "baseline and compressed peak memories were measured differently"
    return out


if __name__ == "__main__":
    sys.exit(main())
