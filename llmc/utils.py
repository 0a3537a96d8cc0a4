"""Small shared helpers: atomic file writes, hashing, cache location, dtype and device choice."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch


def progress_disabled() -> bool:
    """Whether progress bars are off: ``python -m llmc --quiet`` sets TQDM_DISABLE=1 (tqdm's own switch)."""
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


def cache_root() -> Path:
    """Where converted models live: ``$SLMQUANT_CACHE`` or ``~/.cache/slmquant``."""
    root = os.environ.get("SLMQUANT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "slmquant")
    return Path(root)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: readers never see a partial file."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """:func:`atomic_write_text` for bytes (a gzip file)."""
    with atomic_file(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_file(path: str | Path):
    """Yield a binary file object to write ``path`` through (streamed: ``torch.save`` of a large model); on
    success it is synced and renamed onto ``path``, on any error removed: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.dtype):
        return str(obj).replace("torch.", "")
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def atomic_dir(final: str | Path):
    """Yield a temporary folder beside ``final``; on success it replaces ``final`` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def package_version(name: str):
    """The installed version of the distribution ``name`` (``importlib.metadata``), None when absent."""
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        from .errors import UserError
        raise UserError("model.device: 'cuda' was asked for but no CUDA device is available")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """``auto``: float16 on CUDA, bfloat16 on CPUs with AMX or AVX512-BF16 (fast there), else float32."""
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda":
        return torch.float16
    flags = cpu_flags()
    if {"amx_bf16", "avx512_bf16"} & flags:
        return torch.bfloat16
    return torch.float32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def swap_module(root: torch.nn.Module, path: str, new: torch.nn.Module) -> torch.nn.Module:
    """Put ``new`` at the dotted ``path`` inside ``root`` (torch's ``set_submodule``); returns the module
    it replaces. The one module swap of the engine (fake-quant, integer and packed linears, checkpoints)."""
    old = root.get_submodule(path)
    root.set_submodule(path, new)
    return old


def cache_kwarg(model) -> str:
    """The name of a transformers model's KV-cache argument: ``cache`` (transformers >= 5.2x) or
    ``past_key_values``."""
    import inspect
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
