"""What calibration did, read from the results records: block-wise training losses and the spread over seeds.

- :func:`block_losses_table`: for each run that trained block by block (OmniQuant, OmniQuant+KB), every
  block's mean calibration loss before training and with the parameters the block kept, whether it ended
  above its start and whether it diverged (``llmc.algos.omniquant``'s block log). Side by side, the official
  procedure and keep-best show where they part.
- :func:`seed_spread_table`: runs that differ only in their seed (``quant.special.rotation_seed`` for the
  rotation methods, otherwise ``base.seed``) grouped by model, method label, bits and evaluation set; the
  WikiText-2 perplexity per seed, the mean and sample standard deviation, and, where two labels share
  seeds (SpinQuant and SpinQuant w/o learning), their difference seed by seed, which is the fair test of
  "learning beats random" (same starting rotation).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Optional

from .collect import Run, sort_key
from .render import Table
from .sensitivity import kld_with_stderr

DASH = "—"
WORSE, DIVERGED = "▲", "✗"


def _blocks(run: Run) -> list[dict]:
    return [b for b in run.result.blocks if isinstance(b, dict)]


def trained_blockwise(run: Run) -> bool:
    """Whether the run's block log holds training losses (``loss_init`` / ``loss_final``)."""
    return any("loss_init" in b and "loss_final" in b for b in _blocks(run))


def _loss(x) -> str:
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return "nan" if isinstance(x, float) else DASH
    return f"{x:.4g}"


def _block_cell(block: dict) -> str:
    if "loss_init" not in block:
        return DASH
    marks = (WORSE if block.get("loss_final", 0) > block["loss_init"] else "") + (DIVERGED if block.get("diverged") else "")
    return f"{_loss(block['loss_init'])} → {_loss(block.get('loss_final'))}{marks}"


def run_name(run: Run, with_model: bool = False) -> str:
    """``OmniQuant W4A8``; ``smollm2-135m-instruct: OmniQuant W4A8`` where a table holds several models."""
    name = f"{run.method} {run.bits}" + (f" ({run.task_id})" if run.task_id else "")
    return f"{run.model}: {name}" if with_model else name


def block_losses_table(runs: list[Run]) -> Optional[Table]:
    """One row per block, one column per block-wise trained run; None when no run trained block-wise."""
    trained = sorted((r for r in runs if trained_blockwise(r)), key=sort_key)
    if not trained:
        return None
    several = len({r.model for r in trained}) > 1
    n = max(len(_blocks(r)) for r in trained)
    rows = [[str(i)] + [_block_cell(_blocks(r)[i]) if i < len(_blocks(r)) else DASH for r in trained]
            for i in range(n)]
    notes = [f"{WORSE}: the block ended above its initial loss; {DIVERGED}: training hit a non-finite loss "
             "(the block kept what it had reached, or was reset in keep-best).",
             "Loss: mean squared error of the block's output against the float block's, over the calibration "
             "windows, before training → with the parameters the block kept."]
    for r in trained:
        blocks = _blocks(r)
        worse = [str(i) for i, b in enumerate(blocks) if "loss_init" in b and b.get("loss_final", 0) > b["loss_init"]]
        diverged = [str(i) for i, b in enumerate(blocks) if b.get("diverged")]
        ppl = r.value("wikitext2")
        notes.append(f"{run_name(r, several)}: {len(worse)} of {len(blocks)} blocks ended above their start"
                     + (f" ({', '.join(worse)})" if worse else "")
                     + (f", {len(diverged)} diverged ({', '.join(diverged)})" if diverged else "")
                     + (f"; WikiText-2 perplexity {ppl:.3f}" if ppl is not None else "") + f" [{r.rel}]")
    table = Table("calibration_blocks", "Block-wise calibration losses", ["Block"] + [run_name(r, several) for r in trained],
                  notes=notes)
    for row in rows:
        table.add(row)
    return table


def run_seed(run: Run) -> Optional[int]:
    """The seed that varies between runs of one setting: the rotation seed where the method has one."""
    cfg = run.result.config
    quant = cfg.get("quant") if isinstance(cfg.get("quant"), dict) else {}
    special = quant.get("special") if isinstance(quant.get("special"), dict) else {}
    seed = special.get("rotation_seed")
    if seed is None:
        base = cfg.get("base") if isinstance(cfg.get("base"), dict) else {}
        seed = base.get("seed")
    return seed if isinstance(seed, int) else None


def _eval_set(run: Run) -> Optional[tuple]:
    v = run.values.get("wikitext2")
    return None if v is None else v.items


def seed_groups(runs: list[Run]) -> dict[tuple, dict[int, Run]]:
    """(model, method label, bits, profile, WikiText-2 evaluation set) -> {seed: run}, complete runs only."""
    groups: dict[tuple, dict[int, Run]] = defaultdict(dict)
    for r in sorted(runs, key=sort_key):
        seed, ev = run_seed(r), _eval_set(r)
        if r.is_float or not r.complete or seed is None or ev is None or r.value("wikitext2") is None:
            continue
        groups[(r.model, r.method, r.bits, r.profile, ev)][seed] = r
    return dict(groups)


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else DASH
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def run_kld(r: Run) -> Optional[float]:
    """The run's WikiText-2 KL divergence from the float model (``eval.paired``), if it measured one."""
    return kld_with_stderr(r)[0]


def _spread(values: list, digits: int) -> str:
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else DASH
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def seed_spread_table(runs: list[Run]) -> Optional[Table]:
    """WikiText-2 perplexity per seed for every setting run with two or more seeds; None if there is none;
    with the KLD from the float model and SLMQ_perf over seeds where the runs have them. Settings that differ
    only in the method label and share seeds get a paired-difference note."""
    groups = {k: v for k, v in seed_groups(runs).items() if len(v) >= 2}
    if not groups:
        return None
    seeds = sorted({s for g in groups.values() for s in g})
    grouped = [r for g in groups.values() for r in g.values()]
    extra = [(name, fn, digits) for name, fn, digits in (("KLD mean ± sd", run_kld, 4),
                                                         ("SLMQ_perf mean ± sd", lambda r: r.perf, 2))
             if any(fn(r) is not None for r in grouped)]
    rows = []
    for (model, method, bits, profile, _), by_seed in groups.items():
        ppl = [by_seed[s].value("wikitext2") for s in sorted(by_seed)]
        rows.append([model, method, bits]
                    + [f"{by_seed[s].value('wikitext2'):.3f}" if s in by_seed else DASH for s in seeds]
                    + [_mean_sd(ppl), f"{max(ppl) - min(ppl):.3f}"]
                    + [_spread([fn(r) for r in by_seed.values()], digits) for _, fn, digits in extra])
    notes = ["WikiText-2 perplexity of each seed's run (the rotation seed for rotation methods, else base.seed); "
             "mean ± sample standard deviation over seeds; range = max - min."
             + (" KLD: WikiText-2 KL divergence from the float model; SLMQ_perf over the run's datasets."
                if extra else "")]
    notes.extend(paired_label_notes(groups))
    table = Table("calibration_seeds", "Spread over seeds", ["Model", "Method", "Bits"] + [f"seed {s}" for s in seeds]
                  + ["mean ± sd", "range"] + [name for name, _, _ in extra], notes=notes, left=3)
    for row in rows:
        table.add(row)
    return table


def paired_label_notes(groups: dict[tuple, dict[int, Run]]) -> list[str]:
    """For two labels of one (model, bits, profile, evaluation set) that share seeds: their perplexity
    difference seed by seed, its mean and standard deviation, and how many seeds favour each."""
    by_setting: dict[tuple, dict[str, dict[int, Run]]] = defaultdict(dict)
    for (model, method, bits, profile, ev), by_seed in groups.items():
        by_setting[(model, bits, profile, ev)][method] = by_seed
    notes = []
    for (model, bits, _, _), labels in by_setting.items():
        names = sorted(labels)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                shared = sorted(set(labels[a]) & set(labels[b]))
                if len(shared) < 2:
                    continue
                diffs = [labels[a][s].value("wikitext2") - labels[b][s].value("wikitext2") for s in shared]
                wins = sum(d < 0 for d in diffs)
                kld = [(run_kld(labels[a][s]), run_kld(labels[b][s])) for s in shared]
                kld_txt = ""
                if all(x is not None and y is not None for x, y in kld):
                    kd = [x - y for x, y in kld]
                    kld_txt = (f" KLD {a} − {b}: " + ", ".join(f"{d:+.4f}" for d in kd)
                               + f"; mean {statistics.mean(kd):+.4f} ± {statistics.stdev(kd):.4f} (sd); "
                               + f"{a} lower on {sum(d < 0 for d in kd)} of {len(shared)} seeds.")
                notes.append(f"{model} {bits}: {a} − {b}, seed by seed ({', '.join(map(str, shared))}): "
                             + ", ".join(f"{d:+.3f}" for d in diffs)
                             + f"; mean {statistics.mean(diffs):+.3f} ± {statistics.stdev(diffs):.3f} (sd); "
                             + f"{a} lower on {wins} of {len(shared)} seeds." + kld_txt)
    return notes


def calibration_tables(runs: list[Run]) -> list[Table]:
    return [t for t in (block_losses_table(runs), seed_spread_table(runs)) if t is not None]
