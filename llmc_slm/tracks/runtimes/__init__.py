"""Track 2 inside edge runtimes: one measuring module per runtime, each run in a fresh process.

The contract every runtime module keeps (``llmc_slm/tracks/runtimes/<runtime>.py``):

``measure(artifact, *, threads, prefill_ids, decode_tokens, ppl_windows=None, **options) -> dict``, called
in a fresh child process (``python -m llmc_slm.tracks.runtimes --runtime <name> ...``, launched by
:func:`measure_in_child` through :func:`llmc_slm.tracks.child.run_module`), so that its peak resident
memory is that runtime's own. ``artifact`` is the exported file (or the folder holding it); ``prefill_ids``
the protocol's input (``llmc_slm.tracks.loading.fixed_input_ids``: batch 1 x 128 WikiText-2 tokens, as
nested lists); ``ppl_windows`` a list of token-id windows (the first N WikiText-2 windows of the
evaluation's ``seq_len``) or None. The dict has at least these keys:

==========================  =================================================================================
``runtime``                 the runtime's name (a key of :data:`RUNTIMES`)
``artifact``                the file measured
``stored_bytes``            bytes of that file (what is shipped)
``idle_rss_bytes``          resident set after the imports (Python, the runtime's library), before loading
``peak_rss_bytes``          peak resident set during prefill and decode (``llmc_slm.tracks.memory``)
``peak_above_idle_bytes``   the difference: weights, activations and caches without the runtime itself
``prefill_tokens_per_s``    batch 1 x 128 tokens from an empty cache, logits of the last position only (what a
                            generating runtime computes), warm-up runs untimed
``decode_tokens_per_s``     greedy decoding of ``decode_tokens`` tokens after that prefill, one at a time with
                            the KV cache; only the decode steps timed
``wikitext2_ppl``           perplexity over ``ppl_windows`` (every token but a window's first predicted from its
                            prefix, the protocol's convention), None without windows
``ppl_windows``             how many windows it is computed on (0 without)
``threads``                 the threads the runtime was given
==========================  =================================================================================

Memory is measured with :class:`llmc_slm.tracks.memory.Footprint` (torch-free: a runtime's child must not
import torch). A runtime whose module or package is missing is reported as skipped with the reason
(:func:`availability`), never as a failure of the benchmark.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Optional

# runtime name -> "module:function" measuring an exported artifact in this process (the child's side)
RUNTIMES = {
    "llamacpp": "llmc_slm.tracks.runtimes.llamacpp:measure",
    "executorch": "llmc_slm.tracks.runtimes.executorch:measure",
}
# runtime name -> the Python package it needs (checked before a child is started)
PACKAGES = {"llamacpp": "llama_cpp", "executorch": "executorch"}
INSTALL_HINTS = {"llamacpp": "make llamacpp (pip install -e '.[llamacpp]': a C++ build of ~15-100 min on 2 cores)",
                 "executorch": "pip install -e '.[dev]'"}
CONTRACT_KEYS = ("runtime", "artifact", "stored_bytes", "idle_rss_bytes", "peak_rss_bytes", "peak_above_idle_bytes",
                 "prefill_tokens_per_s", "decode_tokens_per_s", "wikitext2_ppl", "ppl_windows", "threads")


def availability(runtime: str) -> Optional[str]:
    """None when ``runtime`` can be measured here, else the reason it cannot (one line)."""
    if runtime not in RUNTIMES:
        return f"unknown runtime '{runtime}' (known: {', '.join(RUNTIMES)})"
    module = RUNTIMES[runtime].split(":")[0]
    try:
        if importlib.util.find_spec(module) is None:
            return f"its measuring module {module} is not in this installation"
    except ModuleNotFoundError:
        return f"its measuring module {module} is not in this installation"
    package = PACKAGES.get(runtime)
    if package and importlib.util.find_spec(package) is None:
        return f"the Python package '{package}' is not installed ({INSTALL_HINTS.get(runtime, 'pip install it')})"
    return None


def resolve(runtime: str):
    """The measuring function of ``runtime`` (imports its module)."""
    module, _, func = RUNTIMES[runtime].partition(":")
    return getattr(importlib.import_module(module), func)


def skipped(runtime: str, reason: str, artifact=None) -> dict:
    return {"runtime": runtime, "artifact": None if artifact is None else str(artifact), "skipped": reason}


def measure_in_child(runtime: str, artifact: str | Path, *, threads: int, prefill_ids, decode_tokens: int = 32,
                     ppl_windows=None, options: Optional[dict] = None, timeout: Optional[float] = 3600,
                     nice: int = 0) -> dict:
    """Measure ``artifact`` in ``runtime`` in a fresh process; a runtime that is not available here, or whose
    child fails, gives ``{runtime, artifact, skipped: reason}`` (the benchmark goes on)."""
    from ..child import ChildError, run_module
    reason = availability(runtime)
    if reason:
        return skipped(runtime, reason, artifact)
    with tempfile.TemporaryDirectory(prefix="slmq_rt_") as tmp:
        args = ["--runtime", runtime, "--artifact", str(artifact), "--threads", threads,
                "--decode-tokens", decode_tokens]
        if ppl_windows is not None:
            ppl_file = Path(tmp) / "ppl.json"
            ppl_file.write_text(json.dumps({"windows": [list(map(int, w)) for w in ppl_windows]}))
            args += ["--ppl-file", str(ppl_file)]
        if options:
            args += ["--options", json.dumps(options)]
        ids = prefill_ids.tolist() if hasattr(prefill_ids, "tolist") else prefill_ids
        try:
            return run_module("llmc_slm.tracks.runtimes", args, threads=threads, input_ids=_Listable(ids),
                              timeout=timeout, nice=nice, what=f"{runtime} child on {artifact}")
        except ChildError as e:
            return skipped(runtime, f"the measuring child failed: {e}", artifact)


class _Listable:
    """Nested lists with ``.tolist()`` (what :func:`run_module` calls on its ``input_ids``)."""

    def __init__(self, data):
        self.data = data

    def tolist(self):
        return self.data
