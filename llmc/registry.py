"""Name -> implementation registries, filled by decorators (LLMC's MODEL_REGISTRY / ALGO_REGISTRY).

``load_builtin()`` imports the engine's adapters, algorithms and evaluators, then every extension package
declared under the ``llmc.extensions`` entry-point group (``llmc_slm`` registers its embedded models and
harness tasks there), so that ``python -m llmc`` sees them without the engine importing the extension by
name.

``EVALUATOR_REGISTRY`` maps an ``eval.name`` to its evaluator class, or to a ``"module:Class"`` string
(``register_evaluator_entry``) imported only when the evaluator is built: the config check knows every
name without importing the implementations (lm-eval takes seconds to import).
"""

from __future__ import annotations

import importlib
from importlib import metadata

MODEL_REGISTRY: dict[str, type] = {}
ALGO_REGISTRY: dict[str, type] = {}
EVALUATOR_REGISTRY: dict[str, "type | str"] = {}  # eval.name -> class, or "module:Class" (lazy)
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


def register_evaluator(*names: str):
    def deco(cls):
        for name in names:
            EVALUATOR_REGISTRY[name] = cls
        return cls
    return deco


def register_evaluator_entry(name: str, target: str) -> None:
    """Register ``name``'s evaluator as ``"module:Class"``, imported when it is first built."""
    EVALUATOR_REGISTRY[name] = target


def evaluator_class(name: str) -> type:
    """The evaluator class of a registered ``name`` (importing a lazy entry)."""
    cls = EVALUATOR_REGISTRY[name]
    if isinstance(cls, str):
        module, _, attr = cls.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    return cls


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
    importlib.import_module("llmc.evaluators")
    for ep in metadata.entry_points(group="llmc.extensions"):
        ep.load()
