"""What a measuring child loads: a checkpoint (packed real-quant or Hugging Face) ready for inference with
its weights resident, its tokenizer, and the fixed input the protocol times."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from llmc.quant.packed_info import checkpoint_kind, packed_config


def load_for_inference(path: str | Path, *, dtype: str = "bfloat16", device: str = "cpu", backend: str = "auto",
                       unpack: str = "load"):
    """(model, tokenizer or None, info) for a packed or Hugging Face checkpoint; a packed one is loaded
    integer-deployed (:func:`llmc.deploy.load_deployed`), its float parts cast to ``dtype`` ('stored': as
    saved). The weights are copied out of the file's memory map (:func:`materialize_weights`)."""
    from transformers import AutoModelForCausalLM
    path = Path(path)
    kind = checkpoint_kind(path)
    info = {"checkpoint": str(path.resolve()), "checkpoint_kind": kind}
    if kind == "packed":
        from llmc.deploy import deployment_summary, load_deployed, to_compute_dtype
        model = load_deployed(path, unpack=unpack, backend=backend, device=device)
        stored = next(model.get_input_embeddings().parameters()).dtype
        if dtype not in (None, "stored") and getattr(torch, dtype) != stored:
            to_compute_dtype(model, getattr(torch, dtype))
        info["deployment"] = deployment_summary(model)
        info["stored_float_dtype"] = str(stored).replace("torch.", "")
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).to(device)
    model.eval()
    info["weights_copied"] = materialize_weights(model)
    info["compute_dtype"] = str(next(model.get_input_embeddings().parameters()).dtype).replace("torch.", "")
    return model, load_tokenizer(path), info


def load_tokenizer(path: str | Path):
    """The checkpoint's tokenizer, or None when it has no tokenizer files (transformers 5 would build an
    empty one from the config alone)."""
    from transformers import AutoTokenizer
    path = Path(path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError):
        return None


def materialize_weights(model) -> int:
    """Give every parameter and buffer its own memory (a copy) so that no tensor is a view of the
    checkpoint's memory-mapped file: the mapping is released and the model's weights are resident in
    anonymous memory, the same way for every checkpoint (a mapped file would otherwise keep the pages
    read while loading resident, e.g. a packed file's codes after their unpacking, and leave untouched
    weights out). Tied weights stay tied. Returns the bytes copied."""
    copied = 0
    seen = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                p.data = p.data.clone()
                copied += p.numel() * p.element_size()
        for name, b in list(module._buffers.items()):
            if b is not None and id(b) not in seen and not b.is_mkldnn:
                seen.add(id(b))
                module._buffers[name] = b.clone()
                copied += b.numel() * b.element_size()
    return copied


def warm_runtime(path) -> None:
    """Import what loading will import (transformers, the model's modeling code, built once on the meta
    device) so that the RSS measured before loading is the runtime's footprint, common to every checkpoint."""
    from transformers import AutoConfig, AutoModelForCausalLM
    try:
        if checkpoint_kind(path) == "packed":
            config = AutoConfig.for_model(**packed_config(path))
        else:
            config = AutoConfig.from_pretrained(str(path))
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config)
        import llmc.deploy  # noqa: F401
    except Exception:  # noqa: BLE001 - only a warm-up
        pass


def fixed_input_ids(tokenizer, seq_len: int = 128, batch: int = 1, data_path: Optional[str] = None,
                    require_data: bool = False, vocab_size: Optional[int] = None) -> tuple[torch.Tensor, dict]:
    """The first ``seq_len`` tokens of the WikiText-2 test text (rows joined with "\\n\\n", tokenized as
    the perplexity evaluation does), repeated ``batch`` times. Without the data (and ``require_data``
    False) seeded random ids are used instead, and the info says so."""
    from llmc.data.sources import find_dataset
    from llmc.data.wikitext2 import evaluation_text
    from llmc.errors import UserError
    try:
        if tokenizer is None:
            raise UserError("no tokenizer to tokenize WikiText-2 with")
        loc = find_dataset("wikitext2", data_path)
        text = evaluation_text(loc)
    except UserError as e:
        if require_data:
            raise
        g = torch.Generator().manual_seed(0)
        vocab = vocab_size or (len(tokenizer) if tokenizer is not None else 1000)
        ids = torch.randint(0, vocab, (1, seq_len), generator=g)
        return ids.repeat(batch, 1), {"source": f"random token ids (seed 0): {e}"}
    ids = tokenizer(text[:20000], return_tensors="pt").input_ids[0]   # a prefix: its first tokens are the text's
    if ids.numel() < seq_len + 64:
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if ids.numel() < seq_len:
        raise UserError(f"the tokenizer gives {ids.numel()} tokens for the WikiText-2 test text, fewer than {seq_len}")
    ids = ids[:seq_len].unsqueeze(0).repeat(batch, 1)
    return ids, {"source": f"WikiText-2 test text, first {seq_len} tokens", "data": loc.describe()}
