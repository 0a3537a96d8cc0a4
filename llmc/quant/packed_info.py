"""What a stored checkpoint is, read from its safetensors headers alone (no tensor is loaded): its kind
(the packed real-quant format of :mod:`llmc.quant.packed`, or an ordinary Hugging Face checkpoint), its
size on disk and its bytes by role (integer codes, scales, zeros, int8 embeddings, norms...) and dtype.

It sits beside :mod:`llmc.quant.packed` because it reads that module's layout: the format tag in the
metadata and the tensor-name suffixes (``.qweight``, ``.scale``, ``.zero``) the writer chooses.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .packed import FORMAT


def safetensors_files(path: str | Path) -> list[Path]:
    """The ``*.safetensors`` files of a checkpoint folder (or the file itself); FileNotFoundError if none."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors file")
    return files


def read_safetensors_header(file: str | Path) -> tuple[dict, dict]:
    """(tensors {name: {dtype, shape, data_offsets}}, metadata) from a safetensors file's JSON header."""
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", None) or {}
    return header, meta


def checkpoint_size(path: str | Path) -> int:
    """Bytes of the checkpoint's ``*.safetensors`` files (headers included; tokenizer and config excluded)."""
    return sum(f.stat().st_size for f in safetensors_files(path))


def _role(name: str, quantized: set) -> str:
    for suffix, role in ((".qweight", "weight_codes"), (".scale", "weight_scales"), (".zero", "weight_zeros")):
        if name.endswith(suffix):
            return role
    if name.endswith(".bias") and name[:-5] in quantized:
        return "quantized_linear_bias"
    if "embed_tokens" in name:
        return "embeddings"
    if name.startswith("lm_head"):
        return "lm_head"
    if "norm" in name:
        return "norms"
    return "float_linears_and_other"


def storage_breakdown(path: str | Path) -> dict:
    """Bytes of the stored tensors by role and dtype, whether the embeddings are tied, and the share of the
    bytes that the vocabulary matrices (embeddings, lm_head) hold."""
    roles: dict = {}
    total = 0
    tied = None
    for file in safetensors_files(path):
        header, meta = read_safetensors_header(file)
        quantized = {k[: -len(".qweight")] for k in header if k.endswith(".qweight")}
        for name, info in header.items():
            start, end = info["data_offsets"]
            role = _role(name, quantized)
            entry = roles.setdefault(role, {"bytes": 0, "tensors": 0, "dtypes": {}})
            entry["bytes"] += end - start
            entry["tensors"] += 1
            entry["dtypes"][info["dtype"]] = entry["dtypes"].get(info["dtype"], 0) + end - start
            total += end - start
        if "config" in meta:
            tied = json.loads(meta["config"]).get("tie_word_embeddings")
    if tied is None:
        cfg = Path(path) / "config.json" if Path(path).is_dir() else None
        if cfg is not None and cfg.is_file():
            tied = json.loads(cfg.read_text()).get("tie_word_embeddings")
    vocab = sum(roles.get(r, {}).get("bytes", 0) for r in ("embeddings", "lm_head"))
    return {"tensor_bytes": total, "roles": roles, "tied_embeddings": tied,
            "embedding_share": vocab / total if total else None,
            "note": "lm_head is stored once with the embeddings when tied; embedding_share: the embeddings' and "
                    "lm_head's share of the tensor bytes (most of Gemma-3-270M's: its vocabulary is 262,144 words)"}


def checkpoint_kind(path: str | Path) -> str:
    """``packed`` (this project's packed real-quant format) or ``hf`` (an ordinary Hugging Face checkpoint);
    ValueError for neither."""
    path = Path(path)
    files = list(path.glob("*.safetensors"))
    if files:
        _, meta = read_safetensors_header(files[0])
        if meta.get("format") == FORMAT:
            return "packed"
    if (path / "config.json").is_file():
        return "hf"
    raise ValueError(f"{path}: neither a packed slmquant checkpoint nor a Hugging Face checkpoint")


def packed_config(path: str | Path) -> dict:
    """The Hugging Face config (as a dict) a packed checkpoint stores in its metadata."""
    _, meta = read_safetensors_header(safetensors_files(path)[0])
    return json.loads(meta["config"])
