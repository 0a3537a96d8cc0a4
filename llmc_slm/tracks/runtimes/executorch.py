"""Track 2 inside ExecuTorch: an ExecuTorch program (``.pte``, ``llmc.export.executorch``) measured in a fresh
process with ``executorch.runtime`` (XNNPACK delegate).

    python -m llmc_slm.tracks.runtimes --runtime executorch --artifact DIR_OR_PTE --ids-file IDS \
        [--ppl-file WINDOWS] [--threads 1] [--decode-tokens 32] [--options '{"runs": 10}'] --out result.json

From Python, ``llmc_slm.tracks.runtimes.measure_in_child("executorch", ...)`` runs it in a fresh process
(one per measurement, so its peak resident memory is this runtime's own) and returns :func:`measure`'s dict:

* ``stored_bytes``: bytes of the ``.pte`` file (integer weights, their scales, float embeddings/lm_head,
  the delegate's graph);
* memory (:class:`llmc_slm.tracks.memory.Footprint`, as the llama.cpp child): ``idle_rss_bytes`` after
  importing torch and ``executorch.runtime`` and starting the runtime, before the program loads;
  ``peak_rss_bytes`` the peak during prefill and decode (reset after loading); ``peak_above_idle_bytes`` the
  difference; ``peak_process_bytes`` the whole process's, loading included. The peak of the perplexity
  windows (up to ``max_seq_len`` tokens: the planned activation arena of the longest shape) is reported
  apart, ``peak_rss_with_ppl_bytes``;
* ``prefill_tokens_per_s``: batch 1 x ``len(prefill_ids)`` (the protocol's 128 WikiText-2 tokens), all
  positions' logits (the program has one method for prefill, decode and perplexity, so unlike llama.cpp's
  last-position prefill it computes the head at every position: ``prefill_logits`` says so), ``warmup`` (10) untimed then ``runs`` (100) timed calls at cache positions 0..T-1;
* ``decode_tokens_per_s``: after a prefill, ``decode_tokens`` greedy steps of one token each through the
  program's KV cache, one untimed then ``decode_runs`` (3) timed runs, only the steps timed;
* ``wikitext2_ppl``: each window ([L] ids, L <= the program's ``max_seq_len``) run as one call at positions
  0..L-1; NLL of tokens 2..L given the logits before them, ``exp(total NLL / total predicted tokens)``:
  the convention of ``llmc.eval.perplexity`` (``seq_len - 1`` predictions per window).

Threads: ``threads`` is the size of ExecuTorch's thread pool (``_unsafe_reset_threadpool``, which XNNPACK
uses) and ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` in the child.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

RUNTIME = "executorch"


# ------------------------------------------------------------------------------------------ measure
def _program_path(artifact) -> Path:
    path = Path(artifact)
    return path / "model.pte" if path.is_dir() else path


def _max_seq_len(pte: Path) -> Optional[int]:
    info = pte.parent / "executorch.json"
    try:
        return int(json.loads(info.read_text())["max_seq_len"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def measure(artifact, *, threads: int, prefill_ids, decode_tokens: int, ppl_windows=None, warmup: int = 10,
            runs: int = 100, decode_runs: int = 3) -> dict:
    """Track 2 of the program in ``artifact`` (a ``.pte`` or the exporter's folder) in this process (the
    fresh-process protocol is :func:`profile`). ``prefill_ids``: [1, T] or [T] ids; ``ppl_windows``:
    [n, L] ids or None."""
    import torch
    torch.set_num_threads(threads)
    from executorch.extension.pybindings import portable_lib

    from llmc.utils import package_version
    from executorch.runtime import Runtime

    from ..memory import Footprint
    portable_lib._unsafe_reset_threadpool(threads)
    runtime = Runtime.get()
    pte = _program_path(artifact)
    ids = torch.as_tensor(prefill_ids, dtype=torch.long).reshape(1, -1)
    seq = ids.shape[1]
    longest = max([seq + decode_tokens] + [len(w) for w in (ppl_windows if ppl_windows is not None else [])])
    max_seq_len = _max_seq_len(pte)
    if max_seq_len is not None and longest > max_seq_len:
        raise ValueError(f"{pte}: its max_seq_len is {max_seq_len}, but this measurement needs {longest} positions "
                         f"(prefill {seq} + decode {decode_tokens}, or a perplexity window): export it longer")
    probe = Footprint()
    probe.idle()

    t0 = time.perf_counter()
    method = runtime.load_program(pte).load_method("forward")
    load_s = time.perf_counter() - t0
    pos = torch.arange(seq, dtype=torch.long)

    with probe.inference():
        for _ in range(warmup):
            method.execute((ids, pos))
        t0 = time.perf_counter()
        for _ in range(runs):
            logits = method.execute((ids, pos))[0]
        prefill_s = time.perf_counter() - t0

        decode_s, steps = 0.0, 0
        for r in range(decode_runs + 1):
            logits = method.execute((ids, pos))[0]
            nxt = logits[:, -1].argmax(-1).reshape(1, 1)
            t0 = time.perf_counter()
            for i in range(decode_tokens):
                logits = method.execute((nxt, torch.tensor([seq + i], dtype=torch.long)))[0]
                nxt = logits[:, -1].argmax(-1).reshape(1, 1)
            if r:
                decode_s += time.perf_counter() - t0
                steps += decode_tokens
    mem = probe.as_dict()

    result = {
        "runtime": RUNTIME, "artifact": str(pte.resolve()), "stored_bytes": pte.stat().st_size,
        **mem,
        "prefill_tokens_per_s": seq * runs / prefill_s, "prefill_logits": "every position",
        "decode_tokens_per_s": (steps / decode_s) if decode_s else None,
        "wikitext2_ppl": None, "ppl_windows": 0, "threads": threads,
        "prefill": {"tokens": seq, "warmup": warmup, "runs": runs, "seconds": prefill_s},
        "decode": {"tokens": decode_tokens, "runs": decode_runs, "seconds": decode_s},
        "load_seconds": load_s, "max_seq_len": max_seq_len, "executorch": package_version("executorch"),
    }
    if ppl_windows is not None:
        from ..memory import peak_rss_bytes
        result.update(_perplexity(method, torch.as_tensor(ppl_windows, dtype=torch.long)))
        result["peak_rss_with_ppl_bytes"] = peak_rss_bytes()
    return result


def _perplexity(method, windows) -> dict:
    import torch
    import torch.nn.functional as F
    if windows.dim() == 1:
        windows = windows[None]
    total, count, per_window = 0.0, 0, []
    t0 = time.perf_counter()
    for w in windows:
        w = w.reshape(1, -1)
        logits = method.execute((w, torch.arange(w.shape[1], dtype=torch.long)))[0]
        nll = F.cross_entropy(logits[0, :-1].float(), w[0, 1:], reduction="sum").item()
        per_window.append(nll)
        total += nll
        count += w.shape[1] - 1
    mean = total / count
    return {"wikitext2_ppl": math.exp(mean) if mean < 700 else float("inf"), "ppl_windows": int(windows.shape[0]),
            "ppl_window_len": int(windows.shape[1]), "ppl_nll": mean, "ppl_window_nll": per_window,
            "ppl_seconds": time.perf_counter() - t0}
