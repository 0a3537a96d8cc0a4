"""One experiment, LLMC's pipeline shape, owned here stage by stage:

    plan (+ writable targets, resource estimate) -> load -> evaluate(pretrain) -> calibrate
         -> quantize (the method; Track 3 measured around it) -> evaluate(transformed) -> export
         -> fake-quantize -> [checkpoint] -> evaluate(fake_quant) -> export -> deploy (integer kernels)
         -> evaluate(real_quant) -> post-run hooks (Track 2) -> record

``[checkpoint]`` is the resume point (``save.resume``, ``llmc.resume``): a run interrupted after it starts
there again, with the evaluations it finished kept.

``plan_run`` checks everything the user can get wrong (config, model path, data files, method, exporters)
before a model is loaded; ``check_writable`` and ``llmc.estimate.check_resources`` what the world around
the run can get wrong. The record names the stage the run is in (a run killed from outside says where). Each stage takes plain objects and returns plain objects; the algorithm only
transforms (``llmc.algos.base``): it never evaluates, saves or writes the record. The results record is
rewritten after every stage (atomically), so a run that stops keeps what it finished.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import catalog, progress
from .config import Config, config_as_dict
from .errors import UserError
from .profiling import Measure
from .registry import ALGO_REGISTRY, METHODS, post_run_hooks

log = logging.getLogger("llmc")


@dataclass
class RunPlan:
    """What a run will do, resolved from the config before anything heavy is loaded."""
    cfg: Config
    device: Any
    dtype: Any
    source: Any                      # llmc.models.loading.ModelSource
    evaluators: dict
    calib_text: Optional[str] = None
    calib_info: Optional[dict] = None

    @property
    def method(self):
        return METHODS[self.cfg.quant.method] if self.cfg.quant is not None else None


@dataclass
class QuantizedModel:
    """What the quantize stage leaves besides the model it changed in place."""
    algorithm: Any                   # the method's object (its weight params, block log, ...)
    label: str                       # the method's name in tables ("OmniQuant+KB" for a variant)
    input_transforms: dict           # "blocks.i.<path>" -> online transform (SpinQuant's R4)
    cost: dict = field(default_factory=dict)   # Track 3: time and peak memory of the quantization
    report: dict = field(default_factory=dict)  # the method's own figures, by record section
    exports: list = field(default_factory=list)  # paths written after the transform (save_trans, ...)


def plan_run(cfg: Config) -> RunPlan:
    """Resolve device, dtype, model source, evaluators and calibration text; raises UserError."""
    from .evaluators import make_evaluators
    from .models.loading import resolve_model_source
    from .utils import pick_device, pick_dtype
    device = pick_device(cfg.model.device)
    plan = RunPlan(cfg, device, pick_dtype(cfg.model.torch_dtype, device), resolve_model_source(cfg.model.path),
                   make_evaluators(cfg))
    if cfg.quant is not None and plan.method.calibrates(cfg):
        from .data.calib import resolve_calibration_text
        plan.calib_text, plan.calib_info = resolve_calibration_text(cfg.calib)
    return plan


def load(plan: RunPlan):
    """The model and tokenizer, wrapped in their family's adapter."""
    from .models.loading import load_model
    c = plan.cfg.model
    return load_model(plan.source, c.type, dtype=plan.dtype, device=plan.device, tokenizer_mode=c.tokenizer_mode,
                      seed=plan.cfg.base.seed)


def calibrate(plan: RunPlan, adapter):
    """The calibration windows (token ids) the method needs, or None."""
    if plan.calib_text is None:
        return None
    from .data.calib import make_calibration
    c = plan.cfg.calib
    return make_calibration(adapter.tokenizer, plan.calib_text, plan.calib_info, c.n_samples, c.seq_len,
                            c.preproc, c.seed)


def transform(adapter, cfg: Config, calib) -> QuantizedModel:
    """The method's calibration, search, training and weight updates (``transformed``), measured."""
    catalog.load()
    algo = ALGO_REGISTRY[cfg.quant.method](adapter, cfg)
    with Measure(adapter.device) as cost:
        algo.quantize(calib)
    total = cost.as_dict()
    total["stages_s"] = {"calibrate_transform": cost.seconds}
    return QuantizedModel(algo, METHODS[cfg.quant.method].label_for(cfg), algo.input_transforms, total)


def check_method_on_model(adapter, cfg: Config) -> None:
    """The method's refusals that need the loaded model (SpinQuant's / QuaRot's R1 through post-norms, the
    Hadamard orders), raised before any evaluation or calibration."""
    catalog.load()
    ALGO_REGISTRY[cfg.quant.method](adapter, cfg).check_model()


def fake_quantize(adapter, quantized: QuantizedModel, calib) -> None:
    """Every block linear on its grid (RTN's whole work, and static activation ranges): quantization cost
    too, added to ``quantized.cost``."""
    algo, cfg = quantized.algorithm, quantized.algorithm.cfg
    with Measure(adapter.device) as cost:
        algo.deploy_fake()
        if cfg.quant.act is not None and cfg.quant.act.static:
            algo.calibrate_static_ranges(calib)
    total = quantized.cost
    total["time_s"] += cost.seconds
    total["peak_mem_bytes"] = max(total["peak_mem_bytes"], cost.peak_bytes)
    total["peak_mem_mb"] = total["peak_mem_bytes"] / 2**20
    total["stages_s"]["quantize_weights"] = cost.seconds
    quantized.report = algo.report()


def quantize_model(adapter, cfg: Config, calib=None) -> QuantizedModel:
    """Transform and fake-quantize in one call (no evaluation, no export): the quantize stages for tests,
    benchmarks and scripts."""
    quantized = transform(adapter, cfg, calib)
    fake_quantize(adapter, quantized, calib)
    return quantized


def export(adapter, quantized: Optional[QuantizedModel], cfg: Config, stage: str) -> list:
    """Every exporter the config asks for after ``stage``; returns the paths written."""
    from .export import requested_exporters
    written = []
    for exporter in requested_exporters(cfg, stage):
        path = exporter.export(adapter, quantized, cfg, stage)
        log.info("exported %s (%s) to %s", exporter.name, stage, path)
        written.append(str(path))
    return written


def deploy(adapter, cfg: Config) -> None:
    """The model evaluated at ``real_quant``: with ``save.save_real``, the packed checkpoint itself, loaded
    with integer kernels (what is shipped is what is measured, int8 embeddings included); otherwise the
    fake-quant model with its linears swapped for integer kernels in place."""
    from .deploy import deploy_integer, load_deployed, to_compute_dtype
    if cfg.save.save_real:
        from .paths import packed_dir
        model = load_deployed(packed_dir(cfg), device=adapter.device)
        adapter.model = to_compute_dtype(model, adapter.dtype)
    else:
        deploy_integer(adapter.model)


def check_writable(cfg: Config) -> None:
    """Everything the run will write (the results file's folder, every requested export) must be
    writable, and every requested format able to hold the quantization asked for (``Exporter.refusal``),
    checked before the model loads: one UserError naming the key and the path or the reason otherwise."""
    from .export import requested_exporters
    from .paths import results_path
    targets = [("save.save_path", results_path(cfg).parent)]
    if cfg.quant is not None:
        for stage in ("transformed", "fake_quant"):
            for exporter in requested_exporters(cfg, stage):
                key = exporter.llmc_keys.get(stage)
                reason = exporter.refusal(cfg)
                if reason:
                    raise UserError(f"save.{key if key else 'formats'} ({exporter.name}): {reason}")
                targets.append((f"save.{key}" if key else f"save.formats ({exporter.name})",
                                exporter.target(cfg, stage).parent))
    for key, folder in targets:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".slmquant-write-probe-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise UserError(f"{key}: cannot write to {folder}: {e.strerror or type(e).__name__}") from None


def _previous_run(previous: Optional[dict], path) -> None:
    """Say so when the last run writing this results file was killed from outside (its record is still
    ``running`` and its process is gone): this run replaces it."""
    from .results import effective_status
    if previous is not None and effective_status(previous) == "killed":
        log.warning("the previous run writing %s was killed during stage '%s' (out of memory or SIGKILL?); "
                    "running it again", path, previous.get("stage") or "?")


def run(cfg: Config) -> dict:
    """One experiment from its config; returns the results record's data."""
    from . import resume
    from .estimate import check_resources
    from .paths import results_path
    from .results import RunRecord, environment, git_info
    from .utils import progress_disabled, seed_everything
    seed_everything(cfg.base.seed)
    if progress_disabled():   # --quiet: transformers' own bars (loading weights) too
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    plan = plan_run(cfg)
    check_writable(cfg)
    estimate = check_resources(cfg, plan)
    path = results_path(cfg)
    previous = resume.read_previous(path)
    _previous_run(previous, path)
    record = RunRecord.start(
        path, task_id=cfg.task_id, profile=cfg.profile, config=config_as_dict(cfg), config_file=cfg.source,
        environment=environment(plan.device, plan.dtype), git=git_info(),
        data={name: ev.describe() for name, ev in plan.evaluators.items()})
    if estimate is not None:
        record.set_section("estimate", estimate)
    try:
        with progress.listen(record.progress):   # the long loops' position, in the record
            record.stage("load")
            t0 = time.perf_counter()
            adapter = load(plan)
            record.data["timings"]["load"] = time.perf_counter() - t0
            record.data["model"] = {**plan.source.describe(), "arch": adapter.arch_facts()}
            record.save()
            log.info("model %s (%s): %s", plan.source.name, plan.source.origin, arch_line(adapter.arch_facts()))
            if cfg.quant is not None:
                check_method_on_model(adapter, cfg)
            fingerprint, resumed = _resume_point(cfg, plan, adapter, record, previous)
            reference = _float_reference(cfg, plan, adapter)   # before the method changes the model in place
            evaluate = _evaluator(cfg, plan, record, adapter, reference)   # at every position in eval.eval_pos
            evaluate("pretrain")
            if cfg.quant is not None:
                if resumed is not None:
                    after_quantization(adapter, cfg, _restore(resumed, adapter, record), evaluate, record)
                else:
                    record.stage("calibrate")
                    calib = calibrate(plan, adapter)
                    if calib is not None:
                        record.data["calibration"] = calib.info
                    quantize_stages(adapter, cfg, calib, evaluate, record,
                                    checkpoint=_checkpointer(record, fingerprint))
                for hook in post_run_hooks():
                    record.stage(f"post-run: {getattr(hook, '__name__', hook)}")
                    hook(cfg, record, plan.device, plan.dtype)
            record.stage("done")
            record.finish("complete")
            resume.remove_checkpoint(path)
    except UserError as e:
        _finish_quietly(record, "failed", f"user error: {e}")
        raise
    except KeyboardInterrupt:
        _finish_quietly(record, "interrupted", f"interrupted (Ctrl-C or SIGTERM) during stage '{record.data.get('stage')}'")
        raise
    except BaseException as e:  # recorded, then re-raised: a crash is never silent
        _finish_quietly(record, "failed", f"{type(e).__name__}: {e}")
        raise
    print_summary(record.data, record.path)
    return record.data


# ------------------------------------------------------------------------------- resuming (llmc.resume)
def _resume_point(cfg, plan, adapter, record, previous):
    """With ``save.resume`` on a quantized run: ``(fingerprint, attempt)``, this run's fingerprint (for the
    checkpoint it will write; None when the code cannot be identified) and the interrupted attempt to resume
    from (``llmc.resume.Resumable``, or None). That attempt's finished evaluations and stage times are
    carried into ``record`` now, so that the evaluations skip them."""
    from . import resume
    from .results import ResultsError, read_items
    if cfg.quant is None or not cfg.save.resume:   # an earlier attempt's checkpoint can serve no rerun now
        resume.discard_checkpoint(record.path, "save.resume is off" if cfg.quant is not None else "no quantization")
        return None, None
    fp = resume.fingerprint(record.data["config"], resume.model_identity(plan.source, adapter.model),
                            record.data["git"], record.data["environment"], resume.source_digest())
    found = resume.find_resumable(record.path, previous, fp)
    if found is None:
        return fp, None
    prev = found.previous
    try:   # the interrupted attempt's per-item outcomes (this run has not written its own yet)
        items = read_items(record.items_path) if record.items_path.exists() else {}
    except ResultsError:
        items = {}
    for pos, by_name in found.finished_metrics().items():
        for name, metric in by_name.items():
            if not isinstance(metric, dict) or (metric.get("items_file") and name not in items.get(pos, {})):
                continue   # its per-item outcomes are lost: evaluated again
            record.data["metrics"].setdefault(pos, {})[name] = metric
            if metric.get("items_file"):
                record.set_items(pos, name, items[pos][name])
    timings = prev.get("timings") if isinstance(prev.get("timings"), dict) else {}
    stages = record.data["timings"].setdefault("stages", {})
    for kind, seconds in (timings.get("stages") or {}).items():
        if isinstance(seconds, (int, float)):
            stages[kind] = stages.get(kind, 0.0) + seconds
    for section in ("calibration", "method"):
        if section in prev:
            record.data[section] = prev[section]
    kept = sorted(f"{pos}/{name}" for pos, by in record.data["metrics"].items() for name in by)
    attempts = prev.get("resumed") if isinstance(prev.get("resumed"), list) else []
    record.data["resumed"] = attempts + [{
        "from_status": found.previous_status, "previous_started": prev.get("started"),
        "previous_stage": prev.get("stage"), "previous_process": prev.get("process"), "kept": kept}]
    record.data["resume_checkpoint"] = prev["resume_checkpoint"]
    record.save()
    log.warning("resuming %s from its quantized model (%s); kept: %s", record.path.name, found.checkpoint.name,
                ", ".join(kept) or "no evaluation")
    return fp, found


def _restore(found, adapter, record) -> QuantizedModel:
    """The checkpointed quantized model in ``adapter`` (``llmc.resume.load_checkpoint``)."""
    from . import resume
    record.stage("resume: load quantized model")
    try:
        return QuantizedModel(algorithm=None, **resume.load_checkpoint(found, adapter))
    except ValueError as e:
        raise UserError(f"{found.checkpoint}: cannot resume from it: {e}; delete it to quantize again") from None


def _checkpointer(record, fp):
    """The ``checkpoint`` callback of :func:`quantize_stages` (None without a fingerprint: ``save.resume``
    off, or code that cannot be identified): write the quantized model for resuming, name it in the record."""
    from . import resume
    if fp is None:
        return None

    def checkpoint(adapter, quantized):
        path = resume.checkpoint_path(record.path)
        t = time.perf_counter()
        why = resume.write_checkpoint(path, fp, adapter, quantized)
        if why:
            log.warning("no resume checkpoint (%s): an interrupted run will quantize again", why)
            return
        record.set_section("resume_checkpoint", {"file": path.name, "fingerprint": fp,
                                                 "bytes": path.stat().st_size,
                                                 "seconds": round(time.perf_counter() - t, 2)})
    return checkpoint


def _finish_quietly(record, status: str, error: str) -> None:
    """Record how the run ended; if even that cannot be written (disk full), the file keeps its last
    complete version (writes are atomic) and the original error is the one reported."""
    try:
        record.finish(status, error)
    except OSError as e:
        log.warning("could not record the run's end in %s: %s", record.path, e)


def _float_reference(cfg, plan, adapter):
    """A CPU copy of the float model when an evaluator will compare the quantized model with it
    (``eval.paired``, ``llmc.eval.reference``), else None."""
    from .eval.reference import FloatReference, wanted
    if not wanted(cfg, plan.evaluators):
        return None
    log.info("eval.paired: keeping a CPU copy of the float model for the paired comparisons")
    return FloatReference(adapter.model)


def _evaluator(cfg, plan, record, adapter, reference=None) -> Callable[[str], None]:
    def evaluate(pos: str) -> None:
        if pos not in cfg.eval.eval_pos:
            return
        for name, ev in plan.evaluators.items():
            if name in record.data["metrics"].get(pos, {}):   # finished by the attempt this run resumes
                log.info("%s at %s: kept from the interrupted attempt", name, pos)
                continue
            record.stage(f"evaluate: {name} at {pos}")
            log.info("evaluating %s at %s", name, pos)
            t = time.perf_counter()
            paired = reference is not None and pos != "pretrain" and getattr(ev, "uses_reference", False)
            result = ev.run(adapter, reference=reference) if paired else ev.run(adapter)
            result["wall_seconds"] = time.perf_counter() - t
            items = result.pop("per_item", None)
            if items is not None:
                result["items_file"] = record.set_items(pos, name, items)
            record.set_metric(pos, name, result)
    return evaluate


def quantize_stages(adapter, cfg: Config, calib, evaluate: Callable[[str], None] = lambda pos: None,
                    record=None, checkpoint: Optional[Callable] = None) -> QuantizedModel:
    """Everything after loading and calibration text for a quantized run: transform, evaluate at
    ``transformed``, export, fake-quantize, then (``checkpoint(adapter, quantized)`` if given: the resume
    point, ``llmc.resume``) :func:`after_quantization`. ``evaluate(position)`` is called at each position;
    the results record, if given, gets the method, the quantization cost (Track 3), the method's report and
    the exports."""
    from .results import MethodInfo
    spec = METHODS[cfg.quant.method]
    _save(record, method=MethodInfo(name=spec.name, label=spec.label_for(cfg), calibrated=spec.needs_calib))
    _stage(record, "quantize: transform")
    quantized = transform(adapter, cfg, calib)
    evaluate("transformed")
    _stage(record, "export: transformed")
    quantized.exports = export(adapter, quantized, cfg, "transformed")
    _stage(record, "quantize: fake-quantize")
    fake_quantize(adapter, quantized, calib)
    c = quantized.cost
    log.info("quantization took %.1f s, peak memory %.0f MB (%s)", c["time_s"], c["peak_mem_mb"], c["memory_kind"])
    if checkpoint is not None:
        _stage(record, "checkpoint: for resuming")
        checkpoint(adapter, quantized)
    after_quantization(adapter, cfg, quantized, evaluate, record)
    return quantized


def after_quantization(adapter, cfg: Config, quantized: QuantizedModel,
                       evaluate: Callable[[str], None] = lambda pos: None, record=None) -> None:
    """From the fake-quantized model on (where a resumed run starts, ``llmc.resume``): record the cost and
    the method's report, evaluate at ``fake_quant``, export, deploy and evaluate at ``real_quant`` (if
    asked for)."""
    from .results import QuantCost
    _save(record, quant_cost=QuantCost.from_dict(quantized.cost), **quantized.report)
    evaluate("fake_quant")
    _stage(record, "export: fake_quant")
    exported = quantized.exports + export(adapter, quantized, cfg, "fake_quant")
    if exported:
        _save(record, exports=exported)
    if "real_quant" in cfg.eval.eval_pos:
        _stage(record, "deploy")
        deploy(adapter, cfg)
        evaluate("real_quant")


def _stage(record, name: str) -> None:
    if record is not None:
        record.stage(name)


def _save(record, **sections) -> None:
    if record is not None:
        for name, value in sections.items():
            record.set_section(name, value, save=False)
        record.save()


def arch_line(a: dict) -> str:
    return (f"{a['model_type']}, {a['layers']} layers, hidden {a['hidden_size']}, ffn {a['intermediate_size']}, "
            f"{a['heads']} q / {a['kv_heads']} kv heads, vocab {a['vocab_size']}, "
            f"{'tied' if a['tied_embeddings'] else 'untied'} embeddings")


def print_summary(data: dict, path) -> None:
    from tabulate import tabulate
    rows = []
    for pos, by_name in data["metrics"].items():
        for name, m in by_name.items():
            if "ppl" in m:
                value, detail = f"{m['ppl']:.3f} ppl", f"{m['windows']} x {m['seq_len']} tokens"
                detail += f" (subset of {m['windows_in_split']})" if m.get("limit") else ""
            else:  # an evaluator's headline number (llmc.evaluators): table_metric, table_value, table_stderr, n
                v, se = m.get("table_value"), m.get("table_stderr")
                value = "n/a" if v is None else f"{v:.4f}" + (f" ± {se:.4f}" if se is not None else "")
                value += f" {m.get('table_metric') or ''}".rstrip()
                detail = (f"{m['n']} items" if m.get("n") is not None else "") + (" (subset)" if m.get("limit") else "")
            rows.append([pos, name, value, detail, f"{m.get('wall_seconds', 0):.1f}s"])
    env = data["environment"]
    print()
    print(tabulate(rows, headers=["eval_pos", "dataset", "result", "on", "time"], tablefmt="github"))
    print(f"\nmodel {data['model']['name']} | dtype {env['dtype']} on {env['device']} ({env['cpu'] if env['device'] == 'cpu' else env.get('gpu')})")
    scores = (data.get("inference") or {}).get("scores") or {}
    for kind in ("measured", "paper_compatible"):
        if kind in scores:
            print(f"SLMQ_infer ({kind.replace('_', '-')}): {scores[kind]['slmq_infer']:.1f}")
    if "quant_cost" in data:
        c = data["quant_cost"]
        print(f"quantization: {c['time_s']:.1f} s, peak memory {c['peak_mem_mb']:.0f} MB ({c['memory_kind']})")
    print(f"results: {path}")
