"""The float reference's final hidden states on the WikiText-2 windows, kept on disk between runs.

``eval.paired`` scores every window twice: the quantized model and the float reference (``llmc.eval.reference``).
The reference's outputs are the same in every quantized run of a sweep, but its whole next-token distribution
cannot be stored (``reference.py``: 57 GB for SmolLM2). What can be stored is the input of its output layer:
the final hidden states, ``windows x seq_len x hidden`` (SmolLM2 at 148 x 2048: 0.35 GB in bfloat16). A later
run recomputes only ``lm_head(hidden)`` from them, the same operation on the same tensor as the reference's own
forward, so the logits, and every figure computed from them, are bit-identical to recomputing the model (tested),
and the run skips the reference's transformer blocks (about four fifths of its cost on SmolLM2).

The file is used only when everything that decides those bits matches, hashed into its name: the reference's
parameters and buffers, the windows' token ids, the micro-batch, the dtype, the torch version, the thread count
and the device type. Anything else (a different model, limit, batch or machine setting) writes a new file. A file
that cannot be read is recomputed (and rewritten), never fatal; it is written atomically, only once every window
was computed. Models whose logits are not ``lm_head(hidden)`` (a final logit soft-cap) do not use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import torch

MAX_CACHE_BYTES = 4 << 30       # larger reference outputs are recomputed, not stored


def model_digest(model: torch.nn.Module) -> str:
    """A digest of every parameter and buffer (names, dtypes, shapes and bytes); tied tensors counted once."""
    h = hashlib.blake2b(digest_size=16)
    seen = set()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        t = t.detach().cpu().contiguous().reshape(-1)          # 0-d buffers too (Gemma's embed scale)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _unsupported(model) -> Optional[str]:
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)() if cfg is not None else None
    if getattr(cfg, "final_logit_softcapping", None):
        return "the model soft-caps its logits"
    if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        return "no output embeddings"
    return None


def read_keyed(path: Path, key: dict, names: tuple) -> dict:
    """The tensors ``names`` of the safetensors file ``path`` whose stored key is ``key`` (raises otherwise)."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        if json.loads(f.metadata().get("key", "{}")) != key:
            raise ValueError("its key differs")
        return {name: f.get_tensor(name) for name in names}


def write_keyed(path: Path, tensors: dict, key: dict) -> Optional[str]:
    """Write ``tensors`` to ``path`` with ``key`` in its metadata, atomically; the reason if it could not be."""
    from safetensors.torch import save_file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"key": json.dumps(key, sort_keys=True)})
        tmp.replace(path)
    except OSError as e:
        return f"not stored ({e})"
    return None


def describe_file(status: str, path: Optional[Path], reason: Optional[str]) -> dict:
    """What a run records of a cache file: ``status``, and ``file`` and ``reason`` where there are."""
    return {"status": status, **({"file": path.name} if path is not None else {}),
            **({"reason": reason} if reason else {})}


class ReferenceOutputs:
    """The reference's logits for each batch of windows: from the cached final hidden states when a matching
    file exists, else from the model (recording the hidden states, then :meth:`save` writes them).

    ``status`` says which: ``hit`` (read from the file), ``written`` (computed and stored), ``computed``
    (computed, not stored: ``reason`` says why), ``off``."""

    def __init__(self, model: torch.nn.Module, windows: torch.Tensor, bs: int, cache_dir=None):
        self.model, self.windows, self.bs = model, windows, bs
        self.head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.hidden: Optional[torch.Tensor] = None
        self._recorded: list = []
        self.path: Optional[Path] = None
        self.status, self.reason = ("off", None) if cache_dir is None else ("computed", None)
        if cache_dir is None:
            return
        why = _unsupported(model)
        dtype = next(model.parameters()).dtype
        size = windows.numel() * model.get_output_embeddings().in_features * dtype.itemsize if not why else 0
        if why is None and size > MAX_CACHE_BYTES:
            why = f"{size / 2**30:.1f} GiB of hidden states, over the {MAX_CACHE_BYTES >> 30} GiB limit"
        if why:
            self.reason = why
            return
        self.key = {"model": model_digest(model), "windows": hashlib.blake2b(
            windows.cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest(),
            "shape": list(windows.shape), "bs": bs, "dtype": str(dtype), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": next(model.parameters()).device.type}
        name = hashlib.blake2b(json.dumps(self.key, sort_keys=True).encode(), digest_size=12).hexdigest()
        self.path = Path(cache_dir) / f"reference_hidden_{name}.safetensors"
        self.hidden = self._read()
        if self.hidden is not None:
            self.status = "hit"

    def _read(self) -> Optional[torch.Tensor]:
        if self.path is None or not self.path.is_file():
            return None
        try:
            hidden = read_keyed(self.path, self.key, ("hidden",))["hidden"]
        except Exception as e:      # noqa: BLE001 - a damaged cache file is recomputed, never fatal
            self.reason = f"{self.path.name} not read ({type(e).__name__}: {e}); recomputed"
            return None
        expected = (self.windows.shape[0], self.windows.shape[1], self.head.in_features)
        if tuple(hidden.shape) != expected:
            self.reason = f"{self.path.name} has shape {tuple(hidden.shape)}, not {expected}; recomputed"
            return None
        return hidden

    @torch.no_grad()
    def logits(self, start: int, batch: torch.Tensor) -> torch.Tensor:
        """The reference's logits for ``batch`` = windows[start:start + len(batch)], on the batch's device."""
        device = next(self.model.parameters()).device
        if self.hidden is not None:
            return self.head(self.hidden[start:start + batch.shape[0]].to(device))
        if self.path is None:
            return self.model(input_ids=batch.to(device), use_cache=False).logits
        captured = []
        handle = self.head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
        try:
            logits = self.model(input_ids=batch.to(device), use_cache=False).logits
        finally:
            handle.remove()
        self._recorded.append(captured[-1].cpu())
        return logits

    def save(self) -> None:
        """Write the recorded hidden states (atomically), once every window was computed."""
        if self.path is None or self.hidden is not None:
            return
        hidden = torch.cat(self._recorded) if self._recorded else None
        self._recorded = []
        if hidden is None or hidden.shape[0] != self.windows.shape[0]:
            return
        failed = write_keyed(self.path, {"hidden": hidden}, self.key)
        self.status, self.reason = ("written", self.reason) if failed is None else (self.status, failed)

    def describe(self) -> dict:
        return describe_file(self.status, self.path, self.reason)
