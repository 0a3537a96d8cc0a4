"""Track 2 of a GGUF file inside llama.cpp (through llama-cpp-python), in the measuring child.

:func:`measure` keeps the runtimes' contract (``llmc_slm.tracks.runtimes``). How each figure is taken:

* the model is loaded with ``use_mmap=False`` so that its weights are resident in anonymous memory, as the
  torch child's are (``materialize_weights``); a memory-mapped file would count the same pages, but a
  repacking CPU buffer would then leave the mapped originals resident beside the repacked copies;
* ``idle_rss_bytes`` after ``import llama_cpp`` (the library and its ggml CPU backend loaded), before the
  model; the peak during prefill and decode (:class:`llmc_slm.tracks.memory.Footprint`);
* prefill: the 128 prompt tokens decoded from an empty cache in one batch (``Llama.eval``; the cache is
  cleared before each run), logits of the last position only; ``warmup`` untimed runs, then ``runs``;
* decode: greedy, one token at a time with the KV cache, ``decode_tokens`` steps after an untimed prefill,
  then ``decode_runs`` timed runs; the argmax is taken from ``llama_get_logits_ith(ctx, -1)``;
* perplexity: a second context with ``logits_all=True`` and ``n_ctx`` = the window, each window decoded
  from an empty cache in one batch; the NLL of every token but the first is computed here from the logits
  llama.cpp returns (log-softmax in float64), summed over windows: ``exp(total NLL / predicted tokens)``,
  the protocol's convention (llama.cpp's own ``llama-perplexity`` scores only each window's second half,
  so its figure is not the same quantity). It is measured after the speed and memory, outside the peak.

``extra_bufts`` (llama-cpp-python's ``use_extra_bufts``: ggml's CPU "extra" buffer types, which repack
Q4_0 / Q8_0 weights for wider SIMD kernels or AMX): None keeps the library's default. On an AMX VM a llama.cpp
built natively (with AMX) died with "Illegal instruction" on every quantized model, with the extra buffers on
or off (issue 19); built without AMX (``make llamacpp``) the default works there.
"""

from __future__ import annotations

import inspect
import math
import os
import time
from pathlib import Path
from typing import Optional

from ..memory import Footprint, release_free_memory

GGUF_NAME = "model.gguf"


def gguf_path(artifact: str | Path) -> Path:
    """The GGUF file of an artifact: the file itself, or ``model.gguf`` (or the only ``*.gguf``) in a folder."""
    from llmc.errors import UserError
    path = Path(artifact)
    if path.is_dir():
        files = [path / GGUF_NAME] if (path / GGUF_NAME).is_file() else sorted(path.glob("*.gguf"))
        if len(files) != 1:
            raise UserError(f"{path}: expected one .gguf file there, found {len(files)}")
        path = files[0]
    if not path.is_file():
        raise UserError(f"{path}: no such GGUF file")
    return path


def _load(path: Path, *, threads: int, n_ctx: int, n_batch: int, logits_all: bool, extra_bufts: Optional[bool]):
    from llama_cpp import Llama
    kwargs = dict(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_threads=threads, n_threads_batch=threads,
                  logits_all=logits_all, use_mmap=False, verbose=False)
    params = inspect.signature(Llama.__init__).parameters
    if "n_ubatch" in params:
        kwargs["n_ubatch"] = n_batch
    if extra_bufts is not None and "use_extra_bufts" in params:
        kwargs["use_extra_bufts"] = extra_bufts
    return Llama(**kwargs)


def _last_logits(llm):
    import llama_cpp
    import numpy as np
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def time_prefill(llm, ids: list, warmup: int, runs: int) -> float:
    total = 0.0
    for r in range(warmup + runs):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        if r >= warmup:
            total += time.perf_counter() - t0
    return total


def time_decode(llm, ids: list, new_tokens: int, runs: int) -> float:
    total = 0.0
    for r in range(runs + 1):
        llm.reset()
        llm.eval(ids)
        nxt = int(_last_logits(llm).argmax())
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([nxt])
            nxt = int(_last_logits(llm).argmax())
        if r:
            total += time.perf_counter() - t0
    return total


def window_nll(logits, window: list) -> tuple[float, int]:
    """(summed NLL of tokens 1.. of ``window`` given their prefixes, their count) from [len, vocab] logits."""
    import numpy as np
    x = np.asarray(logits[: len(window) - 1], dtype=np.float64)
    top = x.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(x - top).sum(axis=1))
    target = np.asarray(window[1:], dtype=np.int64)
    return float((lse - x[np.arange(len(target)), target]).sum()), int(len(target))


def perplexity(path: Path, windows: list, *, threads: int, extra_bufts: Optional[bool] = None) -> dict:
    """WikiText-2 perplexity of the GGUF over ``windows`` (module docstring)."""
    n = max(len(w) for w in windows)
    llm = _load(path, threads=threads, n_ctx=n, n_batch=n, logits_all=True, extra_bufts=extra_bufts)
    total, count, per_window = 0.0, 0, []
    t0 = time.perf_counter()
    for w in windows:
        llm.reset()
        llm.eval(list(w))
        nll, k = window_nll(llm.scores, w)
        total += nll
        count += k
        per_window.append(nll / k)
    seconds = time.perf_counter() - t0
    del llm
    release_free_memory()
    return {"wikitext2_ppl": math.exp(total / count), "ppl_windows": len(windows), "ppl_tokens": count,
            "ppl_window_mean_nll": per_window, "ppl_seconds": seconds,
            "ppl_method": "NLL of every token but each window's first, from llama.cpp's logits (logits_all), "
                          "log-softmax in float64 here"}


def measure(artifact, *, threads: int, prefill_ids, decode_tokens: int, ppl_windows=None, warmup: int = 3,
            runs: int = 10, decode_runs: int = 2, extra_bufts: Optional[bool] = None) -> dict:
    """Track 2 of a GGUF in llama.cpp (the runtimes' contract; module docstring)."""
    path = gguf_path(artifact)
    import llama_cpp
    probe = Footprint()
    probe.idle()
    ids = [int(t) for t in (prefill_ids[0] if isinstance(prefill_ids[0], (list, tuple)) else prefill_ids)]
    n_ctx = max(256, -(-(len(ids) + decode_tokens + 1) // 256) * 256)
    t0 = time.perf_counter()
    llm = _load(path, threads=threads, n_ctx=n_ctx, n_batch=max(len(ids), 32), logits_all=False,
                extra_bufts=extra_bufts)
    load_seconds = time.perf_counter() - t0
    with probe.inference():
        t_prefill = time_prefill(llm, ids, warmup, runs)
        t_decode = time_decode(llm, ids, decode_tokens, decode_runs) if decode_tokens and decode_runs else 0.0
    del llm
    release_free_memory()
    mem = probe.as_dict()
    result = {
        "runtime": "llamacpp", "artifact": str(path), "stored_bytes": path.stat().st_size,
        "idle_rss_bytes": mem["idle_rss_bytes"], "peak_rss_bytes": mem["peak_rss_bytes"],
        "peak_above_idle_bytes": mem["peak_above_idle_bytes"], "peak_process_bytes": mem["peak_process_bytes"],
        "memory_kind": mem["memory_kind"],
        "prefill_tokens_per_s": len(ids) * runs / t_prefill,
        "decode_tokens_per_s": decode_tokens * decode_runs / t_decode if t_decode else None,
        "wikitext2_ppl": None, "ppl_windows": 0, "threads": threads,
        "prefill_tokens": len(ids), "warmup": warmup, "runs": runs, "decode_tokens": decode_tokens,
        "decode_runs": decode_runs, "load_seconds": load_seconds, "n_ctx": n_ctx,
        "prefill_logits": "last position only", "use_mmap": False,
        "extra_bufts": "library default" if extra_bufts is None else extra_bufts,
        "llama_cpp_python": getattr(llama_cpp, "__version__", "unknown"),
        "system_info": _system_info(llama_cpp), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    if ppl_windows:
        result.update(perplexity(path, ppl_windows, threads=threads, extra_bufts=extra_bufts))
    return result


def _system_info(llama_cpp) -> str:
    try:
        info = llama_cpp.llama_print_system_info()
        return (info.decode() if isinstance(info, bytes) else str(info)).strip()
    except Exception:  # noqa: BLE001 - informative only
        return "unknown"
