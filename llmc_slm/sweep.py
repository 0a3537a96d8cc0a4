"""A grid of experiments (models x methods x bits [x seeds], plus each model's float baseline), one process
per run, resumable, on this machine or on a Ray cluster. The command line is ``tools/sweep.py``; this module
holds the logic, ``llmc_slm/executors/`` the places a run can run (local processes, Ray tasks).

Each run is ``python -m llmc --config configs/<model>/<method>_<bits>.yml ...`` (the baseline:
``configs/<model>/fp16.yml``) with its stdout and stderr in ``<results>/logs/<model>/<run>.log`` and its
results where the engine puts them: ``llmc.paths.results_path`` of the config that
``llmc.config.load_config`` resolves from the same arguments, so the sweep and the engine always agree.

What happens to a run, decided from its results file before anything is launched:

- ``complete`` and its recorded ``config`` equals the config this sweep would run: skipped;
  ``complete`` with a different config: rerun (the log names the keys that differ). ``torch_dtype: auto``
  is compared as the dtype it resolved to (the record's ``environment.dtype``, and this machine's for the
  plan), and a sweep that would leave one model's folder with runs in two dtypes is refused
  (:func:`check_one_dtype`);
- ``failed`` with the same config: reported as failed, rerun only with ``retry_failed``
  (a failed run whose config has changed since is rerun);
- ``interrupted``, no file, an unreadable file: run;
- ``running``: rerun when stale (the process the previous sweep started for it is gone); skipped and
  reported while that process is still alive (an orphan of a sweep killed with SIGKILL).

The manifest ``<results>/sweep.json`` lists this sweep's runs and carries, under ``earlier_runs``, the
entries of earlier sweeps into the same folder that this one does not plan (:func:`earlier_runs`): a grid
run cell by cell keeps one manifest, and a run still alive from an earlier sweep is recognised.

An interrupted or stale run that got past its quantization left its quantized model beside its results
(``llmc.resume``): the engine starts it there, with the evaluations it finished kept (the plan says
"from its quantized model").

A child that exits non-zero normally leaves ``status: failed`` written by the engine. When it was killed
(signal 9: out of memory?) or timed out, its file may still say ``running`` or not exist: the sweep then
writes ``status: failed`` with the ``error`` and a ``sweep`` block (command, return code, log) itself.

A run whose process died of a signal nobody in the sweep sent (or, on Ray, whose worker or node died) is
started again up to ``retries`` times before it is recorded as failed.

SIGINT / SIGTERM on the sweep sends SIGTERM to the running children (the engine records
``interrupted``), waits for them, writes the manifest ``<results>/sweep.json`` and returns 130.
Otherwise the result is 0 when every run is complete, 1 when any is not. Whichever the executor, the
results, logs and manifest are written here, in the same layout.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shlex
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from llmc.errors import UserError, WorldError
from llmc.results import writer_alive
from llmc_slm.executors import EXECUTORS, Cell, Executor, Outcome, make_executor

PROJECT_ROOT = Path(__file__).resolve().parents[1]
METHODS = ("rtn", "smooth", "gptq", "omni", "spin")
METHOD_ALIASES = {"rtn": "rtn", "smoothquant": "smooth", "smooth": "smooth", "gptq": "gptq",
                  "omniquant": "omni", "omni": "omni", "omniquant+kb": "omni_kb", "omni_kb": "omni_kb",
                  "quarot": "quarot", "awq": "awq", "spinquant": "spin", "spin": "spin"}
BITS = ("w8a8", "w4a8")
BASELINE = "fp16"
RESULT_ENV = "SLMQUANT_SWEEP_RESULT"    # every child gets the results file the sweep expects ...
CONFIG_ENV = "SLMQUANT_SWEEP_CONFIG"    # ... and the resolved config (JSON), for wrappers and test engines
MANIFEST = "sweep.json"


def default_engine() -> list[str]:
    return [sys.executable, "-m", "llmc"]


def default_configs_dir() -> Path:
    """``configs/`` in the working directory if there is one, else the project's."""
    return Path("configs") if Path("configs").is_dir() else PROJECT_ROOT / "configs"


@dataclass
class Run:
    """One planned experiment: what is run, where its results and log go, and what happened to it."""
    model: str
    method: str                  # config stem's method part (``fp16`` for the baseline)
    bits: str | None
    config: Path
    command: list[str]
    result: Path
    log: Path
    expected: dict               # the resolved config the engine will record (JSON form)
    eval_pos: str                # the position whose metrics summarise the run
    action: str = "run"          # run | skip
    reason: str = ""
    status: str = "pending"      # pending | running | complete | failed | interrupted
    seconds: float | None = None
    returncode: int | None = None
    error: str | None = None
    pid: int | None = None
    seed: int | None = None      # base.seed and calib.seed of this run (``--seeds``); None: the config's
    dtype: str | None = None     # the dtype it computes in here (model.torch_dtype, ``auto`` resolved)
    node: str | None = None      # where it last ran (Ray: "<ip> <node id>")
    attempts: int = 0            # processes this sweep started for it (more than 1: retried)

    @property
    def stem(self) -> str:
        return self.result.stem

    @property
    def name(self) -> str:
        return f"{self.model}/{self.stem}"

    def manifest_entry(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "expected"}
        d.update(name=self.name, config=str(self.config), result=str(self.result), log=str(self.log),
                 command_line=shlex.join(self.command))
        return d


# ------------------------------------------------------------------------------------------ planning
def method_stem(name: str) -> str:
    """``SmoothQuant`` / ``smooth`` -> ``smooth``; an unknown name is taken as a config stem as is."""
    return METHOD_ALIASES.get(name.lower(), name)


def _dedupe(items) -> list:
    return list(dict.fromkeys(items))


def parse_sets(sets: list[str] | None) -> list[str]:
    """``['eval.bs=16']`` -> ``['--eval.bs', '16']``."""
    out = []
    for s in sets or []:
        key, sep, value = s.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise UserError(f"--set: '{s}' is not key=value (e.g. eval.bs=16)")
        out += [f"--{key}", value]
    return out


def _yaml_list(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def plan(models: list[str], methods: list[str] | None = None, bits: list[str] | None = None, *,
         results: str | Path = "results", configs_dir: str | Path | None = None, profile: str | None = None,
         limit: int | None = None, eval_names: list[str] | None = None, inference: bool = False,
         sets: list[str] | None = None, baseline: bool = True, engine: list[str] | None = None,
         seeds: list[int] | None = None, skip_missing: bool = False) -> list[Run]:
    """Expand the grid into runs, each with its command, results file and resolved config.

    ``skip_missing``: method x bits combinations without a config file (``awq_w4a16`` exists,
    ``quarot_w4a16`` does not) are left out with a line on stderr instead of failing the sweep; a grid
    left with no method run is still an error.

    ``seeds``: each method run once per seed, with ``base.seed`` and ``calib.seed`` set to it (and
    ``quant.special.rotation_seed`` for a method that draws random rotations: SpinQuant, QuaRot) and the
    results file named ``..._seed<S>`` (the engine's ``--task_id``); the float baseline, which calibrates
    nothing, once. Every config file is checked to exist before any is read; any config error is a
    ``UserError``."""
    from llmc.config import load_config, load_profile
    from llmc.config import config_as_dict as _config_dict  # the engine's recorded config
    from llmc.paths import results_path  # the engine's own naming

    configs_dir = Path(configs_dir) if configs_dir is not None else default_configs_dir()
    engine = list(engine) if engine else default_engine()
    methods = _dedupe(method_stem(m) for m in (methods or METHODS))
    bits = _dedupe(b.lower() for b in (bits or BITS))
    models = _dedupe(models)
    seeds = _dedupe(int(x) for x in seeds) if seeds else []
    seeded = {"base.seed", "calib.seed"} & {k.partition("=")[0].strip().lstrip("-") for k in sets or []}
    if seeds and seeded:
        raise UserError(f"--seeds sets base.seed and calib.seed: drop --set {', '.join(sorted(seeded))}")
    if not models:
        raise UserError("--models: name at least one model folder under configs/")
    for model in models:
        if not (configs_dir / model).is_dir():
            known = sorted(p.name for p in configs_dir.iterdir() if p.is_dir() and p.name != "profiles") \
                if configs_dir.is_dir() else []
            raise UserError(f"--models: no folder {configs_dir / model} (known: {', '.join(known) or 'none'})")

    grid = []
    for model in models:
        if baseline:
            grid.append((model, BASELINE, None, configs_dir / model / f"{BASELINE}.yml", None))
        for method in methods:
            for b in bits:
                for seed in seeds or [None]:
                    grid.append((model, method, b, configs_dir / model / f"{method}_{b}.yml", seed))
    missing = _dedupe(str(g[3]) for g in grid if not g[3].is_file())
    if missing and skip_missing and any(g[3].is_file() for g in grid if g[1] != BASELINE):
        print(f"skipped (no config): {', '.join(missing)}", file=sys.stderr)
        grid = [g for g in grid if g[3].is_file()]
    elif missing:
        raise UserError(f"missing config file{'s' if len(missing) > 1 else ''}: {', '.join(missing)}"
                        + ("" if skip_missing else " (--skip-missing leaves such combinations out)"))

    # the baseline gets the profile only if the profile has something for it (its `default` entry);
    # otherwise it would only rename the file (fp16_cpu.json) without changing the run
    baseline_profile = profile if profile and load_profile(profile, None) else None
    extra = parse_sets(sets)
    results = Path(results)
    runs = []
    for model, method, b, config, seed in grid:
        is_base = method == BASELINE
        overrides = ["--save.save_path", str(results / model)]
        if limit is not None:
            overrides += ["--eval.limit", str(limit)]
        if eval_names:
            overrides += ["--eval.name", _yaml_list(eval_names)]
        pos = "pretrain" if is_base else "fake_quant"
        overrides += ["--eval.eval_pos", _yaml_list([pos])]
        if inference and not is_base:
            overrides += ["--save.save_real", "true", "--eval.inference", "true"]
        overrides += extra
        task_id = None
        run_profile = baseline_profile if is_base else profile
        try:
            if seed is not None:
                overrides += ["--base.seed", str(seed), "--calib.seed", str(seed)]
                task_id = f"seed{seed}"
                # a rotation method's random rotations are drawn from their own seed: it follows too
                unseeded = load_config(config, overrides, profile=run_profile, task_id=task_id)
                if hasattr(getattr(unseeded.quant, "special", None), "rotation_seed"):
                    overrides += ["--quant.special.rotation_seed", str(seed)]
            cfg = load_config(config, overrides, profile=run_profile, task_id=task_id)
        except UserError as e:
            raise UserError(f"{config}: {e}") from None
        command = [*engine, "--config", str(config), *(["--profile", run_profile] if run_profile else []),
                   *(["--task_id", task_id] if task_id else []), "--quiet", *overrides]
        result = results_path(cfg)
        runs.append(Run(model=model, method=method, bits=b, config=config, command=command, result=result,
                        log=results / "logs" / model / f"{result.stem}.log",
                        expected=json.loads(json.dumps(_config_dict(cfg))),
                        eval_pos=cfg.eval.eval_pos[-1] if cfg.eval.eval_pos else pos, seed=seed,
                        dtype=resolved_dtype(cfg.model.torch_dtype, cfg.model.device)))
    seen = {}
    for r in runs:
        if r.result in seen:
            raise UserError(f"{r.config} and {seen[r.result]} would write the same results file {r.result}")
        seen[r.result] = r.config
    return runs


def resolved_dtype(torch_dtype: str, device: str = "auto") -> str:
    """What ``model.torch_dtype`` computes in on this machine, as the engine records it
    (``environment.dtype``): ``auto`` is bfloat16 on a CPU with AMX or AVX512-BF16, float32 on other CPUs,
    float16 on CUDA (``llmc.utils.pick_dtype``). A Ray cluster of unlike machines should pin the dtype."""
    from llmc.utils import pick_device, pick_dtype
    return str(pick_dtype(torch_dtype, pick_device(device))).removeprefix("torch.")


# ------------------------------------------------------------------------------------------ deciding
def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _flatten(d, prefix="") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, dict) and v else {key: v})
    return out


# Config keys that decide how fast a run goes, never its figures (each one's tests show the same bits either
# way; eval.reference_summary the same bits but for the KL, equal within float32 rounding): a complete run
# recorded with another value, or before the key existed, is not rerun for them.
SPEED_ONLY_KEYS = frozenset({"eval.reference_cache", "eval.reference_summary", "save.resume"})


def same_config(old: dict | None, new: dict) -> bool:
    """Whether a recorded config and the one the sweep would run give the same figures: equal but for
    :data:`SPEED_ONLY_KEYS`."""
    return old == new or (old is not None and not _differing_keys(old, new))


def _differing_keys(old: dict | None, new: dict) -> list[str]:
    a, b = _flatten(old or {}), _flatten(new)
    return [k for k in dict.fromkeys([*b, *a])
            if k not in SPEED_ONLY_KEYS and a.get(k, "<unset>") != b.get(k, "<unset>")]


def config_diff(old: dict | None, new: dict, most: int = 4) -> str:
    """``eval.limit: 100 -> 200, ...`` (empty when equal but for :data:`SPEED_ONLY_KEYS`)."""
    a, b = _flatten(old or {}), _flatten(new)
    keys = _differing_keys(old, new)
    parts = [f"{k}: {a.get(k, '<unset>')} -> {b.get(k, '<unset>')}" for k in keys[:most]]
    return ", ".join(parts) + (f" (+{len(keys) - most} more)" if len(keys) > most else "")


def _pid_alive(pid: int | None, config: Path) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # guard against a reused pid where /proc exists
        return str(config).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _entries(manifest: dict | None, key: str) -> list[dict]:
    listed = manifest.get(key) if isinstance(manifest, dict) else None
    return [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []


def earlier_runs(previous: dict | None, runs: list[Run]) -> list[dict]:
    """The previous manifest's entries for results this sweep does not plan (its own runs, each with the
    command line of its sweep as ``argv``, and those it carried): a grid run in several invocations into one
    folder keeps one manifest of all its runs, each as its last sweep left it (the results files say more)."""
    planned = {str(r.result) for r in runs}
    own = [{**e, "argv": previous.get("argv")} for e in _entries(previous, "runs")]
    kept: dict = {}
    for e in own + _entries(previous, "earlier_runs"):
        if e.get("result") not in planned:
            kept.setdefault(e.get("result"), e)
    return list(kept.values())


def recorded_dtype(data: dict) -> str | None:
    """The dtype a recorded run computed in: ``environment.dtype``, else an explicit ``model.torch_dtype``."""
    env = data.get("environment") if isinstance(data.get("environment"), dict) else {}
    model = (data.get("config") or {}).get("model") if isinstance(data.get("config"), dict) else None
    asked = model.get("torch_dtype") if isinstance(model, dict) else None
    return env.get("dtype") or (asked if asked not in (None, "auto") else None)


def _with_dtype(config: dict | None, dtype: str | None) -> dict | None:
    """``config`` with ``model.torch_dtype: auto`` replaced by the dtype it resolved to (when known)."""
    model = config.get("model") if isinstance(config, dict) else None
    if dtype and isinstance(model, dict) and model.get("torch_dtype") == "auto":
        return {**config, "model": {**model, "torch_dtype": dtype}}
    return config


def _compared(data: dict, r: Run) -> tuple[dict | None, dict]:
    """The recorded config and the planned one with ``auto`` dtypes resolved (the record's where it ran, the
    plan's here), so that a run recorded as ``auto`` on a bfloat16 CPU matches ``torch_dtype: bfloat16`` and
    not ``auto`` on a float32 CPU. Records without a dtype compare as written."""
    done = recorded_dtype(data)
    return _with_dtype(data.get("config"), done), _with_dtype(r.expected, r.dtype if done else None)


def decide(runs: list[Run], retry_failed: bool = False, previous: dict | None = None) -> None:
    """Set each run's ``action``, ``reason`` and (for skipped runs) ``status`` from its results file."""
    prev = {e.get("result"): e for e in _entries(previous, "earlier_runs") + _entries(previous, "runs")}
    for r in runs:
        data = read_json(r.result)
        r.action, r.status, r.reason = "run", "pending", ""
        if data is None:
            r.reason = "unreadable results, rerun" if r.result.exists() else "no results yet"
            continue
        status = data.get("status")
        old, new = _compared(data, r)
        same = same_config(old, new)
        if status == "complete":
            if same:
                r.action, r.status, r.reason = "skip", "complete", "complete"
                r.seconds = _record_seconds(data)
            else:
                r.reason = f"config changed ({config_diff(old, new)}), rerun"
        elif status == "failed":
            r.error = data.get("error")
            if retry_failed:
                r.reason = "failed before, retried (--retry-failed)"
            elif not same:
                r.reason = f"failed before with another config ({config_diff(old, new)}), rerun"
            else:
                r.action, r.status = "skip", "failed"
                r.reason = "failed before (rerun with --retry-failed)"
        elif status == "running":
            pid = (prev.get(str(r.result)) or {}).get("pid")
            if _pid_alive(pid, r.config):
                r.action, r.status, r.reason = "skip", "running", f"still running elsewhere (pid {pid})"
                r.pid = pid
            else:
                r.reason = "stale 'running' record (its process is gone), rerun" + _resume_note(r.result)
        elif status == "interrupted":
            r.reason = "interrupted before, rerun" + _resume_note(r.result)
        else:
            r.reason = f"status {status!r}, rerun"


def check_one_dtype(runs: list[Run]) -> None:
    """Refuse (``UserError``) to put runs computing in one dtype into a model's results folder whose complete
    runs computed in another: the reports pair every quantized run with the folder's float run, and the
    dtype alone moves the figures, which the paired statistics would count as the method's effect. It happens
    silently otherwise: ``torch_dtype: auto`` is bfloat16 on a CPU with AMX and float32 on one without, so a
    grid continued on another machine would change dtype under the same config. Call after :func:`decide`:
    results about to be rerun with a dtype asked for by name (not ``auto``) do not count, so rerunning a
    folder in another dtype is allowed when it is asked for, never by accident."""
    rerun = {r.result for r in runs
             if r.action == "run" and (r.expected.get("model") or {}).get("torch_dtype") != "auto"}
    for folder in dict.fromkeys(r.result.parent for r in runs):
        planned = sorted({r.dtype for r in runs if r.action == "run" and r.result.parent == folder and r.dtype})
        if not planned:
            continue
        kept: dict[str, list[str]] = {}
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            data = None if path in rerun else read_json(path)
            dtype = recorded_dtype(data) if data and data.get("status") == "complete" else None
            if dtype:
                kept.setdefault(dtype, []).append(path.name)
        clash = {d: names for d, names in kept.items() if d not in planned}
        if clash:
            were = "; ".join(f"{len(n)} in {d} ({', '.join(n[:2])}{', ...' if len(n) > 2 else ''})"
                             for d, n in sorted(clash.items()))
            raise UserError(f"{folder}: its complete runs computed in another dtype ({were}) than these runs "
                            f"would here ({', '.join(planned)}; model.torch_dtype auto is bfloat16 only on CPUs "
                            f"with AMX or AVX512-BF16): pin it, e.g. --set model.torch_dtype={sorted(clash)[0]}, "
                            f"or use another --results folder")


def _resume_note(result: Path) -> str:
    """Where a rerun starts when the interrupted run left its quantized model (``llmc.resume``; the engine
    decides whether it fits)."""
    from llmc.resume import checkpoint_path
    return " (from its quantized model)" if checkpoint_path(result).exists() else ""


def _record_seconds(data: dict) -> float | None:
    """The wall seconds a complete run cost: the sum of its recorded stages (``timings.stages``), which covers
    every attempt of a run resumed after its quantization (``llmc.resume``), else started to finished."""
    stages = (data.get("timings") or {}).get("stages")
    if isinstance(stages, dict) and stages:
        return float(sum(v for v in stages.values() if isinstance(v, (int, float))))
    try:
        t0 = _dt.datetime.fromisoformat(data["started"])
        t1 = _dt.datetime.fromisoformat(data["finished"])
    except (KeyError, TypeError, ValueError):
        return None
    return (t1 - t0).total_seconds()


# ------------------------------------------------------------------------------------------ results
def main_metric(data: dict | None, eval_pos: str) -> str:
    """WikiText-2 perplexity at the run's evaluated position, else the first accuracy there."""
    metrics = (data or {}).get("metrics") or {}
    by_name = metrics.get(eval_pos) or (metrics[list(metrics)[-1]] if metrics else {})
    if not by_name:
        return ""
    if "ppl" in (by_name.get("wikitext2") or {}):
        return f"wikitext2 {by_name['wikitext2']['ppl']:.2f} ppl"
    for name, m in by_name.items():
        if isinstance(m, dict) and m.get("acc") is not None:
            return f"{name} {100 * m['acc']:.2f} acc"
        if isinstance(m, dict) and m.get("ppl") is not None:
            return f"{name} {m['ppl']:.2f} ppl"
    return ""


def exit_error(rc: int) -> str:
    if rc < 0 or rc == 137:
        sig = -rc if rc < 0 else 9
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by signal {sig} (out of memory?)" if sig == 9 else f"killed by signal {sig} ({name})"
    return f"exit status {rc}"


def _last_line(log: Path, limit: int = 200) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:limit] if lines else ""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ running
class Sweep:
    """Run the planned runs on an executor: local processes, ``workers`` at a time, by default (each in its
    own session, so that a terminal's Ctrl-C reaches only the sweep, which forwards SIGTERM once), or Ray
    tasks (``llmc_slm.executors``). Deciding, recording and displaying are the same for both."""

    def __init__(self, runs: list[Run], results: str | Path, *, workers: int = 1, timeout: float | None = None,
                 retry_failed: bool = False, quiet: bool = False, grace: float = 30.0, argv: list[str] | None = None,
                 out=None, executor: Executor | None = None, watch_every: float = 60.0):
        self.runs = runs
        self.results = Path(results)
        self.executor = executor if executor is not None else make_executor("local", workers=workers)
        self.timeout = timeout
        self.retry_failed = retry_failed
        self.quiet = quiet
        self.grace = grace
        self.argv = argv
        self.out = out or (lambda s: print(s, flush=True))
        self.manifest_path = self.results / MANIFEST
        self.earlier: list[dict] = []   # the manifest's entries of runs this sweep does not plan (decide())
        self._stop = 0          # number of stop signals received
        self._done = 0
        self._bar = None
        self.watch_every = watch_every   # seconds between looks at the running runs' records (_watch)
        self._watched: dict[str, str] = {}
        self._earlier_writer: dict[str, object] = {}   # who wrote each run's record before this sweep started it

    @property
    def workers(self) -> int | None:
        return self.executor.workers

    # ---------------------------------------------------------------- planning output
    def decide(self) -> None:
        previous = read_json(self.manifest_path)
        self.earlier = earlier_runs(previous, self.runs)
        decide(self.runs, self.retry_failed, previous)
        check_one_dtype(self.runs)

    def print_plan(self) -> None:
        n = len(self.runs)
        for i, r in enumerate(self.runs, 1):
            self.out(f"[{i}/{n}] {r.action:4s} {r.model} {r.stem}{f' ({r.dtype})' if r.dtype else ''}: {r.reason}")
            self.out(f"    {shlex.join(r.command)}")
            self.out(f"    -> {r.result}  (log {r.log})")
        todo = sum(r.action == "run" for r in self.runs)
        self.out(f"{todo} to run, {n - todo} skipped")

    # ---------------------------------------------------------------- main loop
    def run(self) -> int:
        lock = self._lock()
        handlers = {}
        try:
            handlers = self._install_handlers()
            return self._run()
        finally:
            if self._bar is not None:
                self._bar.close()
            for sig, h in handlers.items():
                signal.signal(sig, h)
            self.executor.close()
            lock.close()

    def _run(self) -> int:
        n = len(self.runs)
        for r in self.runs:
            if r.action == "skip":
                self._done += 1
                if not self.quiet:
                    self.out(f"[{self._done}/{n}] {r.model} {r.stem} {r.status} (skipped: {r.reason})")
            elif not self.quiet and r.reason not in ("no results yet",):
                self.out(f"{r.model} {r.stem}: {r.reason}")
        self._write_manifest()
        todo = [r for r in self.runs if r.action == "run"]
        if todo and not self._stop:
            # connect and check (Ray: resources, results folder seen by every node) only when there is work
            self.executor.start(self.results, Path.cwd(), todo[0].command[0])
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, self._on_signal)
            if not self.quiet:
                self.out(f"{len(todo)} to run on {self.executor.describe()}")
        from tqdm import tqdm
        self._bar = tqdm(total=n, initial=self._done, unit="run", dynamic_ncols=True,
                         disable=self.quiet or not sys.stderr.isatty())
        by_name = {r.name: r for r in todo}
        token, env = uuid.uuid4().hex[:12], self.executor.cell_env()
        for r in todo if not self._stop else []:
            r.attempts = 0
            self._earlier_writer[r.name] = (read_json(r.result) or {}).get("process")
            self.executor.submit(self._cell(r, token, env))
        t_stop, stops, forced = None, 0, False
        t_watch = time.monotonic()
        while self.executor.busy():
            if time.monotonic() - t_watch >= self.watch_every:
                t_watch = time.monotonic()
                self._watch([r for r in todo if r.status == "running"])
            if self._stop and t_stop is None:
                t_stop, stops = time.monotonic(), self._stop
                running = sum(r.status == "running" for r in todo)
                if running:
                    self._print(f"stopping {running} running run(s) ...")
                self.executor.stop()
            elif t_stop is not None and not forced and (self._stop > stops
                                                        or time.monotonic() - t_stop > self.grace + 5):
                self.executor.stop(force=True)
                forced = True
            for ev in self.executor.poll(0.05):
                r = by_name[ev.name]
                if ev.kind == "started":
                    r.status, r.pid, r.returncode, r.error = "running", ev.pid, None, None
                    r.attempts += 1
                    self._write_manifest()
                elif ev.kind == "dropped":
                    r.status, r.pid = "pending", None
                else:
                    self._finish(r, ev.outcome)
        if self._stop:
            self._write_manifest("interrupted")
            self.print_summary()
            self.out(f"interrupted: {sum(r.status == 'complete' for r in self.runs)}/{n} complete; "
                     f"rerun the same command to resume")
            return 130
        ok = all(r.status == "complete" for r in self.runs)
        self._write_manifest("complete" if ok else "failed")
        self.print_summary()
        return 0 if ok else 1

    def _watch(self, running: list[Run]) -> None:
        """A line when a running run enters a new stage (``load``, ``quantize: transform``, ``evaluate: piqa
        at fake_quant``...), read from its record (``llmc.results.RunRecord.stage``), with where the stage's
        long loop stands (``llmc.progress``); the bar's postfix shows the latest. Every ``watch_every``
        seconds, so the log of a long sweep tells what each run is doing without a terminal. A record still
        written by an earlier process (a killed attempt's, before the new process writes its own) says nothing:
        its writer is the one seen before this sweep started the run, or is known to be gone."""
        for r in running:
            data = read_json(r.result) or {}
            stage, prog, writer = data.get("stage"), data.get("progress") or {}, data.get("process")
            if not stage or data.get("status") != "running":
                continue
            if (writer is not None and writer == self._earlier_writer.get(r.name)) or writer_alive(writer) is False:
                continue
            where = f" ({prog.get('done')}/{prog.get('total')} {prog.get('what')})" if prog else ""
            if self._watched.get(r.name) != stage:
                self._watched[r.name] = stage
                if not self.quiet:
                    self._print(f"{_now()} {r.model} {r.stem}: {stage}{where}")
            if self._bar is not None and not self._bar.disable:
                self._bar.set_postfix_str(f"{r.stem}: {stage}{where}", refresh=True)

    def _cell(self, r: Run, token: str, env: dict[str, str]) -> Cell:
        """What a worker needs to run ``r``: the command runs in this working folder (so its relative
        paths mean the same on every node of a shared filesystem); log and results as absolute paths."""
        return Cell(name=r.name, command=list(r.command), log=os.path.abspath(r.log),
                    result=os.path.abspath(r.result), cwd=os.getcwd(),
                    env={**env, RESULT_ENV: str(r.result), CONFIG_ENV: json.dumps(r.expected)},
                    timeout=self.timeout, grace=self.grace, token=token)

    def _finish(self, r: Run, out: Outcome) -> None:
        """Decide the run's status from its results file and how its process ended; write what the engine
        could not (a killed, timed-out or lost run)."""
        r.seconds = out.seconds if out.returncode is not None else None
        r.returncode = rc = out.returncode
        r.node, r.attempts = out.node, max(r.attempts, out.attempts)
        if out.pid:
            r.pid = out.pid
        tries = f" ({r.attempts} attempts)" if r.attempts > 1 else ""
        data = read_json(r.result)
        st = (data or {}).get("status")
        if st == "complete":
            r.status, r.error = "complete", None
        elif out.timed_out:
            self._record(r, data, "failed", f"timeout after {self.timeout:g} s")
        elif out.interrupted:
            r.status, r.error = ("failed", data.get("error")) if st == "failed" else ("interrupted", None)
            if st == "running":   # the engine did not get to record it: say so
                self._record(r, data, "interrupted", "interrupted by the sweep (SIGTERM)")
        elif rc is None:
            self._record(r, data, "failed", f"{out.error or 'its process never ran'}{tries}")
        elif rc == 0:
            self._record(r, data, "failed", f"exit status 0 but the results say {st or 'nothing'}")
        elif st == "failed":
            self._record(r, data, "failed", data.get("error") or exit_error(rc), keep_error=True)
        elif st == "interrupted":
            r.status, r.error = "interrupted", data.get("error")
        else:
            err = exit_error(rc)
            last = _last_line(r.log) if rc > 0 and rc != 137 else ""
            self._record(r, data, "failed", (f"{err}: {last}" if last else err) + tries)
        self._done += 1
        if self._bar is not None:
            self._bar.update(1)
        line = f"[{self._done}/{len(self.runs)}] {r.model} {r.stem} {r.status}"
        line += f" {r.seconds:.1f}s" if r.seconds is not None else ""
        line += f" on {r.node}" if r.node else ""
        line += f", {r.attempts} attempts" if r.attempts > 1 else ""
        if r.status != "complete" and r.error:
            line += f": {r.error}"
        self._print(line)
        self._write_manifest()

    def _record(self, r: Run, data: dict | None, status: str, error: str, keep_error: bool = False) -> None:
        """Write the run's status into its results file (atomically), keeping whatever the engine wrote."""
        from llmc.utils import atomic_write_json
        if data is None:
            data = {"schema_version": 1, "status": status, "task_id": None,
                    "profile": (r.command[r.command.index("--profile") + 1] if "--profile" in r.command else None),
                    "config": r.expected, "config_file": str(r.config), "metrics": {}, "timings": {}, "log": []}
        data["status"] = status
        if not keep_error or not data.get("error"):
            data["error"] = error
        data.setdefault("finished", _now())
        data["sweep"] = {"command": r.command, "returncode": r.returncode, "log": str(r.log),
                         "executor": self.executor.name, "node": r.node, "attempts": r.attempts}
        atomic_write_json(r.result, data)
        r.status, r.error = status, data["error"]

    # ---------------------------------------------------------------- signals, lock, manifest
    def _install_handlers(self) -> dict:
        """SIGINT and SIGTERM count stop requests (installed again after the executor starts: ``ray.init``
        sets its own SIGTERM handler); returns the handlers to restore."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum, frame) -> None:
        self._stop += 1

    def _lock(self):
        import fcntl
        self.results.mkdir(parents=True, exist_ok=True)
        path = self.results / ".sweep.lock"
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise UserError(f"another sweep is running on {self.results} (pid {holder})") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        return f

    def _write_manifest(self, status: str = "running") -> None:
        from llmc.utils import atomic_write_json
        counts: dict = {}
        for r in self.runs:
            counts[r.status] = counts.get(r.status, 0) + 1
        atomic_write_json(self.manifest_path, {
            "status": status, "updated": _now(), "argv": self.argv, "executor": self.executor.name,
            "workers": self.workers, "timeout": self.timeout, "counts": counts,
            "runs": [r.manifest_entry() for r in self.runs], "earlier_runs": self.earlier})

    def _print(self, line: str) -> None:
        if self._bar is not None and not self._bar.disable:
            self._bar.write(line)
        else:
            self.out(line)

    def print_summary(self) -> None:
        from tabulate import tabulate
        nodes = any(r.node for r in self.runs)
        rows = []
        for r in self.runs:
            err = (r.error or "")
            rows.append([r.name, r.status, "" if r.seconds is None else f"{r.seconds:.1f}",
                         *([r.node or ""] if nodes else []), main_metric(read_json(r.result), r.eval_pos),
                         err if len(err) <= 80 else err[:77] + "..."])
        self._print("\n" + tabulate(rows, headers=["run", "status", "seconds", *(["node"] if nodes else []),
                                                   "metric", "error"], tablefmt="github"))
        self._print(f"manifest: {self.manifest_path}")


# ------------------------------------------------------------------------------------------ CLI
def build_parser():
    import argparse
    p = argparse.ArgumentParser(
        prog="python tools/sweep.py",
        description="Run a grid of experiments (models x methods x bits [x seeds] + float baselines), one "
                    "process per run, on this machine or on a Ray cluster, resumably: complete runs with the "
                    "same config are skipped.",
        epilog="Exit status: 0 when every run is complete, 1 if any is not, 2 on a usage or config error, "
               "130 when interrupted (rerun the same command to resume).")
    p.add_argument("--models", nargs="+", default=["smollm"], help="config folders under configs/ (default smollm)")
    p.add_argument("--methods", nargs="+", default=list(METHODS),
                   help="config stems rtn smooth gptq awq omni omni_kb quarot spin, or RTN SmoothQuant GPTQ AWQ OmniQuant "
                        "OmniQuant+KB QuaRot SpinQuant "
                        "(default: all five)")
    p.add_argument("--bits", nargs="+", default=list(BITS), help="w8a8 w4a8 (default both), any <method>_<bits>.yml")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip each model's fp16.yml run")
    p.add_argument("--profile", default=None, help="calibration profile passed to the engine (e.g. cpu)")
    p.add_argument("--limit", type=int, default=None, help="eval.limit for every run")
    p.add_argument("--eval-names", nargs="+", default=None, help="eval.name for every run (default: the configs')")
    p.add_argument("--results", default="results", help="results folder: <results>/<model>/*.json, logs/, sweep.json")
    p.add_argument("--configs", default=None, help="configs folder (default: ./configs or the project's)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="run each method once per seed (base.seed and calib.seed; files named ..._seed<S>); "
                        "the baseline once")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="where runs run: local processes (default) or Ray tasks (pip install -e '.[cluster]')")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (ip:port, or 'auto'); default: start a Ray on this machine. "
                        "Its nodes must see --results at the same path")
    p.add_argument("--workers", type=int, default=None,
                   help="runs at a time (local default 1; Ray default: as many as the cluster's resources hold)")
    p.add_argument("--cpus-per-run", type=float, default=None,
                   help="CPUs each run reserves (Ray; default 1) and its OMP_NUM_THREADS")
    p.add_argument("--gpus-per-run", type=float, default=0.0,
                   help="GPUs each run reserves (Ray only; default 0); refused when no node has them")
    p.add_argument("--retries", type=int, default=0,
                   help="times a run whose process was killed (or whose Ray worker or node died) is started "
                        "again (default 0)")
    p.add_argument("--inference", action="store_true",
                   help="Track 2 for method runs: --save.save_real true --eval.inference true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                   help="config override for every run, e.g. --set eval.bs=16 model.torch_dtype=float32")
    p.add_argument("--skip-missing", action="store_true",
                   help="leave out method x bits combinations that have no config file (listed on stderr)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (commands, skip/run) and exit")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed")
    p.add_argument("--timeout", type=float, default=None, help="seconds per run; then SIGTERM, then SIGKILL")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no lines for skipped runs")
    p.add_argument("--engine-cmd", default=None, help=argparse.SUPPRESS)   # tests: a fake engine
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        executor = make_executor(args.executor, workers=args.workers, retries=args.retries,
                                 cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                                 address=args.address)
        runs = plan(args.models, args.methods, args.bits, results=args.results, configs_dir=args.configs,
                    profile=args.profile, limit=args.limit, eval_names=args.eval_names,
                    inference=args.inference, sets=[s for group in args.set for s in group],
                    baseline=args.baseline, engine=shlex.split(args.engine_cmd) if args.engine_cmd else None,
                    seeds=args.seeds, skip_missing=args.skip_missing)
        sweep = Sweep(runs, args.results, timeout=args.timeout, retry_failed=args.retry_failed,
                      quiet=args.quiet, argv=list(sys.argv if argv is None else argv), executor=executor)
        sweep.decide()
        if args.dry_run:
            try:
                sweep.print_plan()
            except BrokenPipeError:   # `--dry-run | head`
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        return sweep.run()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WorldError as e:     # e.g. a Ray that did not start
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:   # before any run started
        print("interrupted", file=sys.stderr)
        return 130
