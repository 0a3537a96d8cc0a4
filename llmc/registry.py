"""Name -> implementation registries, filled by decorators (LLMC's MODEL_REGISTRY / ALGO_REGISTRY).

``load_builtin()`` imports the engine's adapters and algorithms, then every extension package declared
under the ``llmc.extensions`` entry-point group (``llmc_slm`` registers its embedded models there), so
that ``python -m llmc`` sees them without the engine importing the extension by name.
"""

from __future__ import annotations

import importlib
from importlib import metadata

MODEL_REGISTRY: dict[str, type] = {}
ALGO_REGISTRY: dict[str, type] = {}
MODEL_SOURCES: list = []  # callables name -> ModelSource | None, tried before paths and hub ids
POST_RUN_HOOKS: list = []  # callables (cfg, record, device, dtype) run after quantization (e.g. Track 2)

_loaded = False


def register_model(*names: str):
    def deco(cls):
        for name in names:
            MODEL_REGISTRY[name] = cls
        return cls
    return deco


def register_algo(name: str):
    def deco(cls):
        ALGO_REGISTRY[name] = cls
        return cls
    return deco


def register_model_source(fn):
    """Add a resolver of model names (e.g. an embedded-model zoo) to ``MODEL_SOURCES``."""
    if fn not in MODEL_SOURCES:
        MODEL_SOURCES.append(fn)
    return fn


def register_post_run_hook(fn):
    if fn not in POST_RUN_HOOKS:
        POST_RUN_HOOKS.append(fn)
    return fn


def load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("llmc.models")
    importlib.import_module("llmc.algos")
    for ep in metadata.entry_points(group="llmc.extensions"):
        ep.load()
