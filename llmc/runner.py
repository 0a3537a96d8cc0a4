"""One experiment, LLMC's pipeline shape: resolve -> load -> evaluate(pretrain) -> quantize -> evaluate.

Everything that can fail because of the user (config, model path, data files) is checked before the
model is loaded. The results record is rewritten after every stage.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path


from .config import Config, dump_config
from .errors import UserError
from .evaluators import make_evaluators
from .models.loading import load_model, resolve_model_source
from .results import RunRecord, environment, git_info
from .utils import pick_device, pick_dtype, seed_everything

log = logging.getLogger("llmc")


def results_path(cfg: Config) -> Path:
    stem = Path(cfg.source).stem if cfg.source else "run"
    if cfg.profile:
        stem = f"{stem}_{Path(cfg.profile).stem}"
    if cfg.task_id:
        stem = f"{stem}_{cfg.task_id}"
    stem = re.sub(r"[^\w.-]+", "_", stem)
    return Path(cfg.save.save_path) / f"{stem}.json"


def run(cfg: Config) -> dict:
    seed_everything(cfg.base.seed)
    device = pick_device(cfg.model.device)
    dtype = pick_dtype(cfg.model.torch_dtype, device)

    # -- everything the user can get wrong, before loading anything heavy
    source = resolve_model_source(cfg.model.path)
    evaluators = make_evaluators(cfg)
    algo_cls = calib_text = None
    if cfg.quant is not None:
        from .registry import ALGO_REGISTRY
        algo_cls = ALGO_REGISTRY[cfg.quant.method]
        if algo_cls.requires_calibration(cfg):
            from .data.calib import resolve_calibration_text
            calib_text, calib_info = resolve_calibration_text(cfg.calib)

    record = RunRecord.start(
        results_path(cfg), task_id=cfg.task_id, profile=cfg.profile, config=_config_dict(cfg), config_file=cfg.source,
        environment=environment(device, dtype), git=git_info(),
        data={name: ev.describe() for name, ev in evaluators.items()})

    try:
        t0 = time.perf_counter()
        adapter = load_model(source, cfg.model.type, dtype=dtype, device=device,
                             tokenizer_mode=cfg.model.tokenizer_mode, seed=cfg.base.seed)
        record.data["timings"]["load"] = time.perf_counter() - t0
        record.data["model"] = {**source.describe(), "arch": adapter.arch_facts()}
        record.save()
        log.info("model %s (%s): %s", source.name, source.origin, _arch_line(adapter.arch_facts()))

        def evaluate(pos: str) -> None:
            if pos not in cfg.eval.eval_pos:
                return
            for name, ev in evaluators.items():
                log.info("evaluating %s at %s", name, pos)
                t = time.perf_counter()
                result = ev.run(adapter)
                result["wall_seconds"] = time.perf_counter() - t
                record.set_metric(pos, name, result)

        evaluate("pretrain")
        if algo_cls is not None:
            calib = None
            if calib_text is not None:
                from .data.calib import make_calibration
                c = cfg.calib
                calib = make_calibration(adapter.tokenizer, calib_text, calib_info, c.n_samples, c.seq_len,
                                         c.preproc, c.seed)
                record.data["calibration"] = calib.info
            record.data["method"] = {"name": cfg.quant.method, "label": algo_cls.label(cfg),
                                     "calibrated": algo_cls.needs_calib}
            algo = algo_cls(adapter, cfg)
            algo.run(calib, record=record, evaluate=evaluate)
            from .registry import POST_RUN_HOOKS
            for hook in POST_RUN_HOOKS:
                hook(cfg, record, device, dtype)
        record.finish("complete")
    except UserError:
        record.finish("failed", "user error")
        raise
    except KeyboardInterrupt:
        record.finish("interrupted", "interrupted (Ctrl-C or SIGTERM)")
        raise
    except BaseException as e:  # recorded, then re-raised: a crash is never silent
        record.finish("failed", f"{type(e).__name__}: {e}")
        raise
    print_summary(record.data, record.path)
    return record.data


def _config_dict(cfg: Config) -> dict:
    import yaml
    return yaml.safe_load(dump_config(cfg))


def _arch_line(a: dict) -> str:
    return (f"{a['model_type']}, {a['layers']} layers, hidden {a['hidden_size']}, ffn {a['intermediate_size']}, "
            f"{a['heads']} q / {a['kv_heads']} kv heads, vocab {a['vocab_size']}, "
            f"{'tied' if a['tied_embeddings'] else 'untied'} embeddings")


def print_summary(data: dict, path: Path) -> None:
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
