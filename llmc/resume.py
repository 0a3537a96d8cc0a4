"""Resume an interrupted run after its quantization (``save.resume``, on by default).

The expensive stages of a run are the method (minutes to hours on a CPU) and the evaluations after it.
Without this module a run stopped during an evaluation (Ctrl-C, SIGTERM from a sweep, a machine taken back,
out of memory) is run again from the start, quantization included. With it:

1. right after fake-quantization the pipeline writes the quantized model beside the results record
   (``<results stem>.resume.pt``, :func:`checkpoint_path`; written atomically) with the figures the
   quantization produced (Track 3's cost, the method's report), and the record names the file and its
   fingerprint (``resume_checkpoint``);
2. a later run of the same experiment whose results file holds an ``interrupted`` or ``killed`` record
   naming that checkpoint (:func:`find_resumable`) loads the float model as usual (the paired evaluations'
   reference), swaps in the checkpointed model instead of calibrating and quantizing again, checks it on a
   probe input against the logits recorded when it was written, keeps the previous attempt's finished
   evaluations (metrics and per-item outcomes) and quantization cost, and runs only what remains;
3. the checkpoint is deleted when the run completes (it is as large as the model in its compute dtype).

What is measured stays honest: Track 3 (``quant_cost``) is the attempt that quantized, ``timings.stages``
adds both attempts' stage times (the time lost in an unfinished stage of a killed attempt is not known and
not counted), and the record's ``resumed`` section says what was kept, from which attempt and why.

The checkpoint is reused only when nothing that can change a figure differs: the fingerprint
(:func:`fingerprint`) covers the resolved config, the model (:func:`model_identity`: the file's sha256, or
the loaded weights'), the engine's commit and its uncommitted changes, and the software, CPU or GPU, dtype
and thread count of the run. Another config or edited code deletes the checkpoint and starts the run over
with one log line saying why; a checkpoint whose model does not give the logits recorded with it is one
error naming the file.

The file is a pickle of the model (``torch.save`` of the module), so that every method's structure (online
transforms, activation quantizers, a KV-cache quantizer, untied embeddings) comes back as it was without a
per-method loader; it is loaded only from the run's own results folder (``weights_only=False``: load only
checkpoints you wrote). A model that cannot be pickled is not checkpointed (one log line), and the run is
as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

log = logging.getLogger("llmc")

FORMAT = 1
SUFFIX = ".resume.pt"
PROBE_TOKENS = 16
# the logits on the probe input may differ by float rounding when the same model is loaded again (another
# memory layout); a wrong model differs by orders of magnitude more
PROBE_TOLERANCE = 1e-3


def checkpoint_path(results_path: str | Path) -> Path:
    """``run.json`` -> ``run.resume.pt`` beside it."""
    p = Path(results_path)
    return p.with_name(p.stem + SUFFIX)


def source_digest() -> Optional[str]:
    """sha256 of the engine's uncommitted changes to tracked files (``git diff HEAD``), "" for a clean tree,
    None when git cannot tell (then no checkpoint is reused: the code that wrote it cannot be told apart)."""
    root = Path(__file__).resolve().parents[1]
    try:
        diff = subprocess.run(["git", "diff", "HEAD", "--no-ext-diff", "--binary"], cwd=root, capture_output=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if diff.returncode != 0:
        return None
    return hashlib.sha256(diff.stdout).hexdigest() if diff.stdout else ""


_ENV_KEYS = ("device", "dtype", "torch", "transformers", "torch_threads", "cpu", "gpu")


def fingerprint(config: dict, model: str, git: dict, environment: dict, digest: Optional[str]) -> Optional[str]:
    """What must be equal for a checkpoint to stand for this run (``model``: :func:`model_identity`); None
    when the code cannot be identified (no commit, no source digest): then nothing is written or reused."""
    if not git.get("commit") or digest is None:
        return None
    facts = {"format": FORMAT, "config": config, "model": model, "commit": git["commit"],
             "uncommitted": digest, "environment": {k: environment.get(k) for k in _ENV_KEYS}}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def _rng_state() -> dict:
    import numpy as np
    import torch
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _probe_ids(vocab_size: int):
    import torch
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (1, PROBE_TOKENS), generator=g)


def probe_logits(adapter):
    """The model's float32 logits on a fixed random input of :data:`PROBE_TOKENS` tokens, on the CPU."""
    import torch
    ids = _probe_ids(adapter.config.vocab_size).to(adapter.device)
    with torch.no_grad():
        return adapter.model(ids).logits.float().cpu()


def write_checkpoint(path: Path, fp: str, adapter, quantized) -> Optional[str]:
    """Pickle the quantized model and what the quantization produced to ``path`` (atomically); returns
    None, or why nothing was written (the model cannot be pickled, the disk is full: the run goes on)."""
    import torch

    from .utils import atomic_file
    payload = {"format": FORMAT, "fingerprint": fp, "model": adapter.model, "label": quantized.label,
               "input_transforms": quantized.input_transforms, "cost": quantized.cost, "report": quantized.report,
               "exports": list(quantized.exports), "probe": probe_logits(adapter), "rng": _rng_state()}
    try:
        with atomic_file(path) as f:
            torch.save(payload, f)
    except Exception as e:   # pickling (a closure in the model), OSError (disk full): not fatal to the run
        return f"{type(e).__name__}: {e}"
    return None


@dataclass
class Resumable:
    """An interrupted attempt of this run that left a usable checkpoint."""
    checkpoint: Path
    fingerprint: str
    previous: dict             # the interrupted attempt's record
    previous_status: str       # interrupted | killed

    def finished_metrics(self) -> dict:
        """``{eval_pos: {dataset: metric}}`` the previous attempt finished (each is recorded when done)."""
        m = self.previous.get("metrics")
        return {pos: dict(by) for pos, by in m.items() if isinstance(by, dict)} if isinstance(m, dict) else {}


def read_previous(results: Path) -> Optional[dict]:
    """The record a run is about to replace (read before the new one is started), or None."""
    try:
        data = json.loads(Path(results).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def model_identity(source, model) -> str:
    """The model file's sha256 where the source has one (the embedded models, GGUF files), else a sha256
    of the loaded weights (names, dtypes, shapes, bytes): what the run quantized, whatever its source."""
    if getattr(source, "sha256", None):
        return f"file:{source.sha256}"
    import torch
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict(keep_vars=False).items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"weights:{h.hexdigest()}"


def find_resumable(results: Path, previous: Optional[dict], fp: Optional[str]) -> Optional[Resumable]:
    """The previous attempt of the run writing ``results`` if it can be resumed after its quantization:
    its record (``previous``, read before this run started) is ``interrupted`` or ``killed`` and names a
    checkpoint with this run's fingerprint, and the file is there. Otherwise None; a checkpoint that is there
    but cannot serve is deleted with one log line saying why (the record that named it is being replaced)."""
    from .results import effective_status
    ckpt = checkpoint_path(results)
    _remove_partial_writes(ckpt)
    if not ckpt.exists():
        return None
    status = effective_status(previous) if previous is not None else "unreadable"
    named = previous.get("resume_checkpoint") if previous is not None else None
    why = None
    if status not in ("interrupted", "killed"):
        why = f"the record beside it is '{status}', not an interrupted run"
    elif not isinstance(named, dict) or named.get("file") != ckpt.name:
        why = "the record does not name it"
    elif fp is None:
        why = "this run's fingerprint cannot be computed (no git commit or source digest)"
    elif named.get("fingerprint") != fp:
        why = "config, code, model or environment differ from the run that wrote it"
    if why:
        log.warning("not resuming from %s (%s): deleted, quantizing again", ckpt.name, why)
        ckpt.unlink(missing_ok=True)
        return None
    return Resumable(ckpt, fp, previous, status)


def load_checkpoint(resumable: Resumable, adapter) -> dict:
    """Swap the checkpointed model into ``adapter``; return what the quantization produced besides it
    (``label``, ``input_transforms``, ``cost``, ``report``, ``exports``: the pipeline's ``QuantizedModel``
    fields) and restore the random state of the moment it was written. Raises ``ValueError`` when the file
    does not hold this run's model (another fingerprint, the probe logits differ)."""
    import torch
    try:
        payload = torch.load(resumable.checkpoint, map_location=adapter.device, weights_only=False)
    except Exception as e:   # truncated, not a torch file, a class that moved
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError("not a checkpoint of this format")
    if payload.get("fingerprint") != resumable.fingerprint:
        raise ValueError("its fingerprint is not the one its record names")
    float_model, adapter.model = adapter.model, payload["model"]
    probe = probe_logits(adapter)
    if probe.shape != payload["probe"].shape or not torch.allclose(probe, payload["probe"], atol=PROBE_TOLERANCE,
                                                                  rtol=PROBE_TOLERANCE):
        adapter.model = float_model
        raise ValueError("the reloaded model's logits differ from those recorded when it was written")
    del float_model
    _set_rng_state(payload["rng"])
    return {k: payload[k] for k in ("label", "input_transforms", "cost", "report", "exports")}


def remove_checkpoint(results: Path) -> None:
    checkpoint_path(results).unlink(missing_ok=True)


def discard_checkpoint(results: Path, why: str) -> None:
    """Delete an earlier attempt's checkpoint (and half-written ones) that this run will neither resume from
    nor replace, with one log line saying why: the record that named it is being replaced."""
    ckpt = checkpoint_path(results)
    _remove_partial_writes(ckpt)
    if ckpt.exists():
        log.warning("not resuming from %s (%s): deleted", ckpt.name, why)
        ckpt.unlink(missing_ok=True)


def _remove_partial_writes(ckpt: Path) -> None:
    """The temporary files a checkpoint write killed half-way (SIGKILL, power) leaves beside it."""
    for partial in ckpt.parent.glob(f".{ckpt.name}.*.tmp"):
        partial.unlink(missing_ok=True)
