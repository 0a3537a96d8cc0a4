"""The catalogue of names the engine and its extensions offer, declared without importing them.

``load()`` fills ``llmc.registry`` with the built-in methods (``llmc.methods``: their settings and checks,
their algorithms as lazy references), model families (``llmc.models.families``: layouts as data),
evaluators and exporters (lazy references), then loads every extension declared under the
``llmc.extensions`` entry-point group (``llmc_slm`` declares its zoo, tasks and Track 2 hook there). None
of this imports torch: a config is validated, and ``--print-config`` answered, from names alone; an
implementation is imported when a run uses it.
"""

from __future__ import annotations

import importlib
from importlib import metadata

from .registry import EVALUATOR_REGISTRY, EXPORTER_REGISTRY

_loaded = False

BUILTIN_EVALUATORS = {"wikitext2": "llmc.evaluators:WikiText2Perplexity"}
BUILTIN_EXPORTERS = {"hf": "llmc.export.hf:HFExporter", "packed": "llmc.export.packed:PackedExporter",
                     "gguf": "llmc.export.gguf:GGUFExporter",
                     "executorch": "llmc.export.executorch:ExecuTorchExporter"}


def load() -> None:
    """Declare everything once (idempotent)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("llmc.methods")
    importlib.import_module("llmc.models.families")
    for name, ref in BUILTIN_EVALUATORS.items():
        EVALUATOR_REGISTRY.declare(name, ref)
    for name, ref in BUILTIN_EXPORTERS.items():
        EXPORTER_REGISTRY.declare(name, ref)
    for ep in metadata.entry_points(group="llmc.extensions"):
        ep.load()
