"""One results record per run: written atomically after every stage (:class:`RunRecord`) so nothing is
lost on a crash, and read back typed through one reader (:func:`read_result` -> :class:`RunResult`).

Schema (``schema_version`` 1)::

    {schema_version, status: running|complete|failed|interrupted, error?, started, finished?, task_id, profile,
     config (resolved), config_file, model: ModelInfo, environment: Environment, git: {commit, dirty},
     data: {dataset: where it was read}, calibration?: {...}, method?: MethodInfo,
     metrics: {eval_pos: {dataset: Metric}}, timings: {stage: seconds}, quant_cost?: QuantCost,
     blocks?: [{...} per block], log: [...], <extension sections>?: inference (llmc_slm Track 2), rotation, ...}

Each section is a dataclass here with ``to_dict`` / ``from_dict``. ``from_dict`` never raises on what an
older or partial file holds: a missing or malformed section is None (or empty), a field of the wrong type
is None, and keys a dataclass does not name are kept in its ``extra`` (and written back by ``to_dict``,
which leaves out fields without a value), so reading and rewriting a record loses nothing but nulls. Sections this module does not know (an extension's, e.g.
``inference``) are kept as written in :attr:`RunResult.sections`.

Per-item outcomes (``<results stem>.items.json.gz``, :func:`items_path`, :func:`read_items`) sit beside
the record; a metric that has them names the file in ``items_file``. Records without one read as before.

Records written before the pipeline recorded ``method`` get one from their config
(:meth:`MethodInfo.from_config`). This module imports neither torch nor the algorithms.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gzip
import json
import math
import os
import platform
import subprocess
import sys
import time as _time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

SCHEMA_VERSION = 1


class ResultsError(ValueError):
    """A file that is not a readable results record (not JSON, or JSON of something else)."""


# ------------------------------------------------------------------------------------- typed fields
def as_number(x) -> Optional[float]:
    """A float, or None for anything that is not a number (None, "N/A", a bool, a dict...)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def as_int(x) -> Optional[int]:
    """An int, or None for anything that is not a finite number."""
    v = as_number(x)
    return None if v is None or not math.isfinite(v) else int(v)


_num, _int = as_number, as_int


_COERCE = {float: _num, int: _int, str: lambda x: x if isinstance(x, str) else None,
           bool: lambda x: x if isinstance(x, bool) else None,
           dict: lambda x: x if isinstance(x, dict) else {}, list: lambda x: x if isinstance(x, list) else []}


def _field_kind(tp) -> type:
    """``Optional[float]`` -> float, ``dict[str, float]`` -> dict, ``list`` -> list."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union and len(args) == 1:
        tp = args[0]
    return typing.get_origin(tp) or tp


class Section:
    """A record section: its known keys as typed fields, every other key in ``extra``."""

    extra: dict

    @classmethod
    def from_dict(cls, d: Any):
        """The section, or None when ``d`` is not a dict; fields of the wrong type read as None."""
        if not isinstance(d, dict):
            return None
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {name: _COERCE.get(_field_kind(hints[name]), lambda x: x)(d[name]) for name in names if name in d}
        return cls(**kwargs, extra={k: v for k, v in d.items() if k not in names})

    def get(self, key: str, default=None):
        """A field's value, or an ``extra`` key's (for names chosen at run time, e.g. a table metric)."""
        names = {f.name for f in dataclasses.fields(self)} - {"extra"}
        value = getattr(self, key) if key in names else self.extra.get(key)
        return default if value is None else value

    def to_dict(self) -> dict:
        """The fields that have a value (a perplexity has no ``acc``, a CPU run no ``gpu``), then ``extra``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra" and getattr(self, f.name) is not None}
        out.update(self.extra)
        return out


@dataclass
class MethodInfo(Section):
    """``method``: the algorithm's name, the label tables show (a named variant, e.g. "OmniQuant+KB") and
    whether it learns from calibration data (SLMQ_quant compares only methods that do)."""
    name: Optional[str] = None
    label: Optional[str] = None
    calibrated: Optional[bool] = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, quant: Any) -> Optional["MethodInfo"]:
        """What a record written before ``method`` was recorded ran, from its resolved ``config.quant``:
        RTN was that code's one method without calibration, OmniQuant with ``keep_best: true`` (its
        default then) is the variant now labelled "OmniQuant+KB", and SpinQuant with ``learn_rotations:
        false`` the one labelled "SpinQuant w/o learning"."""
        if not isinstance(quant, dict):
            return None
        name = str(quant.get("method") or "?")
        special = quant.get("special") if isinstance(quant.get("special"), dict) else {}
        label = name
        if name == "OmniQuant" and special.get("keep_best") is True:
            label = "OmniQuant+KB"
        elif name == "SpinQuant" and special.get("learn_rotations") is False:
            label = "SpinQuant w/o learning"
        return cls(name=name, label=label, calibrated=name != "RTN", extra={"from_config": True})


@dataclass
class ModelInfo(Section):
    """``model``: where the model came from (``llmc.models.loading.ModelSource.describe``) and ``arch``."""
    name: Optional[str] = None
    kind: Optional[str] = None
    path: Optional[str] = None
    sha256: Optional[str] = None
    pinned_sha256: Optional[str] = None
    origin: Optional[str] = None
    notes: list = field(default_factory=list)
    arch: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


@dataclass
class Environment(Section):
    """``environment``: software versions and the device the run used (:func:`environment`)."""
    device: Optional[str] = None
    dtype: Optional[str] = None
    python: Optional[str] = None
    torch: Optional[str] = None
    transformers: Optional[str] = None
    platform: Optional[str] = None
    cpu: Optional[str] = None
    gpu: Optional[str] = None
    torch_threads: Optional[int] = None
    cpu_count: Optional[int] = None
    extra: dict = field(default_factory=dict)

    def describe(self) -> str:
        """``CPU Intel(R) Xeon(R)`` / ``GPU NVIDIA H200`` / the device type."""
        dev = self.device or "?"
        if dev == "cuda":
            return f"GPU {self.gpu or ''}".strip()
        if dev == "cpu":
            return f"CPU {self.cpu or ''}".strip()
        return dev


@dataclass
class Metric(Section):
    """One dataset's result at one evaluation position. Perplexity: ``ppl`` over ``windows`` of
    ``seq_len`` tokens (of ``windows_in_split``). Accuracy (the harness): ``acc`` / ``acc_norm`` with their
    standard errors over ``n`` of ``n_total`` items, and ``table_metric`` / ``table_value`` /
    ``table_stderr``, the one the paper's tables use. Anything else (subjects, data, seconds) in ``extra``."""
    ppl: Optional[float] = None
    windows: Optional[int] = None
    windows_in_split: Optional[int] = None
    seq_len: Optional[int] = None
    acc: Optional[float] = None
    acc_stderr: Optional[float] = None
    acc_norm: Optional[float] = None
    acc_norm_stderr: Optional[float] = None
    n: Optional[int] = None
    n_total: Optional[int] = None
    subset: Optional[bool] = None
    limit: Optional[int] = None
    num_fewshot: Optional[int] = None
    table_metric: Optional[str] = None
    table_value: Optional[float] = None
    table_stderr: Optional[float] = None
    wall_seconds: Optional[float] = None
    extra: dict = field(default_factory=dict)


@dataclass
class QuantCost(Section):
    """``quant_cost`` (Track 3): wall time and peak memory of quantization only, measured by
    ``llmc.profiling.Measure``; ``memory_kind`` is ``cuda_max_allocated`` or ``cpu_peak_rss``."""
    time_s: Optional[float] = None
    peak_mem_bytes: Optional[int] = None
    peak_mem_mb: Optional[float] = None
    memory_kind: Optional[str] = None
    start_mem_bytes: Optional[int] = None
    stages_s: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.peak_mem_mb is None and self.peak_mem_bytes is not None:
            self.peak_mem_mb = self.peak_mem_bytes / 2 ** 20
        if self.peak_mem_bytes is None and self.peak_mem_mb is not None:
            self.peak_mem_bytes = int(self.peak_mem_mb * 2 ** 20)

    @property
    def time_min(self) -> Optional[float]:
        return None if self.time_s is None else self.time_s / 60


# ----------------------------------------------------------------------------------------- the record
_CORE = ("schema_version", "status", "error", "started", "finished", "task_id", "profile", "config", "config_file",
         "model", "environment", "git", "data", "calibration", "method", "metrics", "timings", "quant_cost",
         "blocks", "log")


@dataclass
class RunResult:
    """A results record, typed. ``sections`` holds every other top-level key as written (``inference``,
    ``rotation``, ``divergence``, ``sweep``...); ``method`` is the recorded one or, for older records,
    :meth:`MethodInfo.from_config` (None for a float run)."""
    path: Optional[Path] = None
    schema_version: Optional[int] = None
    status: str = "unknown"
    error: Optional[str] = None
    started: Optional[str] = None
    finished: Optional[str] = None
    task_id: Optional[str] = None
    profile: Optional[str] = None
    config: dict = field(default_factory=dict)
    config_file: Optional[str] = None
    model: ModelInfo = field(default_factory=ModelInfo)
    environment: Environment = field(default_factory=Environment)
    git: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    calibration: Optional[dict] = None
    method: Optional[MethodInfo] = None
    metrics: dict = field(default_factory=dict)      # eval_pos -> dataset -> Metric
    timings: dict = field(default_factory=dict)
    quant_cost: Optional[QuantCost] = None
    blocks: list = field(default_factory=list)
    log: list = field(default_factory=list)
    sections: dict = field(default_factory=dict)

    @property
    def quant(self) -> Optional[dict]:
        """The resolved ``config.quant`` (None for a float run)."""
        q = self.config.get("quant")
        return q if isinstance(q, dict) else None

    @property
    def is_float(self) -> bool:
        return self.quant is None

    @property
    def calibrated(self) -> Optional[bool]:
        """Whether the method learns from calibration data (None for a float run)."""
        return None if self.method is None else self.method.calibrated

    def at(self, position: str) -> dict:
        """``{dataset: Metric}`` at one evaluation position (empty when not evaluated there)."""
        return self.metrics.get(position, {})

    def section(self, name: str) -> Any:
        """An extension's section as written, or None."""
        return self.sections.get(name)

    @classmethod
    def from_dict(cls, d: dict, path: Optional[Path] = None) -> "RunResult":
        if not is_result(d):
            raise ResultsError(f"{path or 'data'}: not a results record")
        cfg = d.get("config") if isinstance(d.get("config"), dict) else {}
        metrics = {}
        if isinstance(d.get("metrics"), dict):
            for pos, by_ds in d["metrics"].items():
                if isinstance(by_ds, dict):
                    metrics[pos] = {ds: m for ds, m in ((ds, Metric.from_dict(v)) for ds, v in by_ds.items()) if m}
        method = MethodInfo.from_dict(d.get("method"))
        if method is None or not method.label:
            method = MethodInfo.from_config(cfg.get("quant"))
        timings = d.get("timings") if isinstance(d.get("timings"), dict) else {}
        return cls(
            path=Path(path) if path else None, schema_version=_int(d.get("schema_version")),
            status=effective_status(d), error=_killed_error(d) or _str(d.get("error")), started=_str(d.get("started")),
            finished=_str(d.get("finished")), task_id=_str(d.get("task_id")), profile=_str(d.get("profile")),
            config=cfg, config_file=_str(d.get("config_file")),
            model=ModelInfo.from_dict(d.get("model")) or ModelInfo(),
            environment=Environment.from_dict(d.get("environment")) or Environment(),
            git=_dict(d.get("git")), data=_dict(d.get("data")),
            calibration=d.get("calibration") if isinstance(d.get("calibration"), dict) else None,
            method=method, metrics=metrics,
            timings={k: v for k, v in timings.items() if _num(v) is not None or (k == "stages" and isinstance(v, dict))},
            quant_cost=_quant_cost(d.get("quant_cost")),
            blocks=d.get("blocks") if isinstance(d.get("blocks"), list) else [],
            log=d.get("log") if isinstance(d.get("log"), list) else [],
            sections={k: v for k, v in d.items() if k not in _CORE})


def _killed_error(d: dict) -> Optional[str]:
    if effective_status(d) != "killed":
        return None
    return (f"killed from outside during stage '{d.get('stage') or '?'}' (process {d['process'].get('pid')} "
            f"is gone: out of memory or SIGKILL?)")


def _str(x) -> Optional[str]:
    return None if x is None else str(x)


def _dict(x) -> dict:
    return x if isinstance(x, dict) else {}


def _quant_cost(d) -> Optional[QuantCost]:
    """A quant_cost with a time, or None (a section without ``time_s`` says nothing)."""
    c = QuantCost.from_dict(d)
    return c if c is not None and c.time_s is not None else None


def this_process() -> dict:
    """Who writes a record: host, pid and the process's start time (Linux ``/proc/<pid>/stat`` field 22,
    so that a reused pid is not mistaken for the writer)."""
    pid = os.getpid()
    return {"host": platform.node(), "pid": pid, "start_ticks": _start_ticks(pid)}


def _start_ticks(pid: int) -> Optional[int]:
    """The process's start time, or None where it is not running: no such process, or a zombie (state Z or X:
    it has exited and only waits for its parent to reap it, so it writes nothing more)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def writer_alive(process: Any) -> Optional[bool]:
    """Whether the process that wrote a record still runs: True / False on the same host, None when it
    cannot be told (another host, no process recorded, no /proc)."""
    if not isinstance(process, dict) or process.get("host") != platform.node():
        return None
    pid = _int(process.get("pid"))
    if pid is None:
        return None
    ticks = _start_ticks(pid)
    if ticks is None:
        return False if Path("/proc/self/stat").exists() else None
    return process.get("start_ticks") in (None, ticks)


def effective_status(data: dict) -> str:
    """The record's status, with ``running`` read as ``killed`` when its writer is known to be gone (a
    run ended from outside: out of memory, SIGKILL); every other status as written."""
    status = str(data.get("status") or "unknown")
    if status == "running" and writer_alive(data.get("process")) is False:
        return "killed"
    return status


# -------------------------------------------------------------------------------- per-item outcomes
ITEMS_SCHEMA = 1
ITEMS_SUFFIX = ".items.json.gz"


def items_path(results_path: str | Path) -> Path:
    """``run.json`` -> ``run.items.json.gz`` beside it: the per-item outcomes of every evaluation
    (``{schema_version, positions: {eval_pos: {dataset: {...}}}}``; an accuracy task's columns are
    ``llmc_slm.tasks.lmeval.per_item``'s, WikiText-2's ``window_nll`` / ``window_tokens``)."""
    p = Path(results_path)
    return p.with_name(p.stem + ITEMS_SUFFIX)


def read_items(path: str | Path) -> dict:
    """An items file as ``{eval_pos: {dataset: {...}}}``; ResultsError when it cannot be read."""
    try:
        data = json.loads(gzip.decompress(Path(path).read_bytes()))
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: unreadable items file ({type(e).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("positions"), dict):
        raise ResultsError(f"{path}: not an items file")
    return data["positions"]


def _json_plain(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def is_result(data: Any) -> bool:
    """Whether a JSON value is a results record (``schema_version``, ``status``, and config or metrics)."""
    return isinstance(data, dict) and "schema_version" in data and "status" in data \
        and ("config" in data or "metrics" in data)


def read_result(path: str | Path) -> RunResult:
    """The one reader of results files: a :class:`RunResult`, from records of any age written by this
    code (missing sections are None or empty). ResultsError for a file that is not a record (unreadable,
    not JSON, another JSON file)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"unreadable JSON ({type(e).__name__})") from None
    return RunResult.from_dict(data, path)


# ------------------------------------------------------------------------------------------ writing
def environment(device, dtype) -> dict:
    """The ``environment`` section for a run on ``device`` (a torch.device) in ``dtype`` (a torch.dtype)."""
    import torch
    import transformers

    from .utils import cpu_name
    env = Environment(python=sys.version.split()[0], torch=torch.__version__, transformers=transformers.__version__,
                      platform=platform.platform(), device=device.type, dtype=str(dtype).replace("torch.", ""),
                      cpu=cpu_name(), torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
                      gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    return env.to_dict()


def git_info() -> dict:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty}


def _plain(value) -> Any:
    """A section as JSON-ready data: a dataclass section through its ``to_dict``, anything else as is."""
    if isinstance(value, Section):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


class RunRecord:
    """A results dict bound to its file; ``save()`` rewrites the file atomically. Writers set sections
    with :meth:`set_section` (a dataclass of this module, or a dict) or through ``data``."""

    def __init__(self, path: Path, data: dict):
        self.path = Path(path)
        self.data = data
        self._items: dict = {"schema_version": ITEMS_SCHEMA, "positions": {}}

    @classmethod
    def start(cls, path: Path, **fields) -> "RunRecord":
        data = {"schema_version": SCHEMA_VERSION, "status": "running",
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "process": this_process(), "stage": "start", "metrics": {}, "timings": {}, "log": []}
        data.update({k: _plain(v) for k, v in fields.items()})
        rec = cls(path, data)
        rec.save()
        return rec

    def set_section(self, name: str, value, save: bool = True) -> None:
        """Set one top-level section (``quant_cost``, ``method``, ``model``, an extension's ``inference``...)
        from a dataclass (its ``to_dict``) or plain data, then save."""
        self.data[name] = _plain(value)
        if save:
            self.save()

    def set_metric(self, eval_pos: str, dataset: str, value) -> None:
        """One dataset's result (a :class:`Metric` or a dict) at one evaluation position, then save."""
        self.data["metrics"].setdefault(eval_pos, {})[dataset] = _plain(value)
        self.save()

    @property
    def items_path(self) -> Path:
        return items_path(self.path)

    def set_items(self, eval_pos: str, dataset: str, items: dict) -> str:
        """One dataset's per-item outcomes at one evaluation position into the run's items file
        (:func:`items_path`, rewritten atomically); returns its file name, which the metric records as
        ``items_file``."""
        from .utils import atomic_write_bytes
        self._items["positions"].setdefault(eval_pos, {})[dataset] = items
        data = json.dumps(self._items, separators=(",", ":"), default=_json_plain).encode()
        atomic_write_bytes(self.items_path, gzip.compress(data, compresslevel=6, mtime=0))
        return self.items_path.name

    def note(self, message: str) -> None:
        self.data["log"].append(message)

    def stage(self, name: str) -> None:
        """The stage the run enters (``load``, ``calibrate``, ``quantize``, ``evaluate:<pos>``...), saved
        at once: a run killed from outside (out of memory, SIGKILL) leaves ``status: running`` and the stage
        it died in, and :func:`effective_status` reads it as ``killed``. The wall time of the stage it
        leaves is added to ``timings.stages`` under its kind (the name before ``:``), so that a folder's
        time can be summed by stage (quantize, evaluate, post-run for Track 2, ...)."""
        now = _time.perf_counter()
        self._close_stage(now)
        self.data["stage"] = name
        self.data.pop("progress", None)
        self._stage_t0 = now
        self.save()

    def progress(self, what: str, done: int, total: int | None) -> None:
        """Where the stage's long loop stands (``llmc.progress``: blocks, windows, requests), saved at once;
        cleared by the next :meth:`stage`."""
        self.data["progress"] = {"what": what, "done": done, "total": total,
                                 "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        self.save()

    def _close_stage(self, now: float) -> None:
        t0 = getattr(self, "_stage_t0", None)
        if t0 is None:
            return
        kind = str(self.data.get("stage", "")).split(":", 1)[0].strip() or "start"
        stages = self.data["timings"].setdefault("stages", {})
        stages[kind] = stages.get(kind, 0.0) + (now - t0)
        self._stage_t0 = None

    def finish(self, status: str = "complete", error: str | None = None) -> None:
        self._close_stage(_time.perf_counter())
        self.data.pop("progress", None)
        self.data["status"] = status
        if error:
            self.data["error"] = error
        self.data["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.save()

    def result(self) -> RunResult:
        """The record as it stands, typed."""
        return RunResult.from_dict(self.data, self.path)

    def save(self) -> None:
        from .utils import atomic_write_json
        atomic_write_json(self.path, self.data)
