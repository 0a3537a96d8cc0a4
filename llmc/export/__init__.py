"""Exporters: one module per checkpoint format, registered by name (``llmc.registry.EXPORTER_REGISTRY``).

An exporter writes the model as it stands after one pipeline stage (``transformed``: the method's float
transform, weights already quantized where the method fixes them; ``fake_quant``: every block linear on its
grid). It is asked for by LLMC's ``save.*`` keys (``save_trans`` / ``save_fake`` -> ``hf``, ``save_real`` ->
``packed``) or by name in ``save.formats`` (``gguf``: llama.cpp). A new format is one module with one class and one
``register_exporter`` (or a ``catalog`` declaration), plus its tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Optional


class Exporter:
    """Base of the exporters. ``stages``: after which pipeline stages it can write; ``llmc_keys``: for a
    stage, the ``save.*`` flag of LLMC's schema that asks for it (none: only ``save.formats`` does)."""

    name: ClassVar[str] = ""
    stages: ClassVar[tuple[str, ...]] = ("fake_quant",)
    llmc_keys: ClassVar[dict] = {}

    def requested(self, cfg, stage: str) -> bool:
        if stage not in self.stages:
            return False
        key = self.llmc_keys.get(stage)
        return bool(key and getattr(cfg.save, key)) or self.name in cfg.save.formats

    def target(self, cfg, stage: str) -> Path:
        """The folder (or file) the export writes, known before the model loads."""
        from ..paths import artifact_dir
        return artifact_dir(cfg, stage if self.llmc_keys.get(stage) else f"{self.name}_{stage}")

    def refusal(self, cfg) -> Optional[str]:
        """Why this format cannot hold what the config asks for, known before the model loads (None: it
        can as far as the config tells); the run refuses it in one line before any work."""
        return None

    def export(self, adapter, quantized, cfg, stage: str) -> Path:
        """Write ``adapter``'s model; ``quantized`` is what the method left (``QuantizedModel``)."""
        raise NotImplementedError


def family_refusal(cfg, supported, what: str) -> Optional[str]:
    """Why ``what`` cannot hold the config's model family (``model.type``, through its layout's Hugging Face
    ``model_type``s), known before the model loads; None when it can, or when the family is not known here
    (a plug-in: checked at export)."""
    from ..models.families import layout_of
    try:
        types = layout_of(cfg.model.type).hf_model_types
    except (KeyError, AttributeError):
        return None
    if any(t in supported for t in types):
        return None
    return f"model type {'/'.join(types)} ({cfg.model.type}) has no {what} here (only {', '.join(supported)})"


def requested_exporters(cfg, stage: str) -> list:
    """The exporters the config asks for after ``stage``, instantiated, in registry order."""
    from ..registry import EXPORTER_REGISTRY
    out = []
    for name in EXPORTER_REGISTRY:
        exporter = EXPORTER_REGISTRY[name]()
        if exporter.requested(cfg, stage):
            out.append(exporter)
    return out
