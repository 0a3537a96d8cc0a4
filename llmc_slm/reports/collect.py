"""A results folder -> one row (:class:`Run`) per run, each with its float baseline and SLMQ_perf.

Every ``*.json`` under the folder that is a results record is read by the one reader,
:func:`llmc.results.read_result`, into a typed :class:`~llmc.results.RunResult` and becomes a :class:`Run`;
other JSON files (``sweep.json`` manifests, anything else) are skipped and listed. Nothing here raises on a
missing section: a value that is not there is None. The method's name and whether it calibrates are the
ones the run recorded (``method``; older records: from their config, :class:`llmc.results.MethodInfo`).

Values (:class:`Value`), per table column:

- accuracies (``mmlu``, ``arc_challenge``, ``arc_easy``, ``piqa``, ``hellaswag``: the ``column`` of the
  registered task specs, ``llmc_slm.tasks.TASKS``, in their order): the value the run recorded for the
  table (``table_value``: the spec's ``table_metric``), in percent, with its standard error and item
  count. A column filled by several tasks holds the first one the run has, in registration order: the
  MMLU column holds ``mmlu_continuation`` (the cloze form the paper's tables use, protocol.md) when the
  run has it, else ``mmlu`` (the letter form);
- ``wikitext2``: perplexity (no standard error), with the windows evaluated.

A quantized run is read at one evaluation position (``fake_quant`` by default, or ``real_quant`` ...);
a float run (``config.quant`` null) at ``pretrain``. Its baseline, per dataset, is the ``pretrain``
value of a float run of the same model (the one evaluated on the same items when there are several);
when no float run has that dataset on the same items, the ``pretrain`` value recorded by another run of
the same model on the same items is used if there is one (same float model, same items; the source is
named), else the float run's value on other items, marked as a mismatch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from llmc.errors import UserError
from llmc.results import Environment, Metric, ResultsError, RunResult, as_int, as_number, read_result
from llmc_slm.scoring import slmq_perf
from llmc_slm.tasks import TASKS, item_stderr
from llmc_slm.tracks.quant_cost import bits_label
from llmc_slm.tracks.memory import peak_above_idle
from llmc_slm.tracks.records import InferenceSection

FLOAT = "Full Prec."


def _column_tasks() -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for spec in TASKS.values():
        if spec.column:
            out[spec.column] = out.get(spec.column, ()) + (spec.name,)
    return out


# column -> the tasks that fill it, in order of preference (the specs' ``column``, registration order)
COLUMN_TASKS = _column_tasks()
ACC_DATASETS = tuple(COLUMN_TASKS)   # the paper's column order
DATASETS = ACC_DATASETS + ("wikitext2",)
LABELS = {**{col: TASKS[names[0]].label for col, names in COLUMN_TASKS.items()}, "wikitext2": "Wiki ppl"}
POSITIONS = ("pretrain", "transformed", "fake_quant", "real_quant")
METHOD_ORDER = ("RTN", "SmoothQuant", "GPTQ", "AWQ", "OmniQuant", "OmniQuant+KB", "QuaRot", "SpinQuant w/o learning",
                "SpinQuant")
PAPER_METHODS = ("SmoothQuant", "OmniQuant", "SpinQuant")
SKIP_NAMES = {"sweep.json"}
MB = 2 ** 20


class ReportError(UserError):
    """A results folder that cannot be reported on (missing, empty); one line for the user."""


_num, _int = as_number, as_int


@dataclass
class Value:
    """One table cell's number and what it was computed on."""
    dataset: str                 # the column: "mmlu" also stands for mmlu_continuation
    source: str                  # the results key it came from
    value: Optional[float]       # percent for an accuracy, perplexity for wikitext2
    stderr: Optional[float] = None
    n: Optional[int] = None      # items (windows for wikitext2) evaluated
    n_total: Optional[int] = None
    limit: Optional[int] = None
    subset: bool = False
    items: tuple = ()            # identity of the evaluated items (compared with the baseline's)
    metric: str = ""
    subset_mode: Optional[str] = None   # "random" (seeded sample), "first" (lm-eval's first N), None: older
    subset_seed: Optional[int] = None
    items_file: Optional[str] = None    # the run's per-item outcomes (llmc.results.items_path), if written
    vs_float: Optional[dict] = None     # WikiText-2 against the float model in the same run (KLD, top-1)
    seq_len: Optional[int] = None       # WikiText-2: tokens per window

    @property
    def finite(self) -> bool:
        return self.value is not None and math.isfinite(self.value)

    def describe_items(self) -> str:
        """``first 40 of 148 windows`` / ``100 of 14042 items (spread over the 57 subjects)``."""
        unit = "windows" if self.dataset == "wikitext2" else "items"
        of = f" of {self.n_total}" if self.n_total is not None else ""
        if self.n is None:
            return f"limit {self.limit}" if self.limit is not None else "unknown items"
        first = "first " if self.subset else ""
        lim = ""
        if self.subset_mode == "random" and self.subset:
            strat = ", stratified by subject" if self.source.startswith("mmlu") else ""
            return f"{self.n}{of} {unit} (random sample, seed {self.subset_seed}{strat})"
        if self.source.startswith("mmlu") and self.limit is not None:
            lim = " (the first items of each subject, spread over the 57)"   # llmc_slm.tasks.lmeval.selection
            first = ""
        return f"{first}{self.n}{of} {unit}{lim}"


def read_values(metrics: Any) -> dict[str, Value]:
    """The table values of one evaluation position's ``{dataset: Metric}`` (or the raw dicts)."""
    out: dict[str, Value] = {}
    if not isinstance(metrics, dict):
        return out
    metrics = {k: m if isinstance(m, Metric) else Metric.from_dict(m) for k, m in metrics.items()}
    for ds, keys in COLUMN_TASKS.items():
        for key in keys:
            m = metrics.get(key)
            if m is not None:
                out[ds] = _acc_value(ds, key, m)
                break
    m = metrics.get("wikitext2")
    if m is not None:
        out["wikitext2"] = _ppl_value(m)
    return out


def _acc_value(ds: str, key: str, m: Metric) -> Value:
    metric = m.table_metric or (TASKS[key].table_metric if key in TASKS else "acc")
    v, se = m.table_value, m.table_stderr
    if v is None:
        v, se = _num(m.get(metric)), _num(m.get(f"{metric}_stderr"))
    if se is None and v is not None:   # results written before the evaluator filled a group's stderr in
        se = item_stderr(v, m.n)
    if m.subset is not None:
        subset = m.subset
    elif m.n is not None and m.n_total is not None:
        subset = m.n < m.n_total
    else:
        subset = m.limit is not None
    # a seeded random subset is identified by its items (older records and lm-eval's first N: by n)
    drawn = m.get("items_digest") if m.get("subset_mode") == "random" and subset else None
    return Value(ds, key, None if v is None else 100.0 * v, None if se is None else 100.0 * se, m.n, m.n_total,
                 m.limit, subset, (key, m.n, m.n_total, m.num_fewshot or 0) + ((drawn,) if drawn else ()), metric,
                 m.get("subset_mode"), m.get("subset_seed"), m.get("items_file"))


def _ppl_value(m: Metric) -> Value:
    if m.windows is not None and m.windows_in_split is not None:
        subset = m.windows < m.windows_in_split
    else:
        subset = m.limit is not None
    return Value("wikitext2", "wikitext2", m.ppl, None, m.windows, m.windows_in_split, m.limit, subset,
                 ("wikitext2", m.seq_len, m.windows), "ppl", items_file=m.get("items_file"),
                 vs_float=m.get("vs_float") if isinstance(m.get("vs_float"), dict) else None, seq_len=m.seq_len)


def read_inference(section: Optional[InferenceSection]) -> Optional[dict]:
    """The Track 2 figures of a run (its ``inference`` section), in MB (2^20 bytes), G MACs and M parameters;
    None when absent. SLMQ_infer is the stored score, or computed from the two profiles."""
    if section is None:
        return None
    base, comp, scores = section.baseline, section.compressed, section.scores
    return {"baseline": _profile(base), "compressed": _profile(comp),
            "measured": section.slmq_infer("measured"), "paper_compatible": section.slmq_infer("paper_compatible"),
            "memory_kind": comp.get("memory_kind") or scores.get("memory_kind") or base.get("memory_kind"),
            "warning": scores.get("warning"), "threads": comp.get("threads"), "device": comp.get("device")}


def _profile(d: dict) -> dict:
    def scaled(key, unit):
        v = _num(d.get(key))
        return None if v is None else v / unit
    above = peak_above_idle(d)
    return {"peak_mem_mb": scaled("peak_mem", MB), "size_mb": scaled("size", MB), "tps": _num(d.get("tps")),
            "peak_above_idle_mb": None if above is None else above / MB,
            "decode_tps": _num(d.get("decode_tps")), "macs_g": scaled("macs_calflops", 1e9),
            "macs_counted_g": scaled("macs", 1e9), "params_m": scaled("params_calflops", 1e6),
            "memory_kind": d.get("memory_kind"), "kv_cache": d.get("kv_cache"), "long_context": d.get("long_context")}


def read_cost(result: RunResult) -> Optional[dict]:
    """``quant_cost`` as {time_s, time_min, peak_mem_mb, memory_kind}, or None."""
    cost = result.quant_cost
    if cost is None:
        return None
    return {"time_s": cost.time_s, "time_min": cost.time_min, "peak_mem_mb": cost.peak_mem_mb,
            "memory_kind": cost.memory_kind}


@dataclass
class Run:
    """One results file, read for the reports."""
    path: Path
    rel: str                     # path relative to the results folder
    result: RunResult = field(repr=False)
    model: str
    arch: dict
    method: str                  # FLOAT for a float run
    bits: str                    # W8A8, W4A16, FP
    wbits: Optional[int]
    abits: Optional[int]
    profile: Optional[str]
    status: str
    task_id: Optional[str]
    error: Optional[str]
    position: str
    values: dict
    quant_cost: Optional[dict]
    inference: Optional[dict]
    environment: Environment
    diverged_blocks: list
    # set by attach_baselines
    baseline: dict = field(default_factory=dict)           # dataset -> Value
    baseline_source: dict = field(default_factory=dict)    # dataset -> where it came from
    mismatch: dict = field(default_factory=dict)           # dataset -> description of the difference
    perf: Optional[float] = None
    perf_stderr: Optional[float] = None
    perf_datasets: tuple = ()
    notes: list = field(default_factory=list)
    # set by attach_baselines where both runs stored per-item outcomes on the same items (llmc_slm.paired)
    paired: dict = field(default_factory=dict)             # dataset -> PairedDelta (points; wikitext2: log ppl)
    perf_interval: Optional[dict] = None                   # paired bootstrap of SLMQ_perf (perf_bootstrap)
    paired_items: dict = field(default_factory=dict, repr=False)   # dataset -> llmc_slm.paired.PerfItems

    @property
    def is_float(self) -> bool:
        return self.method == FLOAT

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def label(self) -> str:
        """The method, with the run's task id (a variant) in parentheses."""
        return self.method + (f" ({self.task_id})" if self.task_id else "")

    @property
    def key(self) -> tuple:
        return (self.model, self.method, self.bits)

    @property
    def device(self) -> str:
        return self.environment.describe()

    def value(self, ds: str) -> Optional[float]:
        v = self.values.get(ds)
        return None if v is None else v.value


def _bits(quant) -> tuple[str, Optional[int], Optional[int]]:
    if not quant:
        return "FP", None, None
    try:
        label = bits_label(quant)
    except (KeyError, TypeError, AttributeError):
        return "?", None, None
    w, a = quant.get("weight"), quant.get("act")
    return (label, _int(w.get("bit")) if isinstance(w, dict) else 16, _int(a.get("bit")) if isinstance(a, dict) else 16)


def read_run(result: RunResult, position: str = "fake_quant", root: Optional[Path] = None) -> Run:
    """One typed results record as a :class:`Run` (baseline not yet attached)."""
    path = result.path or Path("<data>")
    quant = result.quant
    bits, wbits, abits = _bits(quant)
    pos = "pretrain" if result.is_float else position
    diverged = [i for i, b in enumerate(result.blocks) if isinstance(b, dict) and b.get("diverged")]
    try:
        rel = str(path.relative_to(root)) if root else path.name
    except ValueError:
        rel = str(path)
    cfg_model = result.config.get("model") if isinstance(result.config.get("model"), dict) else {}
    run = Run(path=path, rel=rel, result=result,
              model=str(result.model.name or cfg_model.get("path") or "unknown"), arch=result.model.arch,
              method=FLOAT if result.is_float else str(result.method.label), bits=bits, wbits=wbits, abits=abits,
              profile=result.profile, status=result.status, task_id=result.task_id, error=result.error,
              position=pos, values=read_values(result.at(pos)), quant_cost=read_cost(result),
              inference=read_inference(InferenceSection.of(result)), environment=result.environment,
              diverged_blocks=diverged)
    divergence = result.section("divergence")
    if divergence:
        run.notes.append(f"divergence: {_short(divergence)}")
    if diverged:
        reset = [i for i in diverged if result.blocks[i].get("chosen") in ("reset", None)]
        kept = [i for i in diverged if i not in reset]
        if reset:   # keep-best (and records before the official procedure): back to the initial state
            run.notes.append(f"{len(reset)} block(s) diverged during training and were restored "
                             f"(blocks {', '.join(map(str, reset))})")
        if kept:    # the official procedure: the block keeps what training reached
            run.notes.append(f"{len(kept)} block(s) hit a non-finite loss and kept the parameters reached "
                             f"(blocks {', '.join(map(str, kept))})")
    return run


def _short(x, n: int = 160) -> str:
    s = x if isinstance(x, str) else json.dumps(x, default=str)
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


def find_results(folder) -> tuple[list[RunResult], list[tuple[Path, str]]]:
    """(typed results records, skipped files with the reason) under ``folder``; ReportError if the folder
    is missing or holds no results record."""
    folder = Path(folder)
    if not folder.exists():
        raise ReportError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ReportError(f"{folder}: not a folder")
    found, skipped = [], []
    for path in sorted(folder.rglob("*.json")):
        if not path.is_file() or (path.parent / "model.safetensors").is_file():
            continue   # the JSON files of a saved checkpoint folder (save_real / save_fake) are not results
        if path.name in SKIP_NAMES:
            skipped.append((path, "sweep manifest"))
            continue
        try:
            found.append(read_result(path))
        except ResultsError as e:
            skipped.append((path, str(e).removeprefix(f"{path}: ")))
    if not found:
        raise ReportError(f"{folder}: no results JSON found" + (f" ({len(skipped)} other JSON file(s) skipped)"
                                                                 if skipped else ""))
    return found, skipped


@dataclass
class Collection:
    """Every run of a folder, with the warnings met while reading them."""
    folder: Path
    position: str
    runs: list
    skipped: list
    warnings: list

    def models(self) -> list[str]:
        seen = []
        for r in self.runs:
            if r.model not in seen:
                seen.append(r.model)
        return seen

    def of_model(self, model: str) -> list:
        return [r for r in self.runs if r.model == model]

    def primary(self) -> dict:
        return primary_runs(self.runs)


def collect(folder, position: str = "fake_quant") -> Collection:
    """Read every results record under ``folder``; quantized runs at ``position``."""
    if position not in POSITIONS:
        raise ReportError(f"--position: {position!r} is not one of {', '.join(POSITIONS)}")
    folder = Path(folder)
    found, skipped = find_results(folder)
    runs = [read_run(r, position, folder) for r in found]
    runs.sort(key=sort_key)
    warnings = attach_baselines(runs)
    return Collection(folder, position, runs, skipped, warnings)


def method_rank(method: str) -> tuple:
    if method == FLOAT:
        return (0, "")
    return (1, METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (2, method)


def bits_rank(run: Run) -> tuple:
    """W8 before W4, weight-only before activations at the same weight bits; then the label, so that the runs
    of one setting stay together (``W4A8``, ``W4A8-g64``, ``W4A8KV4``)."""
    return (-(run.wbits or 99) if run.bits != "FP" else -100, -(run.abits or 0), run.bits)


def sort_key(run: Run) -> tuple:
    """Float runs first, then by bits (W8 before W4), method (RTN, SmoothQuant, GPTQ, OmniQuant, SpinQuant,
    others), variant, file."""
    return (run.model, bits_rank(run), method_rank(run.method), run.task_id is not None, str(run.task_id or ""),
            run.rel)


def primary_runs(runs) -> dict:
    """One run per (model, method, bits): complete first, then no task id (not a variant), then the most
    datasets evaluated, the full protocol (no profile) before a reduced one, the file name."""
    best: dict = {}
    for r in runs:
        if r.is_float:
            continue
        rank = (not r.complete, r.task_id is not None, -len(r.values), r.profile is not None, r.rel)
        if r.key not in best or rank < best[r.key][0]:
            best[r.key] = (rank, r)
    return {k: v[1] for k, v in best.items()}


def float_runs(runs) -> list:
    """The float runs with metrics among ``runs``, the preferred baseline first: complete, then the most
    datasets, then the file name."""
    return sorted((r for r in runs if r.is_float and r.values), key=lambda r: (not r.complete, -len(r.values), r.rel))


def attach_baselines(runs) -> list[str]:
    """Give every quantized run its baseline per dataset, SLMQ_perf and its standard error; return the
    warnings (no float run for a model, baselines on other items)."""
    warnings = []
    models = []
    for r in runs:
        if r.model not in models:
            models.append(r.model)
    for model in models:
        members = [r for r in runs if r.model == model]
        floats = float_runs(members)
        others = [(r, read_values(r.result.at("pretrain"))) for r in members if not r.is_float]
        quantized = [r for r in members if not r.is_float]
        if quantized and not floats:
            warnings.append(f"{model}: no float run (config.quant null) with metrics in the folder: "
                            f"no baseline, no SLMQ_perf")
        for r in quantized:
            # a float run computed in this run's dtype first: the dtype alone moves the figures, and the paired
            # statistics would count that as the method's effect, so a baseline in another dtype is a mismatch
            same_dtype_first = sorted(floats, key=lambda f: _other_dtype(f, r) is not None)
            for ds, v in r.values.items():
                if v.value is None:
                    continue
                chosen = None
                for f in same_dtype_first:
                    b = f.values.get(ds)
                    if b is not None and b.items == v.items:
                        chosen = (b, f"{f.rel} (pretrain)", None, f)
                        break
                if chosen is None:
                    for o, vals in others:
                        b = vals.get(ds)
                        if b is not None and b.items == v.items and _other_dtype(o, r) is None:
                            chosen = (b, f"{o.rel} (pretrain, same items)", None, o)
                            break
                if chosen is None:
                    for f in same_dtype_first:
                        b = f.values.get(ds)
                        if b is not None and b.source == v.source:
                            chosen = (b, f"{f.rel} (pretrain)",
                                      f"{LABELS[ds]}: baseline on {b.describe_items()}, this run on "
                                      f"{v.describe_items()}", f)
                            break
                if chosen is None:
                    if floats:
                        r.notes.append(f"{LABELS[ds]}: no baseline (no float run of {model} evaluated {v.source})")
                    continue
                b, source, mismatch, base_run = chosen
                r.baseline[ds] = b
                r.baseline_source[ds] = source
                other = _other_dtype(base_run, r)
                if other and not mismatch:
                    mismatch = f"{LABELS[ds]}: baseline computed in {other}, this run in {r.environment.dtype}"
                if mismatch:
                    r.mismatch[ds] = mismatch
                    why = "computed in another dtype" if other else "evaluated on different items"
                    warnings.append(f"{r.rel}: baseline {why}: {mismatch}")
                else:
                    _pair(r, ds, base_run)
            _score(r)
            _perf_interval(r)
    return warnings


def _other_dtype(base: Run, run: Run) -> Optional[str]:
    """``base``'s compute dtype when both runs recorded theirs and they differ (``environment.dtype``:
    ``torch_dtype: auto`` is bfloat16 on a CPU with AMX or AVX512-BF16, float32 on other CPUs), else None."""
    a, b = base.environment.dtype, run.environment.dtype
    return a if a and b and a != b else None


# ------------------------------------------------------------------------------- paired statistics
_ITEMS_CACHE: dict = {}


def run_items(run: Run, position: str, key: str) -> Optional[dict]:
    """The per-item outcomes of ``key`` (a results key: ``arc_easy``, ``wikitext2``...) at ``position``
    of a run, from its items file (``llmc.results.items_path``); None for a run without one (older runs),
    or an unreadable one (noted on the run)."""
    from llmc.results import ResultsError, read_items
    m = run.result.at(position).get(key)
    name = m.get("items_file") if m is not None else None
    if not name or run.result.path is None:
        return None
    path = run.result.path.parent / name
    try:
        stamp = path.stat().st_mtime_ns
        if _ITEMS_CACHE.get(path, (None,))[0] != stamp:
            _ITEMS_CACHE[path] = (stamp, read_items(path))
        data = _ITEMS_CACHE[path][1]
    except (OSError, ResultsError) as e:
        run.notes.append(f"per-item outcomes not read: {e}")
        return None
    items = (data.get(position) or {}).get(key)
    return items if isinstance(items, dict) else None


def _pair(r: Run, ds: str, base_run: Run) -> None:
    """The paired change of ``r`` against its baseline on dataset ``ds`` when both stored per-item
    outcomes on the same items (else the comparison stays unpaired, with a note when the items differ)."""
    from llmc_slm.paired import PerfItems, paired_delta, window_log_ppl_delta
    v = r.values[ds]
    mine, theirs = run_items(r, r.position, v.source), run_items(base_run, "pretrain", v.source)
    if mine is None or theirs is None:
        return
    try:
        if ds == "wikitext2":
            tok = mine.get("window_tokens")
            if tok != theirs.get("window_tokens"):
                r.notes.append(f"{LABELS[ds]}: baseline windows differ from this run's: unpaired")
                return
            r.paired[ds] = window_log_ppl_delta(theirs["window_nll"], mine["window_nll"], tok)
            r.paired_items[ds] = PerfItems(theirs["window_nll"], mine["window_nll"], tok)
            return
        if mine.get("ids") != theirs.get("ids"):
            r.notes.append(f"{LABELS[ds]}: baseline evaluated other item ids than this run: unpaired")
            return
        col, pred = ("acc_norm", "pred_norm") if v.metric == "acc_norm" else ("acc", "pred")
        a, b = theirs.get(col), mine.get(col)
        if not a or not b or None in a or None in b:
            return
        r.paired[ds] = paired_delta(a, b, theirs.get(pred), mine.get(pred)).scaled(100.0)
        r.paired_items[ds] = PerfItems(a, b)
    except (KeyError, TypeError, ValueError) as e:
        r.notes.append(f"{LABELS[ds]}: per-item outcomes not usable ({type(e).__name__}: {e}): unpaired")


def same_items(a: Run, b: Run, ds: str) -> bool:
    """Whether two runs hold per-item outcomes of ``ds`` on the same items against the same baseline (so that
    they can be compared with each other item by item: ``Run.paired_items``)."""
    pa, pb = a.paired_items.get(ds), b.paired_items.get(ds)
    return (pa is not None and pb is not None and a.baseline_source.get(ds) == b.baseline_source.get(ds)
            and len(pa.a) == len(pb.a) and list(pa.a) == list(pb.a))


BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED = 1000, 0


def _perf_interval(r: Run) -> None:
    """A paired bootstrap interval of SLMQ_perf when every dataset it is scored on has paired items."""
    from llmc_slm.paired import perf_bootstrap
    if r.perf is None or not r.perf_datasets or not all(ds in r.paired_items for ds in r.perf_datasets):
        return
    try:
        r.perf_interval = perf_bootstrap({ds: r.paired_items[ds] for ds in r.perf_datasets},
                                         n_boot=BOOTSTRAP_SAMPLES, seed=BOOTSTRAP_SEED)
    except ValueError as e:
        r.notes.append(f"SLMQ_perf interval not computed: {e}")


def _score(r: Run) -> None:
    common = tuple(ds for ds in DATASETS if ds in r.values and ds in r.baseline and r.values[ds].value is not None
                   and r.baseline[ds].finite and r.baseline[ds].value > 0)
    r.perf_datasets = common
    if not r.complete or not common:
        return
    try:
        r.perf, r.perf_stderr = perf_on(r, common)
    except ValueError as e:
        r.notes.append(f"SLMQ_perf not computed: {e}")


def perf_on(r: Run, datasets) -> tuple[float, Optional[float]]:
    """SLMQ_perf of a run over the given datasets (a subset of ``r.perf_datasets``: to compare two runs on
    the datasets both have), with its standard error. Raises ValueError as ``slmq_perf`` does."""
    base = {ds: r.baseline[ds].value for ds in datasets}
    comp = {ds: r.values[ds].value for ds in datasets}
    perf = slmq_perf(base, comp)
    return perf, perf_stderr(r.baseline, r.values, datasets, perf)


def perf_stderr(baseline: dict, values: dict, datasets, perf: float) -> Optional[float]:
    """Standard error of SLMQ_perf by the delta method, from the accuracies' standard errors (baseline and
    compressed taken as independent, which overstates it for the same items; perplexity counts as exact)."""
    if not perf:
        return None
    n = len(datasets)
    total = 0.0
    for ds in datasets:
        b, c = baseline[ds], values[ds]
        if ds == "wikitext2" or not (b.finite and c.finite) or c.value <= 0:
            continue
        if b.stderr is None and c.stderr is None:
            continue
        r = c.value / b.value
        se_r = r * math.sqrt(((c.stderr or 0) / c.value) ** 2 + ((b.stderr or 0) / b.value) ** 2)
        total += (r * se_r) ** 2
    # S = 100 sqrt(mean r^2): dS/dr_i = 100^2 r_i / (n S)
    return 100.0 ** 2 / (n * perf) * math.sqrt(total)
