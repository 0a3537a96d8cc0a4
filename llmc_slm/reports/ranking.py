"""Which method is better than which: the quantized runs of one model and bit setting ranked by SLMQ_perf,
each compared with the next on the same items (``llmc_slm.paired``).

Two runs scored on the same items against the same float baseline are compared directly, item by item:
what the two quantized models get right or wrong together cancels, so differences far below either run's
own standard error are decided. Each row gives, for ranked neighbours A (higher SLMQ_perf) and B:

- the mean accuracy difference over the tasks both were paired on, in points, ± its paired standard error
  (each task's mean(A_i - B_i) with SE sd(A_i - B_i)/sqrt(n), the tasks taken as independent);
- WikiText-2's per-token log-perplexity difference (A - B) ± its paired SE over windows, and the same for
  their KL divergences from the float model (``window_kl`` of the items files, where the runs measured it);
- SLMQ_perf(A) - SLMQ_perf(B) with its paired bootstrap 95% interval (``paired.perf_difference``), and the
  verdict: "A ahead" when the interval lies above 0, else "not decided". A decided verdict names the
  datasets it rests on (:func:`fragile_datasets`): those without which, left out of SLMQ_perf one at a time
  with the same bootstrap, the interval would include 0. Two runs whose outcomes agree on every item and
  window (:func:`identical_outcomes`; e.g. OmniQuant+KB when keep-best chose the end of training in every
  block, which is OmniQuant's model) are labelled "identical" rather than "not decided".
"""

from __future__ import annotations

import math
from typing import Optional

from llmc_slm.paired import paired_delta, perf_difference, window_log_ppl_delta

from .collect import ACC_DATASETS, BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED, LABELS, Collection, Run, same_items, sort_key
from .render import Table


def accuracy_difference(a: Run, b: Run) -> Optional[tuple[float, float, int]]:
    """(mean over tasks of acc(A) - acc(B) in points, its paired SE, tasks) on the tasks both share items on."""
    terms = []
    for ds in ACC_DATASETS:
        if same_items(a, b, ds):
            d = paired_delta(b.paired_items[ds].b, a.paired_items[ds].b).scaled(100.0)
            if d.stderr is not None:
                terms.append(d)
    if not terms:
        return None
    k = len(terms)
    return sum(d.delta for d in terms) / k, math.sqrt(sum(d.stderr ** 2 for d in terms)) / k, k


def wiki_difference(a: Run, b: Run):
    """The paired per-token log-perplexity difference A - B over the same windows, or None."""
    if not same_items(a, b, "wikitext2"):
        return None
    pa, pb = a.paired_items["wikitext2"], b.paired_items["wikitext2"]
    return window_log_ppl_delta(pb.b, pa.b, pa.tokens)


def kld_difference(a: Run, b: Run):
    """The paired difference of the two runs' KL divergences from the float model (A - B, per token) over the
    same windows, from their items files (``window_kl``), or None."""
    from .collect import run_items
    if not same_items(a, b, "wikitext2"):
        return None
    ia, ib = (run_items(r, r.position, r.values["wikitext2"].source) for r in (a, b))
    if not ia or not ib or "window_kl" not in ia or "window_kl" not in ib:
        return None
    tokens = a.paired_items["wikitext2"].tokens
    return window_log_ppl_delta(ib["window_kl"], ia["window_kl"], tokens)


def perf_items(run: Run) -> dict:
    """The run's paired items of the datasets its SLMQ_perf is scored on."""
    return {d: run.paired_items[d] for d in run.perf_datasets if d in run.paired_items}


def identical_outcomes(a: Run, b: Run, kld=None) -> bool:
    """True when two runs scored the same datasets on the same items with the same outcome on every item
    (accuracy) and the same summed NLL on every window (WikiText-2), and their per-window KL divergences, where
    measured, agree too (``kld``: their :func:`kld_difference`, computed here when not given)."""
    items_a, items_b = perf_items(a), perf_items(b)
    if not items_a or items_a.keys() != items_b.keys() or not all(same_items(a, b, d) for d in items_a):
        return False
    if not all(list(items_a[d].b) == list(items_b[d].b) for d in items_a):
        return False
    kld = kld_difference(a, b) if kld is None else kld
    return kld is None or (kld.delta == 0 and kld.stderr == 0)


def fragile_datasets(items_a: dict, items_b: dict) -> list[str]:
    """The datasets without which a decided SLMQ_perf difference is no longer decided: for each dataset left
    out in turn, the paired bootstrap interval of the difference over the others includes 0 (the same
    replicates and seed). A ranking that rests on one task (e.g. one near chance level) shows here."""
    out = []
    for left_out in items_a:
        rest_a = {d: v for d, v in items_a.items() if d != left_out}
        rest_b = {d: v for d, v in items_b.items() if d != left_out}
        if not rest_a:
            continue
        diff = perf_difference(rest_a, rest_b, n_boot=BOOTSTRAP_SAMPLES, seed=BOOTSTRAP_SEED)
        if diff["low"] <= 0:
            out.append(left_out)
    return out


def ranking_table(coll: Collection, model: str, name: str, number) -> Optional[Table]:
    """Per bit setting, the complete quantized runs with a paired SLMQ_perf ranked, each against the next;
    None when no bit setting has two such runs."""
    runs = [r for r in sorted(coll.of_model(model), key=sort_key)
            if r.complete and not r.is_float and r.perf is not None and r.paired_items]
    by_bits: dict[str, list[Run]] = {}
    for r in runs:
        by_bits.setdefault(r.bits, []).append(r)
    t = Table(name, f"Table {number} (ranking): methods ranked by SLMQ_perf, each against the next on the same "
              f"items, {model}", ["Bits", "A", "B", "Acc A - B (pts)", "Wiki Δln ppl A - B", "KLD A - B",
                                  "SLMQ_perf A - B [95% CI]", "Verdict"], left=3)
    for bits, group in by_bits.items():
        ranked = sorted(group, key=lambda r: -r.perf)
        first = True
        for a, b in zip(ranked, ranked[1:]):
            acc = accuracy_difference(a, b)
            wiki = wiki_difference(a, b)
            items_a, items_b = perf_items(a), perf_items(b)
            try:
                diff = perf_difference(items_a, items_b, n_boot=BOOTSTRAP_SAMPLES, seed=BOOTSTRAP_SEED)
            except ValueError:
                diff = None
            acc_text = "—" if acc is None else f"{acc[0]:+.2f} ± {acc[1]:.2f}" + (
                f" ({acc[2]} of {len(ACC_DATASETS)} tasks)" if acc[2] < len(ACC_DATASETS) else "")
            wiki_text = "—" if wiki is None or wiki.stderr is None else f"{wiki.delta:+.4f} ± {wiki.stderr:.4f}"
            kld = kld_difference(a, b)
            kld_text = "—" if kld is None or kld.stderr is None else f"{kld.delta:+.4f} ± {kld.stderr:.4f}"
            if diff is None:
                perf_text, verdict = f"{a.perf - b.perf:+.2f} (not paired)", "not paired"
            else:
                perf_text = f"{diff['diff']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]"
                verdict = f"{a.label} ahead" if diff["low"] > 0 else (
                    "identical" if identical_outcomes(a, b, kld) else "not decided")
                fragile = fragile_datasets(items_a, items_b) if diff["low"] > 0 else []
                if fragile:
                    verdict += f" (not decided without {', '.join(LABELS.get(d, d) for d in fragile)})"
            t.add([bits, a.label, b.label, acc_text, wiki_text, kld_text, perf_text, verdict], new_group=first)
            first = False
    if not t.rows:
        return None
    t.notes.append("Runs of one bit setting ranked by SLMQ_perf; each row compares a run (A) with the next (B) on "
                   "the same items, item by item: what both models share cancels. Acc: mean over the tasks of "
                   "acc(A) - acc(B) ± paired SE; Wiki: per-token log-perplexity difference ± paired SE over "
                   "windows (negative: A predicts the text better); KLD: the difference of their per-token KL "
                   "divergences from the float model ± paired SE over windows (negative: A is closer to it); "
                   "SLMQ_perf: the difference with a paired "
                   f"bootstrap 95% interval ({BOOTSTRAP_SAMPLES} replicates, seed {BOOTSTRAP_SEED}; the items of "
                   "every dataset resampled once for the float run and both runs). 'ahead': the interval lies "
                   "above 0; '(not decided without X)': with dataset X left out of SLMQ_perf (each in turn, the "
                   "same bootstrap), the interval includes 0, so the ranking rests on X; 'identical': the two runs "
                   "have the same outcome on every item and window (the same model).")
    return t
