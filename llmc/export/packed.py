"""``packed``: the integer checkpoint (LLMC's ``save_real``; format in ``llmc.quant.packed``): 4-bit codes
two per byte, 8-bit codes one per byte, float32 scales, uint8 zero points, embeddings and lm_head as int8
rows; it reloads to the fake-quant model's outputs, and ``eval_pos: real_quant`` evaluates it deployed
with integer kernels."""

from __future__ import annotations

from pathlib import Path

from ..paths import packed_dir
from ..registry import register_exporter
from . import Exporter


@register_exporter("packed")
class PackedExporter(Exporter):
    name = "packed"
    stages = ("fake_quant",)
    llmc_keys = {"fake_quant": "save_real"}

    def target(self, cfg, stage: str) -> Path:
        return packed_dir(cfg)

    def export(self, adapter, quantized, cfg, stage: str) -> Path:
        from ..quant.packed import save_packed_model
        out = self.target(cfg, stage)
        save_packed_model(adapter, cfg, out)
        return out
