"""Name -> implementation registries (LLMC's MODEL_REGISTRY / ALGO_REGISTRY), at the bottom of the engine.

This module imports nothing of the engine but its errors, so every layer can register into it. An entry is
either the object itself (a class registered by decorator) or a lazy reference ``"package.module:Name"``
that is imported on first use: the catalogue of names (``llmc.catalog``) declares the built-ins that way,
so that a config can be validated, and ``--print-config`` answered, without importing torch or any
algorithm.

Registries:

- ``METHODS``: method name -> :class:`MethodSpec` (its ``quant.special`` settings dataclass, checks and
  label; torch-free) and ``ALGO_REGISTRY``: method name -> algorithm class (lazy);
- ``MODEL_REGISTRY``: adapter name (``model.type``) -> adapter class (lazy);
- ``EVALUATOR_REGISTRY``: ``eval.name`` -> evaluator class (lazy);
- ``EXPORTER_REGISTRY``: export format -> exporter (lazy);
- ``MODEL_SOURCES``: resolvers of model names tried before paths and hub ids (the embedded-model zoo);
- ``POST_RUN_HOOKS``: callables ``(cfg, record, device, dtype)`` run after a method's run (Track 2).
"""

from __future__ import annotations

import importlib
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional


def resolve(ref: Any) -> Any:
    """``"package.module:Name"`` -> the object (imported now); anything else is returned as it is."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


class Registry(MutableMapping):
    """A name -> object mapping whose values may be declared as lazy ``"module:Name"`` references.

    ``name in registry``, ``list(registry)`` and ``registry.names()`` never import anything; reading a value
    imports its module once and keeps the object."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        value = self._entries[name]
        if isinstance(value, str):
            value = self._entries[name] = resolve(value)
        return value

    def __setitem__(self, name: str, value: Any) -> None:
        self._entries[name] = value

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:   # never imports (Mapping's would read the value)
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def declare(self, name: str, ref: str) -> None:
        """Register ``name`` lazily (``"module:Name"``), unless an object is already registered under it."""
        if not isinstance(self._entries.get(name), (type(None), str)):
            return
        self._entries[name] = ref

    def __repr__(self) -> str:
        return f"Registry({self.what}: {', '.join(self._entries)})"


@dataclass(frozen=True)
class MethodSpec:
    """What the engine knows of a method before importing it: the dataclass that types ``quant.special``,
    whether it learns from calibration text, its config checks and the label tables show.

    ``validate(cfg)`` raises ``ConfigError`` for settings the method cannot run; ``requires_calibration(cfg)``
    overrides ``needs_calib`` where it depends on the settings; ``label(cfg)`` names a variant of ours
    (default: the method's name). All three take the whole resolved config and must not import torch."""
    name: str
    settings: type
    needs_calib: bool = True
    validate: Optional[Callable[[Any], None]] = None
    requires_calibration: Optional[Callable[[Any], bool]] = None
    label: Optional[Callable[[Any], str]] = None

    def calibrates(self, cfg) -> bool:
        """Calibration text is needed by the method itself or by static activation ranges."""
        if self.requires_calibration is not None:
            return bool(self.requires_calibration(cfg))
        act = cfg.quant.act
        return self.needs_calib or bool(act is not None and act.static)

    def label_for(self, cfg) -> str:
        return self.label(cfg) if self.label is not None else self.name


METHODS: dict[str, MethodSpec] = {}
ALGO_REGISTRY = Registry("quant.method")
MODEL_REGISTRY = Registry("model.type")
EVALUATOR_REGISTRY = Registry("eval.name")
EXPORTER_REGISTRY = Registry("save.formats")
MODEL_SOURCES: list = []    # callables name -> ModelSource | None (or "module:function" references)
POST_RUN_HOOKS: list = []   # callables (cfg, record, device, dtype) (or "module:function" references)


def register_method(spec: MethodSpec, implementation: str | type) -> MethodSpec:
    """Declare a method: its spec now, its algorithm class (or a lazy ``"module:Class"``) for later."""
    METHODS[spec.name] = spec
    if isinstance(implementation, str):
        ALGO_REGISTRY.declare(spec.name, implementation)
    else:
        ALGO_REGISTRY[spec.name] = implementation
    return spec


def register_algo(name: str, settings: Optional[type] = None, **spec_fields):
    """Class decorator for a method defined in one file (a plug-in): registers the class and, unless a
    spec was declared already, a :class:`MethodSpec` from the class's ``special_cls`` / ``needs_calib``."""
    def deco(cls):
        ALGO_REGISTRY[name] = cls
        if name not in METHODS:
            fields = {"needs_calib": getattr(cls, "needs_calib", True), **spec_fields}
            METHODS[name] = MethodSpec(name, settings or getattr(cls, "special_cls"), **fields)
        return cls
    return deco


def register_model(*names: str):
    def deco(cls):
        for name in names:
            MODEL_REGISTRY[name] = cls
        return cls
    return deco


def register_evaluator(*names: str):
    def deco(cls):
        for name in names:
            EVALUATOR_REGISTRY[name] = cls
        return cls
    return deco


def register_exporter(name: str):
    def deco(cls):
        EXPORTER_REGISTRY[name] = cls
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


def model_sources() -> list:
    return [resolve(s) for s in MODEL_SOURCES]


def post_run_hooks() -> list:
    return [resolve(h) for h in POST_RUN_HOOKS]
