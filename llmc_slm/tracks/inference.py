"""Track 2: inference performance of a stored model (protocol.md), measured in a fresh process.

    python -m llmc_slm.tracks.inference --checkpoint DIR [--threads 1] [--out result.json]

``DIR`` is either a packed real-quant checkpoint (``save.save_real``; loaded straight into an
integer-deployed model by :func:`llmc.deploy.load_deployed`) or an ordinary Hugging Face checkpoint (the
float baseline, e.g. saved in bfloat16 by :func:`save_baseline_checkpoint`). From Python,
:func:`profile_inference` spawns that command and returns its dict; :func:`infer_scores` turns a
baseline's and a compressed model's dicts into SLMQ_infer (measured and paper-compatible), and
:func:`track2_for_run` does all of it for one quantization run (its packed checkpoint against the float
baseline of its model, made once and cached).

What is measured (defaults = the protocol):

* ``tps``: prefill tokens per second: batch 1, sequence 128, a fixed input (the first 128 tokens of the
  WikiText-2 test text, tokenized by the checkpoint's tokenizer, or ids given by the caller so that the
  baseline and the compressed model read the same tokens), 10 warm-up then 100 timed forward passes
  (full logits, ``use_cache=False``): ``tps = batch * seq_len * runs / seconds``.
* ``decode_tps`` (extra): greedy decoding of ``decode_tokens`` (32) new tokens after a 128-token prefill
  with the KV cache, one warm-up then ``decode_runs`` (3) timed runs; only the decode steps are timed.
* ``prefill_last_logit_tps`` (extra): the same prefill computing the logits of the last position only
  (``logits_to_keep=1``, what ``generate`` does); lm_head, which stays in float, then costs ~nothing.
* ``peak_mem``: bytes. CPU: the process's peak resident set size during the inference passes (the
  kernel's ``VmHWM``, reset after loading by writing 5 to ``/proc/self/clear_refs``, after ``gc`` and
  ``malloc_trim`` so that freed loading buffers do not count): runtime + resident weights + activations.
  Weights are first copied out of the checkpoint's memory map (:func:`materialize_weights`) so that every
  checkpoint's weights are resident in the same way. ``peak_mem_process`` is the whole process's peak,
  loading included (``VmHWM`` before the reset); ``rss_before_load`` is the bare runtime's (Python, torch,
  transformers and the model's modeling code: ~0.4 GB here, common to every checkpoint) and
  ``peak_mem_above_runtime`` the difference. CUDA: the PyTorch allocator's peak
  (``max_memory_allocated``). ``memory_kind`` says which.
* ``size``: bytes of the stored checkpoint's ``*.safetensors`` files (packed integer codes, float32
  scales, uint8 zeros; embeddings and lm_head as int8 rows + float32 row scales by default
  (``save.real_embed_bit``), a tied lm_head once; norms in the dtype they were saved in); ``storage``
  breaks it down by role and dtype.
* ``macs``: multiply-accumulates of one forward pass at batch x seq_len: calflops 0.3.2's count
  (``macs_calflops``; it sees ``F.linear`` and ``torch.matmul`` but neither scaled-dot-product attention
  nor the integer kernels) + ``macs_attention`` (:data:`ATTENTION_MACS_FORMULA`) + ``macs_integer`` (the
  integer linears' in x out x tokens). ``params`` is calflops' parameter count (parameters with
  ``requires_grad``; the integer codes are buffers and are not counted): the paper's "Model Size".

Threads: ``torch.set_num_threads(threads)`` (default 1; on a loaded 2-core machine one thread was ~4x
faster than two) and ``OMP_NUM_THREADS`` in the child's environment; recorded as ``threads``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

DEFAULTS = {"batch": 1, "seq_len": 128, "warmup": 10, "runs": 100, "decode_tokens": 32, "decode_runs": 3,
            "last_logit_runs": 20, "threads": 1}
ATTENTION_MACS_FORMULA = ("per decoder layer 2 * num_attention_heads * seq_len^2 * head_dim * batch "
                          "(Q K^T and A V over the full seq_len x seq_len score matrix, which SDPA computes "
                          "with the causal mask applied); calflops 0.3.2 does not count SDPA")
RESULT_KEYS = ("peak_mem", "size", "tps", "macs", "params", "decode_tps")
PACKED_FORMAT = "slmquant-packed-v1"


# --------------------------------------------------------------------------------------- storage
def safetensors_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors file")
    return files


def read_safetensors_header(file: str | Path) -> tuple[dict, dict]:
    """(tensors {name: {dtype, shape, data_offsets}}, metadata) from a safetensors file's JSON header."""
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", None) or {}
    return header, meta


def checkpoint_size(path: str | Path) -> int:
    """Bytes of the checkpoint's ``*.safetensors`` files (headers included; tokenizer and config excluded)."""
    return sum(f.stat().st_size for f in safetensors_files(path))


def _role(name: str, quantized: set) -> str:
    for suffix, role in ((".qweight", "weight_codes"), (".scale", "weight_scales"), (".zero", "weight_zeros")):
        if name.endswith(suffix):
            return role
    if name.endswith(".bias") and name[:-5] in quantized:
        return "quantized_linear_bias"
    if "embed_tokens" in name:
        return "embeddings"
    if name.startswith("lm_head"):
        return "lm_head"
    if "norm" in name:
        return "norms"
    return "float_linears_and_other"


def storage_breakdown(path: str | Path) -> dict:
    """Bytes of the stored tensors by role and dtype (from the safetensors headers; no tensor is read)."""
    roles: dict = {}
    total = 0
    tied = None
    for file in safetensors_files(path):
        header, meta = read_safetensors_header(file)
        quantized = {k[: -len(".qweight")] for k in header if k.endswith(".qweight")}
        for name, info in header.items():
            start, end = info["data_offsets"]
            role = _role(name, quantized)
            entry = roles.setdefault(role, {"bytes": 0, "tensors": 0, "dtypes": {}})
            entry["bytes"] += end - start
            entry["tensors"] += 1
            entry["dtypes"][info["dtype"]] = entry["dtypes"].get(info["dtype"], 0) + end - start
            total += end - start
        if "config" in meta:
            tied = json.loads(meta["config"]).get("tie_word_embeddings")
    if tied is None:
        cfg = Path(path) / "config.json" if Path(path).is_dir() else None
        if cfg is not None and cfg.is_file():
            tied = json.loads(cfg.read_text()).get("tie_word_embeddings")
    return {"tensor_bytes": total, "roles": roles, "tied_embeddings": tied,
            "note": "lm_head is stored once with the embeddings when tied"}


def checkpoint_kind(path: str | Path) -> str:
    """``packed`` (slmquant packed real-quant) or ``hf`` (an ordinary Hugging Face checkpoint)."""
    path = Path(path)
    files = list(path.glob("*.safetensors"))
    if files:
        _, meta = read_safetensors_header(files[0])
        if meta.get("format") == PACKED_FORMAT:
            return "packed"
    if (path / "config.json").is_file():
        return "hf"
    raise ValueError(f"{path}: neither a packed slmquant checkpoint nor a Hugging Face checkpoint")


# ------------------------------------------------------------------------------------------- MACs
def attention_macs(config, seq_len: int = 128, batch: int = 1) -> int:
    """:data:`ATTENTION_MACS_FORMULA` for a Hugging Face config (GQA shares K/V heads but every query
    head computes its own scores, so the count uses ``num_attention_heads``)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(config.num_hidden_layers * 2 * heads * seq_len * seq_len * head_dim * batch)


def integer_linear_macs(model, tokens: int) -> int:
    """MACs of the integer GEMMs (``IntLinear`` of kind ``int``), which calflops cannot see."""
    from llmc.quant.int_linear import IntLinear
    return int(sum(tokens * m.in_features * m.out_features for m in model.modules()
                   if isinstance(m, IntLinear) and m.kind == "int"))


def count_macs(model, input_ids: torch.Tensor) -> dict:
    """calflops 0.3.2 on one forward pass, plus the attention and integer MACs it misses."""
    from calflops import calculate_flops
    batch, seq = input_ids.shape
    with torch.no_grad():
        flops, macs, params = calculate_flops(model=model, kwargs={"input_ids": input_ids}, print_results=False,
                                              print_detailed=False, output_as_string=False)
    att = attention_macs(model.config, seq, batch)
    integer = integer_linear_macs(model, batch * seq)
    return {"macs": int(macs) + att + integer, "macs_calflops": int(macs), "flops_calflops": int(flops),
            "params": int(params), "params_calflops": int(params), "macs_attention": att, "macs_integer": integer,
            "macs_formula": "macs = macs_calflops + macs_attention + macs_integer; " + ATTENTION_MACS_FORMULA}


# ----------------------------------------------------------------------------------------- inputs
def fixed_input_ids(tokenizer, seq_len: int = 128, batch: int = 1, data_path: Optional[str] = None,
                    require_data: bool = False, vocab_size: Optional[int] = None) -> tuple[torch.Tensor, dict]:
    """The first ``seq_len`` tokens of the WikiText-2 test text (rows joined with "\\n\\n", tokenized as
    the perplexity evaluation does), repeated ``batch`` times. Without the data (and ``require_data``
    False) seeded random ids are used instead, and the info says so."""
    from llmc.data.sources import find_dataset
    from llmc.data.wikitext2 import evaluation_text
    from llmc.errors import UserError
    try:
        if tokenizer is None:
            raise UserError("no tokenizer to tokenize WikiText-2 with")
        loc = find_dataset("wikitext2", data_path)
        text = evaluation_text(loc)
    except UserError as e:
        if require_data:
            raise
        g = torch.Generator().manual_seed(0)
        vocab = vocab_size or (len(tokenizer) if tokenizer is not None else 1000)
        ids = torch.randint(0, vocab, (1, seq_len), generator=g)
        return ids.repeat(batch, 1), {"source": f"random token ids (seed 0): {e}"}
    ids = tokenizer(text[:20000], return_tensors="pt").input_ids[0]   # a prefix: its first tokens are the text's
    if ids.numel() < seq_len + 64:
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if ids.numel() < seq_len:
        raise UserError(f"the tokenizer gives {ids.numel()} tokens for the WikiText-2 test text, fewer than {seq_len}")
    ids = ids[:seq_len].unsqueeze(0).repeat(batch, 1)
    return ids, {"source": f"WikiText-2 test text, first {seq_len} tokens", "data": loc.describe()}


# ------------------------------------------------------------------------------------- memory
def current_rss() -> int:
    from llmc.profiling import rss_bytes
    return rss_bytes()


def _status_kb(field: str) -> Optional[int]:
    try:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def release_free_memory() -> None:
    """gc, then hand freed heap memory back to the OS (glibc ``malloc_trim``) so that RSS is what is live."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``) of this process; False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


# ------------------------------------------------------------------------------------ measuring
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


def _cache_arg(model) -> str:
    """Name of the KV-cache argument: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    import inspect
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.no_grad()
def time_decode(model, ids: torch.Tensor, new_tokens: int, runs: int) -> float:
    """Seconds of the decode steps only (greedy, KV cache) over ``runs`` runs, after one warm-up run."""
    arg = _cache_arg(model)
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
    return total


def measure_model(model, ids: torch.Tensor, *, warmup: int = 10, runs: int = 100, decode_tokens: int = 32,
                  decode_runs: int = 3, last_logit_runs: int = 20, macs: bool = True) -> dict:
    """Time and memory of a loaded model, in this process (the fresh-process protocol is
    :func:`profile_inference`, whose child calls this right after loading)."""
    device = ids.device
    batch, seq = ids.shape
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start_mem, peak_ok, kind = torch.cuda.memory_allocated(device), True, "cuda_max_allocated"
    else:
        release_free_memory()
        start_mem = current_rss()
        hwm_before = _status_kb("VmHWM") or 0     # this process's peak so far (loading included)
        peak_ok = reset_peak_rss()
        kind = "cpu_peak_rss" if peak_ok else "cpu_rss_sampled"
        if not peak_ok:
            from llmc.profiling import Measure
            sampler = Measure("cpu", interval=0.005).__enter__()
    t_prefill = time_prefill(model, ids, warmup, runs)
    t_last = time_prefill(model, ids, min(warmup, 3), last_logit_runs, logits_to_keep=1) if last_logit_runs else 0.0
    t_decode = time_decode(model, ids, decode_tokens, decode_runs) if decode_tokens and decode_runs else 0.0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    elif peak_ok:
        peak = _status_kb("VmHWM")
    else:
        sampler.__exit__(None, None, None)
        peak = sampler.peak_bytes
    result = {
        "tps": batch * seq * runs / t_prefill,
        "decode_tps": (batch * decode_tokens * decode_runs / t_decode) if t_decode else None,
        "prefill_last_logit_tps": (batch * seq * last_logit_runs / t_last) if t_last else None,
        "peak_mem": int(peak), "memory_kind": kind, "mem_at_start": int(start_mem),
        "prefill_seconds": t_prefill, "decode_seconds": t_decode,
        "batch": batch, "seq_len": seq, "warmup": warmup, "runs": runs, "decode_tokens": decode_tokens,
        "decode_runs": decode_runs, "last_logit_runs": last_logit_runs,
        "threads": torch.get_num_threads(), "device": str(device),
    }
    if device.type == "cpu":
        # VmHWM before the reset, not ru_maxrss: Linux carries a parent's ru_maxrss into a forked child
        result["peak_mem_process"] = max(hwm_before, result["peak_mem"])
        result["memory_detail"] = ("peak RSS (VmHWM) from the start of inference, after loading, gc and "
                                   "malloc_trim" if peak_ok else "RSS sampled every 5 ms during inference")
    if macs:
        result.update(count_macs(model, ids))
    return result


# ------------------------------------------------------------------------------------- loading
def load_for_inference(path: str | Path, *, dtype: str = "bfloat16", device: str = "cpu", backend: str = "auto",
                       unpack: str = "load"):
    """(model, tokenizer or None, info) for a packed or Hugging Face checkpoint."""
    from transformers import AutoModelForCausalLM
    path = Path(path)
    kind = checkpoint_kind(path)
    info = {"checkpoint": str(path.resolve()), "checkpoint_kind": kind}
    if kind == "packed":
        from llmc.deploy import deployment_summary, load_deployed, to_compute_dtype
        model = load_deployed(path, unpack=unpack, backend=backend, device=device)
        stored = next(model.get_input_embeddings().parameters()).dtype
        if dtype not in (None, "stored") and getattr(torch, dtype) != stored:
            to_compute_dtype(model, getattr(torch, dtype))
        info["deployment"] = deployment_summary(model)
        info["stored_float_dtype"] = str(stored).replace("torch.", "")
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).to(device)
    model.eval()
    info["weights_copied"] = materialize_weights(model)
    info["compute_dtype"] = str(next(model.get_input_embeddings().parameters()).dtype).replace("torch.", "")
    return model, load_tokenizer(path), info


def load_tokenizer(path: str | Path):
    """The checkpoint's tokenizer, or None when it has no tokenizer files (transformers 5 would build an
    empty one from the config alone)."""
    from transformers import AutoTokenizer
    path = Path(path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError):
        return None


def materialize_weights(model) -> int:
    """Give every parameter and buffer its own memory (a copy) so that no tensor is a view of the
    checkpoint's memory-mapped file: the mapping is released and the model's weights are resident in
    anonymous memory, the same way for every checkpoint (a mapped file would otherwise keep the pages
    read while loading resident, e.g. a packed file's codes after their unpacking, and leave untouched
    weights out). Tied weights stay tied. Returns the bytes copied."""
    copied = 0
    seen = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                p.data = p.data.clone()
                copied += p.numel() * p.element_size()
        for name, b in list(module._buffers.items()):
            if b is not None and id(b) not in seen and not b.is_mkldnn:
                seen.add(id(b))
                module._buffers[name] = b.clone()
                copied += b.numel() * b.element_size()
    return copied


def _warm_runtime(path) -> None:
    """Import what loading will import (transformers, the model's modeling code, built once on the meta
    device) so that ``rss_before_load`` is the runtime's footprint, common to every checkpoint."""
    from transformers import AutoConfig, AutoModelForCausalLM
    try:
        if checkpoint_kind(path) == "packed":
            _, meta = read_safetensors_header(safetensors_files(path)[0])
            config = AutoConfig.for_model(**json.loads(meta["config"]))
        else:
            config = AutoConfig.from_pretrained(str(path))
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config)
        import llmc.deploy  # noqa: F401
    except Exception:  # noqa: BLE001 - only a warm-up
        pass


def run_child(args: argparse.Namespace) -> dict:
    """The fresh process: load, measure, report."""
    torch.set_num_threads(args.threads)
    from llmc.quant.int_linear import int_mm_info
    _warm_runtime(args.checkpoint)
    release_free_memory()
    rss_runtime = current_rss()
    t0 = time.perf_counter()
    model, tokenizer, info = load_for_inference(args.checkpoint, dtype=args.dtype, device=args.device,
                                                backend=args.backend, unpack=args.unpack)
    info["load_seconds"] = time.perf_counter() - t0
    if args.ids_file:
        ids = torch.tensor(json.loads(Path(args.ids_file).read_text())["input_ids"], dtype=torch.long)
        info["input"] = {"source": json.loads(Path(args.ids_file).read_text()).get("source", "given by the caller")}
    else:
        ids, info["input"] = fixed_input_ids(tokenizer, args.seq_len, args.batch, args.data_path,
                                             vocab_size=model.config.vocab_size)
    ids = ids.to(args.device)
    result = measure_model(model, ids, warmup=args.warmup, runs=args.runs, decode_tokens=args.decode_tokens,
                           decode_runs=args.decode_runs, last_logit_runs=args.last_logit_runs,
                           macs=not args.no_macs)
    result["rss_before_load"] = rss_runtime
    result["peak_mem_above_runtime"] = result["peak_mem"] - rss_runtime if args.device == "cpu" else None
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
    return p


def emit_json(result: dict, out: Optional[str]) -> None:
    """A child's result: written to ``out`` or printed."""
    text = json.dumps(result, indent=2, default=str)
    if out:
        Path(out).write_text(text)
    else:
        print(text)


def child_env(threads: int, extra: Optional[dict] = None) -> dict:
    """Environment of a measuring child process: its thread count, offline hub, no progress bars, and this
    project importable."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1",
                "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1")})
    env.update(extra or {})
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    emit_json(run_child(args), args.out)
    return 0


# ----------------------------------------------------------------------------------- parent API
def profile_inference(checkpoint: str | Path, *, threads: int = DEFAULTS["threads"], batch: int = DEFAULTS["batch"],
                      seq_len: int = DEFAULTS["seq_len"], warmup: int = DEFAULTS["warmup"],
                      runs: int = DEFAULTS["runs"], decode_tokens: int = DEFAULTS["decode_tokens"],
                      decode_runs: int = DEFAULTS["decode_runs"], last_logit_runs: int = DEFAULTS["last_logit_runs"],
                      input_ids: Optional[torch.Tensor] = None, input_source: str = "given by the caller",
                      dtype: str = "bfloat16", device: str = "cpu", backend: str = "auto", unpack: str = "load",
                      macs: bool = True, data_path: Optional[str] = None, timeout: Optional[float] = 3600,
                      nice: int = 0, env: Optional[dict] = None) -> dict:
    """Track 2 of one checkpoint, measured in a fresh ``python -m llmc_slm.tracks.inference`` process.

    Pass the same ``input_ids`` [batch, seq_len] for a baseline and its compressed models (their
    tokenizers are the same, but this makes it certain). Returns the child's dict (see the module
    docstring); raises RuntimeError with the child's error output if it fails.
    """
    with tempfile.TemporaryDirectory(prefix="slmq_track2_") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "llmc_slm.tracks.inference", "--checkpoint", str(checkpoint), "--out", str(out),
               "--threads", str(threads), "--batch", str(batch), "--seq-len", str(seq_len), "--warmup", str(warmup),
               "--runs", str(runs), "--decode-tokens", str(decode_tokens), "--decode-runs", str(decode_runs),
               "--last-logit-runs", str(last_logit_runs), "--dtype", dtype, "--device", device,
               "--backend", backend, "--unpack", unpack]
        if not macs:
            cmd.append("--no-macs")
        if data_path:
            cmd += ["--data-path", str(data_path)]
        if input_ids is not None:
            ids_file = Path(tmp) / "ids.json"
            ids_file.write_text(json.dumps({"input_ids": input_ids.tolist(), "source": input_source}))
            cmd += ["--ids-file", str(ids_file)]
        if nice:
            cmd = ["nice", "-n", str(nice)] + cmd
        proc = subprocess.run(cmd, env=child_env(threads, env), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"Track 2 child failed ({proc.returncode}) on {checkpoint}:\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text())


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
    ``$SLMQUANT_CACHE/track2``) by loading the model the way the runner does."""
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
                   data_path: Optional[str] = None, baseline_dir: Optional[str | Path] = None, **opts) -> dict:
    """Track 2 of one quantization run, for its results record (``record.data["inference"]``): the packed
    checkpoint and the float baseline of ``model_path`` (a ``dtype`` HF checkpoint made once and cached,
    see :func:`ensure_baseline_checkpoint`), each measured in a fresh process on the same WikiText-2 input,
    and both SLMQ_infer variants. ``opts`` go to :func:`profile_inference` (threads, runs, ...)."""
    base_dir = Path(baseline_dir) if baseline_dir else ensure_baseline_checkpoint(model_path, dtype=dtype, seed=seed)
    tokenizer = load_tokenizer(base_dir)
    vocab = json.loads((base_dir / "config.json").read_text()).get("vocab_size")
    ids, info = fixed_input_ids(tokenizer, opts.get("seq_len", DEFAULTS["seq_len"]),
                                opts.get("batch", DEFAULTS["batch"]), data_path, vocab_size=vocab)
    opts = {**opts, "input_ids": ids, "input_source": info["source"], "dtype": dtype}
    baseline = profile_inference(base_dir, **opts)
    compressed = profile_inference(packed_dir, **opts)
    return {"baseline": baseline, "compressed": compressed, "scores": infer_scores(baseline, compressed),
            "input": info, "protocol": {k: opts.get(k, v) for k, v in DEFAULTS.items()},
            "notes": ["peak_mem: process peak RSS (CPU) or allocator peak (CUDA), see memory_kind",
                      "measured score uses TPS and bytes; paper_compatible uses calflops MACs and parameter count"]}


# --------------------------------------------------------------------------------------- scores
def infer_scores(baseline: dict, compressed: dict) -> dict:
    """SLMQ_infer of a compressed model against its baseline (both dicts from :func:`profile_inference`).

    ``measured``: the protocol's score, ``peak_mem`` and ``size`` in bytes and the measured prefill TPS.
    ``paper_compatible``: the variant that reproduces the paper's Table 3: calflops' MACs in place of TPS
    and calflops' parameter count as the size ("Model Size"); calflops sees neither attention nor integer
    kernels, so for a deployed model its MACs are essentially lm_head's (the paper's 3.64G / 17.43G).
    ``counted_macs``: MACs counted completely (attention and integer GEMMs included) with the byte size:
    quantization does not change the number of MACs, so that ratio is ~1.
    """
    from llmc_slm.scoring import infer_ratios, slmq_infer

    def pick(d, size_key, speed_key, speed_name):
        return {"peak_mem": d["peak_mem"], "size": d[size_key], speed_name: d[speed_key]}

    variants = {"measured": ("size", "tps", "tps"), "paper_compatible": ("params_calflops", "macs_calflops", "macs"),
                "counted_macs": ("size", "macs", "macs")}
    out = {}
    for name, (size_key, speed_key, speed) in variants.items():
        if size_key not in baseline or speed_key not in baseline or size_key not in compressed \
                or speed_key not in compressed:
            continue
        b, c = pick(baseline, size_key, speed_key, speed), pick(compressed, size_key, speed_key, speed)
        out[name] = {"slmq_infer": slmq_infer(b, c, speed=speed), "ratios": infer_ratios(b, c, speed=speed),
                     "inputs": {"size": size_key, "speed": speed_key}}
    out["memory_kind"] = compressed.get("memory_kind")
    if baseline.get("memory_kind") != compressed.get("memory_kind"):
        out["warning"] = "baseline and compressed peak memories were measured differently"
    return out


if __name__ == "__main__":
    sys.exit(main())
