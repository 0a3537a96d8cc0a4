"""``hf``: the model as an ordinary Hugging Face checkpoint that ``from_pretrained`` loads (LLMC's
``save_trans``: the transformed float model; ``save_fake``: every block linear's weight replaced by its
quantized value). Activation quantization and online transforms cannot be expressed in such a checkpoint:
the quantizer settings go beside the weights in ``slmquant_quant.json``, and a model with online transforms
(SpinQuant's R4) is written with a warning that the loaded model is not equivalent."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path

from torch import nn

from ..quant.fake_linear import FakeQuantLinear
from ..registry import register_exporter
from ..utils import atomic_dir, swap_module
from . import Exporter

log = logging.getLogger(__name__)


def plain_copy(model: nn.Module) -> nn.Module:
    """A copy of the model with every FakeQuantLinear turned back into an nn.Linear (quantized weights)."""
    clone = copy.deepcopy(model)
    for name, module in list(clone.named_modules()):
        if isinstance(module, FakeQuantLinear):
            lin = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                            dtype=module.weight.dtype, device=module.weight.device)
            lin.weight.data.copy_(module.weight.data)
            if module.bias is not None:
                lin.bias.data.copy_(module.bias.data)
            swap_module(clone, name, lin)
    return clone


@register_exporter("hf")
class HFExporter(Exporter):
    name = "hf"
    stages = ("transformed", "fake_quant")
    llmc_keys = {"transformed": "save_trans", "fake_quant": "save_fake"}

    def export(self, adapter, quantized, cfg, stage: str) -> Path:
        if quantized is not None and quantized.input_transforms:
            log.warning("%s checkpoint (%s): a Hugging Face checkpoint cannot hold the method's online "
                        "transforms (%d layers, e.g. SpinQuant's R4 Hadamard); a model loaded from it is not "
                        "equivalent (save_real keeps them)", stage, self.llmc_keys[stage], len(quantized.input_transforms))
        out = self.target(cfg, stage)
        with atomic_dir(out) as tmp:
            plain_copy(adapter.model).save_pretrained(tmp)
            if adapter.tokenizer is not None:
                adapter.tokenizer.save_pretrained(tmp)
            q = dataclasses.asdict(cfg.quant)
            (tmp / "slmquant_quant.json").write_text(json.dumps({"kind": stage, "quant": q}, indent=2, default=str))
        return out
