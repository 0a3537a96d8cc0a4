"""LLMC-style YAML configs as typed, validated objects.

The schema follows LLMC's key names (``base``, ``model``, ``calib``, ``quant``, ``eval``, ``save``) so that
LLMC configs read unchanged where they use what this engine implements. Everything is checked before a
model is loaded: an unknown key names its full dotted path and the closest valid key, a bad value names
the key and the allowed values. Method-specific keys under ``quant.special`` are typed by the dataclass
each algorithm registers (see ``llmc.registry``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import ConfigError

Granularity = Literal["per_tensor", "per_channel", "per_group", "per_token", "per_head"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
EvalPos = Literal["pretrain", "transformed", "fake_quant", "real_quant"]


@dataclass
class BaseConfig:
    seed: int = 42


@dataclass
class ModelConfig:
    """Which model to load. ``type`` names an adapter (``auto`` reads it from the model's config)."""
    type: str = "auto"
    path: str = "smollm2-135m-instruct"
    tokenizer_mode: Literal["fast", "slow"] = "fast"
    torch_dtype: DType = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class CalibConfig:
    """Calibration text. ``preproc`` ``wikitext2_gptq`` cuts random seq_len windows (GPTQ's recipe)."""
    name: Literal["wikitext2"] = "wikitext2"
    download: bool = False
    path: Optional[str] = None
    n_samples: int = 128
    seq_len: int = 512
    bs: int = 1
    preproc: Literal["wikitext2_gptq", "general"] = "wikitext2_gptq"
    seed: int = 42


@dataclass
class QuantizerConfig:
    """One quantizer (weights, activations or KV cache): integer grid, granularity and range search."""
    bit: int = 8
    symmetric: bool = True
    granularity: Granularity = "per_channel"
    group_size: int = -1
    calib_algo: Literal["minmax", "mse", "learnable"] = "minmax"
    static: bool = False
    # symmetric grids: "absmax" s = absmax / (2^(b-1) - 1) (LLMC, SmoothQuant, SpinQuant, QuaRot); "gptq":
    # s = 2 absmax / (2^b - 1), all 2^b levels used (the GPTQ paper's quantizer); see llmc/quant/quantizer.py
    sym_grid: Literal["absmax", "gptq"] = "absmax"


@dataclass
class KVCacheConfig(QuantizerConfig):
    """The KV-cache quantizer (LLMC's ``quant.kvcache``): keys after RoPE and values, one range per token and
    kv head (``per_token``) or per group inside a head (``per_group``)."""
    method: Literal["Naive"] = "Naive"   # LLMC's name for round-to-nearest KV quantization (the only one here)
    granularity: Granularity = "per_token"


@dataclass
class QuantConfig:
    method: str = "RTN"
    weight: Optional[QuantizerConfig] = None
    act: Optional[QuantizerConfig] = None
    kvcache: Optional[KVCacheConfig] = None
    special: Any = None
    quant_out: bool = False


@dataclass
class EvalConfig:
    eval_pos: list[EvalPos] = field(default_factory=lambda: ["pretrain"])
    name: list[str] = field(default_factory=lambda: ["wikitext2"])   # registered evaluators (open list)
    download: bool = False
    path: Optional[str] = None
    seq_len: int = 2048
    bs: int = 1
    limit: Optional[int] = None
    subset: Literal["random", "first"] = "random"   # eval.limit items: a seeded sample, or the first N
    subset_seed: int = 1234
    paired: bool = True            # quantized runs: WikiText-2 KLD etc. against a CPU copy of the float model
    # paired runs: keep the float model's final hidden states on the windows in <save.save_path>/.reference_cache,
    # so that later runs of the same model, windows and settings skip its blocks (bit-identical figures)
    reference_cache: bool = True
    # ... and, for float32 models whose output layer is the reference's, a summary of its next-token distributions
    # (llmc.eval.reference_summary): later runs take the KL from it without the reference's output layer (the
    # same NLLs and top-1 bits; the KL within float32 rounding, 2e-5 nats per token at most)
    reference_summary: bool = True
    num_fewshot: int = 0
    inference_per_block: bool = False
    inference: bool = False        # Track 2: profile the deployed integer model (needs save.save_real)
    inference_threads: int = 1
    # accuracy tasks' loglikelihood backend: "slmquant" (llmc_slm.backend, the default: each shared token
    # computed once; HFLM's answers in float32, 6 x 200 items; in bfloat16 as close to the float32 answers as
    # HFLM-bfloat16 is: results/reference/issue16_track1) or "hf" (lm-eval's HFLM, the reference)
    backend: Literal["hf", "slmquant"] = "slmquant"


@dataclass
class SaveConfig:
    save_path: str = "results"
    save_trans: bool = False
    save_fake: bool = False
    save_real: bool = False
    # packed checkpoint: input embeddings and lm_head stored as int8 codes with one float32 scale per row
    # (symmetric, weight-only; dequantized to the compute dtype at load). null: stored in the model's dtype.
    real_embed_bit: Optional[int] = 8
    # more export formats by name (registered exporters, beside LLMC's save_trans / save_fake / save_real)
    formats: list[str] = field(default_factory=list)
    # quantized runs: keep the fake-quantized model beside the results (<stem>.resume.pt, deleted when the
    # run completes) so that a run interrupted after quantization resumes there (llmc.resume)
    resume: bool = True


@dataclass
class Config:
    base: BaseConfig = field(default_factory=BaseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    calib: Optional[CalibConfig] = None
    quant: Optional[QuantConfig] = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    save: SaveConfig = field(default_factory=SaveConfig)
    task_id: Optional[str] = None
    source: Optional[str] = None   # the YAML file this came from (set by load_config)
    profile: Optional[str] = None  # the named calibration profile applied (e.g. "cpu"), if any

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_INTERNAL_KEYS = {"task_id", "source", "profile"}


# ----------------------------------------------------------------------------------------- typing
def _is_optional(tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list of " + _describe(typing.get_args(tp)[0])
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def coerce(value: Any, tp, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted; raise ConfigError naming ``path``."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"{path}: a value is required ({_describe(inner)})")
    tp = inner
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: '{value}' is not one of {', '.join(map(str, allowed))}"
                              f"{_suggest(value, allowed)}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{path}: '{value}' is not true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: '{value}' is not an integer")
        try:
            as_int = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: '{value}' is not an integer") from None
        if isinstance(value, float) and value != as_int:
            raise ConfigError(f"{path}: '{value}' is not an integer")
        return as_int
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: '{value}' is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: '{value}' is not a number") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{path}: expected a string, got a {type(value).__name__}")
        return str(value)
    raise TypeError(f"unsupported annotation {tp!r} at {path}")


def from_dict(cls, data: Any, path: str = ""):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with the closest valid one."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__} '{data}'")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if not (cls is Config and f.name in _INTERNAL_KEYS)]
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(f"{key_path}: unknown key{_suggest(key, names)}")
        kwargs[key] = coerce(value, hints[key], key_path)
    return cls(**kwargs)


# ------------------------------------------------------------------------------------- overrides
def parse_overrides(args: list[str]) -> dict:
    """``['--eval.limit', '200', '--model.path=x']`` -> nested dict (values parsed as YAML scalars)."""
    nested: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument '{arg}' (overrides look like --section.key VALUE)")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"--{arg[2:]}: missing value")
            key, raw = arg[2:], args[i + 1]
            i += 2
        parts = key.split(".")
        if any(not p for p in parts):
            raise ConfigError(f"--{key}: malformed key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--{key}: '{p}' is set both as a value and as a section")
        node[parts[-1]] = value
    return nested


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _restore_strings(raw: dict, overrides: dict, cls=Config) -> dict:
    """YAML parsing of a CLI value must not turn a string-typed key into a number (``--model.path 123``)."""
    hints = typing.get_type_hints(cls)
    out = dict(raw)
    for key, value in overrides.items():
        if key not in hints:
            continue
        _, inner = _is_optional(hints[key])
        if dataclasses.is_dataclass(inner) and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _restore_strings(out[key], value, inner)
        elif inner is str and value is not None and not isinstance(value, str):
            out[key] = str(value)
    return out


# ------------------------------------------------------------------------------------------ load
PROFILE_DIR = Path(__file__).resolve().parents[1] / "configs" / "profiles"


def load_profile(name: str, method: str | None) -> dict:
    """A profile file maps ``default`` and method names to config overrides (same schema as a config).

    ``name`` is a path to a YAML file or the name of one in ``configs/profiles/`` (e.g. ``cpu``)."""
    p = Path(name)
    if not p.is_file():
        p = PROFILE_DIR / f"{name}.yml"
    if not p.is_file():
        known = sorted(f.stem for f in PROFILE_DIR.glob("*.yml")) if PROFILE_DIR.is_dir() else []
        raise ConfigError(f"--profile: no profile '{name}' (known: {', '.join(known) or 'none'})")
    data = yaml.safe_load(p.read_text()) or {}
    return _merge(data.get("default") or {}, data.get(method) or {}) if method else (data.get("default") or {})


def load_config(path: str | Path | None, overrides: list[str] | None = None, task_id: str | None = None,
                profile: str | None = None) -> Config:
    """Read a YAML file (or nothing: all defaults), apply a named profile, then ``--section.key value``
    overrides, and validate."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config: file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError(f"{p}: not valid YAML{where}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
    extra = parse_overrides(overrides or [])
    merged = _merge(raw, extra)
    if profile:
        method = (merged.get("quant") or {}).get("method") if isinstance(merged.get("quant"), dict) else None
        merged = _merge(_merge(raw, load_profile(profile, method)), extra)
    merged = _restore_strings(merged, extra)
    cfg = from_dict(Config, merged)
    cfg.task_id = task_id
    cfg.profile = profile
    cfg.source = str(path) if path is not None else None
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks and the method's own ``special`` schema, against the registries' names (no
    implementation is imported: ``llmc.catalog``). Raises ConfigError."""
    from . import catalog
    from .registry import EVALUATOR_REGISTRY, EXPORTER_REGISTRY, METHODS, MODEL_REGISTRY

    catalog.load()
    if cfg.model.type != "auto" and cfg.model.type not in MODEL_REGISTRY:
        raise ConfigError(f"model.type: '{cfg.model.type}' is not one of auto, {', '.join(MODEL_REGISTRY)}"
                          f"{_suggest(cfg.model.type, MODEL_REGISTRY)}")
    _check_names("eval.name", cfg.eval.name, EVALUATOR_REGISTRY, "no evaluator for")
    _check_names("save.formats", cfg.save.formats, EXPORTER_REGISTRY, "no exporter named")
    for key in ("seq_len", "bs"):
        if getattr(cfg.eval, key) < 1:
            raise ConfigError(f"eval.{key}: must be a positive integer")
    if cfg.eval.limit is not None and cfg.eval.limit < 1:
        raise ConfigError("eval.limit: must be a positive integer or null")
    if cfg.eval.num_fewshot < 0:
        raise ConfigError("eval.num_fewshot: must be >= 0")
    if cfg.save.real_embed_bit is not None and cfg.save.real_embed_bit != 8:
        raise ConfigError(f"save.real_embed_bit: {cfg.save.real_embed_bit} is not supported (8, or null to keep "
                          "embeddings and lm_head in the model's dtype)")
    if cfg.eval.inference and not cfg.save.save_real:
        raise ConfigError("eval.inference: profiling the deployed model needs save.save_real: true")
    if cfg.eval.inference and cfg.quant is None:
        raise ConfigError("eval.inference: needs a quant section (the float baseline is profiled alongside)")
    if cfg.quant is None:
        bad = [p for p in cfg.eval.eval_pos if p != "pretrain"]
        if bad:
            raise ConfigError(f"eval.eval_pos: '{bad[0]}' needs a quant section")
        return
    q = cfg.quant
    if q.method not in METHODS:
        raise ConfigError(f"quant.method: '{q.method}' is not one of {', '.join(METHODS)}"
                          f"{_suggest(q.method, METHODS)}")
    spec = METHODS[q.method]
    if not dataclasses.is_dataclass(q.special):
        q.special = from_dict(spec.settings, q.special, "quant.special")
    if q.weight is None and q.act is None:
        raise ConfigError("quant: set at least one of quant.weight and quant.act")
    for name in ("weight", "act", "kvcache"):
        qc = getattr(q, name)
        if qc is None:
            continue
        where = f"quant.{name}"
        if not 2 <= qc.bit <= 8:
            raise ConfigError(f"{where}.bit: {qc.bit} is outside the supported range 2..8")
        if qc.granularity == "per_group" and qc.group_size < 1:
            raise ConfigError(f"{where}.group_size: per_group needs a positive group_size (32 or 64 divide "
                              f"every width of SmolLM2 and Qwen2.5)")
        if qc.granularity != "per_group" and qc.group_size not in (-1, 0):
            raise ConfigError(f"{where}.group_size: only used with granularity per_group")
    if q.weight is not None and q.weight.granularity in ("per_token", "per_head"):
        raise ConfigError(f"quant.weight.granularity: '{q.weight.granularity}' applies to activations; use "
                          f"per_tensor, per_channel or per_group")
    for where, qc in (("quant.act", q.act), ("quant.kvcache", q.kvcache)):
        if qc is not None and qc.sym_grid != "absmax":
            raise ConfigError(f"{where}.sym_grid: '{qc.sym_grid}' is a weight grid (GPTQ's); activations and "
                              f"the KV cache use absmax")
    if q.weight is not None and q.weight.sym_grid != "absmax" and not q.weight.symmetric:
        raise ConfigError("quant.weight.sym_grid: applies to symmetric weights only (symmetric: true)")
    if q.act is not None and q.act.granularity in ("per_channel", "per_group"):
        raise ConfigError(f"quant.act.granularity: '{q.act.granularity}' is not supported for activations; "
                          f"use per_token, per_tensor or per_head")
    if spec.calibrates(cfg) and cfg.calib is None:
        needs = q.method if spec.needs_calib else "static activation quantization"
        raise ConfigError(f"calib: {needs} needs a calib section")
    if q.act is not None and q.act.static and q.act.granularity != "per_tensor":
        raise ConfigError("quant.act.static: static activation ranges are per_tensor only")
    kv = q.kvcache
    if kv is not None and kv.granularity in ("per_head", "per_channel"):
        raise ConfigError(f"quant.kvcache.granularity: '{kv.granularity}' is not offered: keys and values are "
                          f"[batch, kv heads, tokens, head_dim], so per_token already gives one range per token "
                          f"and head (per_group: per group inside a head; ranges across tokens are not supported)")
    if kv is not None and cfg.save.save_real and (kv.static or kv.granularity not in ("per_token", "per_group")
                                                  or kv.bit not in (4, 8)):
        raise ConfigError("quant.kvcache: save.save_real deploys an integer KV cache, which stores 8 or 4 bits "
                          "with a dynamic range per token (per_token or per_group)")
    if cfg.calib is not None:
        for key in ("n_samples", "seq_len", "bs"):
            if getattr(cfg.calib, key) < 1:
                raise ConfigError(f"calib.{key}: must be a positive integer")
    if spec.validate is not None:
        spec.validate(cfg)


def _check_names(key: str, names: list, registry, what: str) -> None:
    for name in names:
        if name not in registry:
            raise ConfigError(f"{key}: {what} '{name}' (available: {', '.join(sorted(registry))})"
                              f"{_suggest(name, registry)}")


def config_as_dict(cfg: Config) -> dict:
    """The resolved config as plain data (what results record and the sweep compares)."""
    return yaml.safe_load(dump_config(cfg))


def dump_config(cfg: Config) -> str:
    d = cfg.to_dict()
    if cfg.quant is not None and dataclasses.is_dataclass(cfg.quant.special):
        d["quant"]["special"] = dataclasses.asdict(cfg.quant.special)
    for key in _INTERNAL_KEYS:
        d.pop(key, None)
    return yaml.safe_dump(d, sort_keys=False)
