"""Track 2 inside ExecuTorch: an ExecuTorch program (``.pte``, ``llmc.export.executorch``) measured in a fresh
process with ``executorch.runtime`` (XNNPACK delegate).

    python -m llmc_slm.tracks.runtimes.executorch --artifact DIR_OR_PTE --ids-file IDS [--ppl-file WINDOWS]
                                                  [--threads 1] [--decode-tokens 32] --out result.json

From Python, :func:`profile` runs that child (``llmc_slm.tracks.child.run_module``: one process per
measurement, so its peak resident memory is this runtime's own) and returns :func:`measure`'s dict:

* ``stored_bytes``: bytes of the ``.pte`` file (integer weights, their scales, float embeddings/lm_head,
  the delegate's graph);
* ``idle_rss_bytes``: resident memory after importing torch and ``executorch.runtime`` and starting the
  runtime, before the program loads; ``peak_rss_bytes``: the process's peak (``VmHWM``, reset after the
  idle reading) over loading, prefill and decode; ``peak_above_idle_bytes`` the difference. The peak of the
  perplexity windows (up to ``max_seq_len`` tokens: the planned activation arena of the longest shape) is
  reported apart, ``peak_rss_with_ppl_bytes``;
* ``prefill_tokens_per_s``: batch 1 x ``len(prefill_ids)`` (the protocol's 128 WikiText-2 tokens), all
  positions' logits, ``warmup`` (10) untimed then ``runs`` (100) timed calls at cache positions 0..T-1;
* ``decode_tokens_per_s``: after a prefill, ``decode_tokens`` greedy steps of one token each through the
  program's KV cache, one untimed then ``decode_runs`` (3) timed runs, only the steps timed;
* ``wikitext2_ppl``: each window ([L] ids, L <= the program's ``max_seq_len``) run as one call at positions
  0..L-1; NLL of tokens 2..L given the logits before them, ``exp(total NLL / total predicted tokens)``:
  the convention of ``llmc.eval.perplexity`` (``seq_len - 1`` predictions per window).

Threads: ``threads`` is the size of ExecuTorch's thread pool (``_unsafe_reset_threadpool``, which XNNPACK
uses) and ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` in the child.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

RUNTIME = "executorch"


# ---------------------------------------------------------------- memory (private; the shared helper at merge)
def _status_kb(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _release() -> None:
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


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
    from executorch.runtime import Runtime
    portable_lib._unsafe_reset_threadpool(threads)
    runtime = Runtime.get()
    pte = _program_path(artifact)
    _release()
    idle = _status_kb("VmRSS")
    _reset_peak()

    t0 = time.perf_counter()
    method = runtime.load_program(pte).load_method("forward")
    load_s = time.perf_counter() - t0
    ids = torch.as_tensor(prefill_ids, dtype=torch.long).reshape(1, -1)
    seq = ids.shape[1]
    pos = torch.arange(seq, dtype=torch.long)

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
    peak = _status_kb("VmHWM")

    result = {
        "runtime": RUNTIME, "artifact": str(pte.resolve()), "stored_bytes": pte.stat().st_size,
        "idle_rss_bytes": idle, "peak_rss_bytes": peak,
        "peak_above_idle_bytes": (peak - idle) if peak is not None and idle is not None else None,
        "prefill_tokens_per_s": seq * runs / prefill_s,
        "decode_tokens_per_s": (steps / decode_s) if decode_s else None,
        "wikitext2_ppl": None, "ppl_windows": 0, "threads": threads,
        "prefill": {"tokens": seq, "warmup": warmup, "runs": runs, "seconds": prefill_s},
        "decode": {"tokens": decode_tokens, "runs": decode_runs, "seconds": decode_s},
        "load_seconds": load_s, "max_seq_len": _max_seq_len(pte),
        "memory_kind": "process peak RSS (VmHWM) from loading on, minus the RSS after imports",
    }
    if ppl_windows is not None:
        result.update(_perplexity(method, torch.as_tensor(ppl_windows, dtype=torch.long)))
        result["peak_rss_with_ppl_bytes"] = _status_kb("VmHWM")
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


# ------------------------------------------------------------------------------------------ the child
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llmc_slm.tracks.runtimes.executorch",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", required=True, help="a .pte file or the exporter's folder")
    p.add_argument("--ids-file", required=True, help="JSON {input_ids: [[...]]}: the prefill input")
    p.add_argument("--ppl-file", help="JSON {windows: [[...], ...]}: perplexity windows")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--decode-runs", type=int, default=3)
    p.add_argument("--out", help="write the result JSON here (default: print it)")
    return p


def main(argv=None) -> int:
    from llmc_slm.tracks.child import emit_json, read_ids_file
    args = _parser().parse_args(argv)
    ids, source = read_ids_file(args.ids_file)
    windows = json.loads(Path(args.ppl_file).read_text())["windows"] if args.ppl_file else None
    result = measure(args.artifact, threads=args.threads, prefill_ids=ids, decode_tokens=args.decode_tokens,
                     ppl_windows=windows, warmup=args.warmup, runs=args.runs, decode_runs=args.decode_runs)
    result["input"] = source
    result["environment"] = {"python": sys.version.split()[0], "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                             "executorch": _version("executorch")}
    emit_json(result, args.out)
    return 0


def _version(pkg: str) -> Optional[str]:
    from importlib import metadata
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def profile(artifact, *, threads: int, prefill_ids, decode_tokens: int = 32, ppl_windows=None,
            input_source: str = "given by the caller", timeout: Optional[float] = 3600, nice: int = 0,
            extra_args: Sequence = ()) -> dict:
    """:func:`measure` in a fresh ``python -m llmc_slm.tracks.runtimes.executorch`` process."""
    import tempfile

    import torch

    from llmc_slm.tracks.child import run_module
    args = ["--artifact", artifact, "--threads", threads, "--decode-tokens", decode_tokens, *extra_args]
    with tempfile.TemporaryDirectory(prefix="slmq_et_") as tmp:
        if ppl_windows is not None:
            ppl_file = Path(tmp) / "windows.json"
            ppl_file.write_text(json.dumps({"windows": torch.as_tensor(ppl_windows).tolist()}))
            args += ["--ppl-file", ppl_file]
        ids = torch.as_tensor(prefill_ids).reshape(1, -1)
        return run_module("llmc_slm.tracks.runtimes.executorch", args, threads=threads, input_ids=ids,
                          input_source=input_source, timeout=timeout, nice=nice,
                          what=f"ExecuTorch child on {artifact}")


if __name__ == "__main__":
    sys.exit(main())
