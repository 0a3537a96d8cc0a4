"""Checkpoints: ``save_trans`` (the transformed float model) and ``save_fake`` (weights replaced by their
quantized values) as ordinary Hugging Face directories that ``from_pretrained`` loads, and ``save_real``
(packed integers, see ``llmc.quant.packed``). Activation quantization cannot be expressed in an HF
checkpoint: its settings are written beside the weights in ``slmquant_quant.json``."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

from torch import nn

from ..quant.fake_linear import FakeQuantLinear
from ..utils import atomic_dir


def _plain_copy(model: nn.Module) -> nn.Module:
    """A copy of the model with every FakeQuantLinear turned back into an nn.Linear (quantized weights)."""
    clone = copy.deepcopy(model)
    for name, module in list(clone.named_modules()):
        if isinstance(module, FakeQuantLinear):
            lin = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                            dtype=module.weight.dtype, device=module.weight.device)
            lin.weight.data.copy_(module.weight.data)
            if module.bias is not None:
                lin.bias.data.copy_(module.bias.data)
            parent_name, _, child = name.rpartition(".")
            setattr(clone.get_submodule(parent_name) if parent_name else clone, child, lin)
    return clone


def save_hf(adapter, cfg, kind: str) -> Path:
    out = Path(cfg.save.save_path) / f"{_stem(cfg)}_{kind}"
    with atomic_dir(out) as tmp:
        _plain_copy(adapter.model).save_pretrained(tmp)
        if adapter.tokenizer is not None:
            adapter.tokenizer.save_pretrained(tmp)
        q = dataclasses.asdict(cfg.quant)
        (tmp / "slmquant_quant.json").write_text(json.dumps({"kind": kind, "quant": q}, indent=2, default=str))
    return out


def packed_dir(cfg) -> Path:
    """Where ``save.save_real`` writes the run's packed checkpoint (Track 2 reads it from here)."""
    return Path(cfg.save.save_path) / f"{_stem(cfg)}_real_quant"


def save_packed(adapter, cfg) -> Path:
    from ..quant.packed import save_packed_model
    out = packed_dir(cfg)
    save_packed_model(adapter, cfg, out)
    return out


def _stem(cfg) -> str:
    from ..runner import results_path
    return results_path(cfg).stem
