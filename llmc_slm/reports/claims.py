"""The paper's five claims (``published.CLAIMS``), tested on the runs of a results folder.

Each claim gets a verdict, ``holds`` / ``does not hold`` / ``not testable``, ``partial`` when only some of
what it covers has runs, and the evidence (the numbers used). Runs: one per model, method and bits
(:func:`~llmc_slm.reports.collect.primary_runs`), complete ones only; the claims are about the paper's
methods (SmoothQuant, OmniQuant, SpinQuant): RTN and GPTQ are reported beside them, never counted.

Definitions (relative drop of task i: (A_i - A_i^c) / A_i, A = float baseline, c = quantized):

1. W8A8 keeps accuracy: the mean relative drop over the five accuracy tasks is < 0.5% for every method.
2. W4A8 degrades sharply: for every method the W4A8 mean drop exceeds the W8A8 one (by how much is
   reported); and SpinQuant degrades least at W4A8 (smallest mean drop; its SLMQ_perf is reported too).
   Without accuracy results the degradation is 100 - SLMQ_perf on the datasets there are (said so).
3. OmniQuant collapses at W4A8: WikiText-2 perplexity above 10x the float baseline's (or not finite).
4. SmolLM is more robust than Qwen at W4A8: SmolLM's SLMQ_perf is higher, for every method run on both,
   both scored over the datasets the two runs share; the difference's 95% interval comes from a bootstrap
   that resamples each model's items against its own float run, the two models independently.
5. SmoothQuant is the cheapest to quantize: the lowest W8A8 quantization time; the OmniQuant / SpinQuant
   time ratios are reported, and whether they fall in the paper's 6-7x (a test of that part only for runs
   at the methods' own calibration sizes: a calibration profile such as ``cpu`` shrinks each method's by its
   own factor, and the evidence says so).

Noise: a difference smaller than the combined standard error (accuracies' stderr, taken as independent)
is called "within noise"; perplexity and timings come from single runs, without an error estimate. Where
a run and its float baseline stored per-item outcomes on the same items (every task of the drop), the
drop's standard error is the paired one (``llmc_slm.paired``), and claim 1 is decided on its 95% interval:
holds when the interval lies below 0.5%, does not hold when it lies at or above; an interval across 0.5%
keeps the point estimate's verdict and says it is not decided at 95%. Claim 2 compares two quantized runs
of the same model: where both were scored on the same items against the same baseline, the difference of
their drops is paired item by item (:func:`paired_drop_difference`; the baseline cancels) and its 95%
interval is reported the same way. Claim 3's perplexity ratio gets the interval of the paired per-token
log-perplexity difference over windows, exponentiated. A verdict that rests on such an interval crossing the
claim's line is labelled "not decided at 95%" in the verdict itself (``Claim.undecided``), not only in the
evidence. Claim 4 compares different models: nothing pairs across them, so its interval is the independent
bootstrap above (``paired.perf_difference_independent``), and a verdict on an interval across 0 is "not
decided at 95%" as well; claim 5 compares single timings.
Runs evaluated on subsets are tagged in the evidence; the table's note names the items once (:func:`subset_note`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .collect import ACC_DATASETS, LABELS, PAPER_METHODS, Collection, Run, perf_on, primary_runs, same_items
from .published import CLAIMS
from .render import Table
from .tables import is_smollm

HOLDS, FAILS, UNTESTABLE = "holds", "does not hold", "not testable"
W8_THRESHOLD = 0.5        # percent
COLLAPSE_FACTOR = 10.0


@dataclass
class Claim:
    number: int
    text: str
    verdict: str
    evidence: str
    partial: bool = False
    undecided: bool = False   # the verdict rests on point estimates whose paired 95% interval crosses the line

    @property
    def verdict_text(self) -> str:
        return verdict_label(self.verdict, self.undecided, self.partial)


def verdict_label(verdict: str, undecided: bool = False, partial: bool = False) -> str:
    """``holds``, ``holds, not decided at 95%``, ``does not hold (partial)``, ...; not testable as it is."""
    if verdict == UNTESTABLE:
        return verdict
    return verdict + (", not decided at 95%" if undecided else "") + (" (partial)" if partial else "")


@dataclass
class Drop:
    """Degradation of one run: mean relative accuracy drop in % (or 100 - SLMQ_perf), with its stderr."""
    value: float
    stderr: Optional[float]
    tasks: tuple
    kind: str                # "accuracy" or "slmq_perf"
    run: Run
    points: Optional[float] = None   # mean absolute drop in accuracy points (accuracy kind)
    paired: bool = False             # stderr from paired per-item differences against the baseline

    def interval(self, z: float = 1.96) -> Optional[tuple[float, float]]:
        return None if not self.stderr else (self.value - z * self.stderr, self.value + z * self.stderr)

    def text(self) -> str:
        se = f" ± {self.stderr:.2f}{' paired' if self.paired else ''}" if self.stderr else ""
        if self.kind == "accuracy":
            where = f"{len(self.tasks)} tasks" if len(self.tasks) == len(ACC_DATASETS) else \
                ", ".join(LABELS[t] for t in self.tasks)
            pts = f", {self.points:.2f} points" if self.points is not None else ""
            return f"{self.value:.2f}%{se} mean drop ({where}{pts}){_flags(self.run, self.tasks)}"
        return (f"100 - SLMQ_perf = {self.value:.2f}{se} (on {', '.join(LABELS[t] for t in self.tasks)})"
                f"{_flags(self.run, self.tasks)}")


def _flags(run: Run, datasets) -> str:
    """A short tag per run: which of ``datasets`` it has on a subset (the items are named once, in the
    table's note: :func:`subset_note`), a baseline on other items, the calibration profile."""
    flags = []
    subsets = [LABELS[d] for d in datasets if d in run.values and run.values[d].subset]
    if subsets:
        flags.append("subset: " + ", ".join(subsets) if len(subsets) < len(datasets) else "subset")
    if any(d in run.mismatch for d in datasets):
        flags.append("baseline on other items")
    if run.profile:
        flags.append(f"profile {run.profile}")
    return f" [{', '.join(flags)}]" if flags else ""


def mean_drop(run: Run, tasks=ACC_DATASETS) -> Optional[Drop]:
    """Mean relative accuracy drop (%) over the ``tasks`` the run and its baseline both have."""
    used, drops, points, var, var_paired = [], [], [], 0.0, 0.0
    for t in tasks:
        v, b = run.values.get(t), run.baseline.get(t)
        if v is None or b is None or not v.finite or not b.finite or b.value <= 0:
            continue
        used.append(t)
        drops.append(100.0 * (b.value - v.value) / b.value)
        points.append(b.value - v.value)
        var += (100.0 / b.value) ** 2 * ((v.stderr or 0.0) ** 2 + (b.stderr or 0.0) ** 2)
        p = run.paired.get(t)
        var_paired = None if var_paired is None or p is None or p.stderr is None else \
            var_paired + (100.0 / b.value) ** 2 * p.stderr ** 2
    if not used:
        return None
    k = len(used)
    paired = var_paired is not None   # every task paired: the paired error (tasks independent of each other)
    se = math.sqrt(var_paired if paired else var) / k or None
    return Drop(sum(drops) / k, se, tuple(used), "accuracy", run, sum(points) / k, paired)


def perf_drop(run: Run) -> Optional[Drop]:
    if run.perf is None:
        return None
    return Drop(100.0 - run.perf, run.perf_stderr, run.perf_datasets, "slmq_perf", run)


@dataclass
class DropDifference:
    """d(r2) - d(r1): the difference of two runs' mean relative drops (%), paired item by item where both
    runs were scored on the same items against the same baseline (the baseline's outcomes cancel, leaving
    mean_t 100 (A_t^1 - A_t^2) / A_t over the tasks, each task's term with its paired SE)."""
    value: float
    stderr: Optional[float]

    def interval(self, z: float = 1.96) -> Optional[tuple[float, float]]:
        return None if self.stderr is None else (self.value - z * self.stderr, self.value + z * self.stderr)


def paired_drop_difference(r1: Run, r2: Run, tasks) -> Optional[DropDifference]:
    """``mean_drop(r2) - mean_drop(r1)`` over ``tasks`` with its paired SE, or None unless both runs hold
    per-item outcomes on the same items of the same baseline for every task (``Run.paired_items``)."""
    from llmc_slm.paired import paired_delta
    if not tasks:
        return None
    terms, var = [], 0.0
    for t in tasks:
        if not same_items(r1, r2, t) or r1.paired_items[t].tokens is not None:
            return None
        p1, p2 = r1.paired_items[t], r2.paired_items[t]
        base = r1.baseline[t].value                       # percent
        d = paired_delta(p2.b, p1.b)                      # mean(A1 - A2) per item, as a fraction
        if d.stderr is None or not base:
            return None
        k = 100.0 * 100.0 / base
        terms.append(k * d.delta)
        var += (k * d.stderr) ** 2
    n = len(terms)
    return DropDifference(sum(terms) / n, math.sqrt(var) / n)


def _decided(diff: float, pair: Optional[DropDifference], noise_text: str) -> tuple[bool, str, bool]:
    """Whether ``diff > 0``, decided on the paired 95% interval when there is one (an interval across 0
    keeps the point estimate and says so), the text to append, and whether that interval crosses 0."""
    if pair is None or pair.interval() is None:
        return diff > 0, noise_text, False
    lo, hi = pair.interval()
    across = lo <= 0 <= hi
    return diff > 0, (f" (paired 95% interval [{lo:+.2f}, {hi:+.2f}]"
                      + (": not decided at 95%" if across else "") + ")"), across


def _undecided(verdict: str, parts, soft) -> bool:
    """Whether a combined verdict rests on parts whose paired 95% interval crosses the claim's line
    (``soft``: the verdicts of those parts): "holds" needs every part decided, "does not hold" one failing
    part decided."""
    if verdict == HOLDS:
        return bool(soft)
    if verdict == FAILS:
        return parts.count(FAILS) == soft.count(FAILS)
    return False


def degradation(runs) -> dict:
    """Comparable degradations of several runs: mean accuracy drops over the tasks all of them have, else
    100 - SLMQ_perf when they were all scored on the same datasets, else {}."""
    runs = [r for r in runs if r is not None]
    common = [t for t in ACC_DATASETS if all(t in r.values and t in r.baseline for r in runs)]
    if runs and common:
        drops = {id(r): mean_drop(r, common) for r in runs}
        if all(drops.values()):
            return drops
    sets = {r.perf_datasets for r in runs}
    if runs and all(r.perf is not None for r in runs) and len(sets) == 1:
        return {id(r): perf_drop(r) for r in runs}
    return {}


def _within(diff: float, *ses) -> bool:
    s = math.sqrt(sum((x or 0.0) ** 2 for x in ses))
    return s > 0 and abs(diff) <= s


def _combine(parts) -> tuple[str, bool]:
    """Overall verdict of per-part verdicts; partial when some part could not be tested."""
    tested = [p for p in parts if p != UNTESTABLE]
    if not tested:
        return UNTESTABLE, False
    verdict = FAILS if FAILS in tested else HOLDS
    return verdict, len(tested) < len(parts)


class _Runs:
    def __init__(self, coll: Collection):
        self.coll = coll
        self.primary = primary_runs(coll.runs)
        self.models = [m for m in coll.models() if any(not r.is_float for r in coll.of_model(m))]

    def get(self, model, method, bits) -> Optional[Run]:
        r = self.primary.get((model, method, bits))
        return r if r is not None and r.complete and r.baseline else None

    def missing(self, model, method, bits) -> str:
        r = self.primary.get((model, method, bits))
        if r is None:
            return "no run"
        if not r.complete:
            return f"run {r.status}"
        return "no baseline"

    def extras(self, model, bits) -> list:
        return [r for (m, meth, b), r in self.primary.items() if m == model and b == bits
                and meth not in PAPER_METHODS and r.complete and r.baseline]


def claim1(R: _Runs) -> Claim:
    parts, evidence, soft = [], [], []
    for model in R.models:
        lines, missing = [], []
        for method in PAPER_METHODS:
            run = R.get(model, method, "W8A8")
            d = mean_drop(run) if run else None
            if d is None:
                missing.append(f"{method} ({R.missing(model, method, 'W8A8') if not run else 'no accuracy results'})")
                parts.append(UNTESTABLE)
                continue
            ok = d.value < W8_THRESHOLD
            noise = " (within noise of the 0.5% threshold)" if _within(d.value - W8_THRESHOLD, d.stderr) else ""
            if d.paired and d.interval():
                # decided on the paired 95% interval: holds when it lies below the threshold, fails when it
                # lies at or above it; an interval across the threshold leaves the point estimate's verdict
                lo, hi = d.interval()
                ok = hi < W8_THRESHOLD or (lo < W8_THRESHOLD and ok)
                across = lo < W8_THRESHOLD <= hi
                noise = (f" (paired 95% interval [{lo:.2f}, {hi:.2f}]%"
                         + (", across the 0.5% threshold: not decided at 95%" if across else "") + ")")
                if across:
                    soft.append(HOLDS if ok else FAILS)
            parts.append(HOLDS if ok else FAILS)
            if len(d.tasks) < len(ACC_DATASETS):
                parts.append(UNTESTABLE)        # the claim is over five tasks: partial
            lines.append(f"{method} {d.text()}: {'< 0.5%' if ok else '>= 0.5%'}{noise}")
        for run in R.extras(model, "W8A8"):
            d = mean_drop(run)
            if d:
                lines.append(f"extra, not counted: {run.method} {d.text()}")
        if missing:
            lines.append("not tested: " + ", ".join(missing))
        w8 = [R.get(model, m, "W8A8") for m in PAPER_METHODS]
        context = "" if any(mean_drop(r) for r in w8 if r) else _ppl_context(R, model, "W8A8")
        evidence.append(f"{model}: " + "; ".join(lines) + context)
    verdict, partial = _combine(parts)
    evidence.append(_paper_w8a8_drops())
    return Claim(1, CLAIMS[1], verdict, " — ".join(evidence), partial, _undecided(verdict, parts, soft))


def _paper_w8a8_drops() -> str:
    """The same test on the paper's own Tables 1 and 2, for context: taken literally (relative drop under
    0.5%), the claim fails on the paper's SmolLM numbers (0.52-1.08%) and holds on its Qwen numbers."""
    from .published import TABLE1, TABLE2
    parts = []
    for table in (TABLE1, TABLE2):
        rows = {(r["method"], r["bits"]): r for r in table["rows"]}
        base = rows[("Full Prec.", "FP16")]
        for method in PAPER_METHODS:
            r = rows.get((method, "W8A8"))
            if r is None:
                continue
            rel = [100 * (base[t] - r[t]) / base[t] for t in ACC_DATASETS]
            pts = [base[t] - r[t] for t in ACC_DATASETS]
            parts.append(f"{method} {sum(rel) / len(rel):.2f}% ({sum(pts) / len(pts):.2f} points)")
        parts[-3] = f"{table['model']}: " + parts[-3]
    return "the paper's own W8A8 numbers, same test: " + "; ".join(parts)


def _ppl_context(R: _Runs, model, bits) -> str:
    bits_runs = [r for (m, meth, b), r in R.primary.items() if m == model and b == bits and r.complete and
                 "wikitext2" in r.values and "wikitext2" in r.baseline and r.values["wikitext2"].finite]
    if not bits_runs:
        return ""
    parts = [f"{r.method} {100 * (r.values['wikitext2'].value / r.baseline['wikitext2'].value - 1):+.1f}%"
             for r in sorted(bits_runs, key=lambda r: r.method)]
    return f" (for context, {bits} WikiText-2 ppl change: {', '.join(parts)})"


def claim2(R: _Runs) -> Claim:
    parts_a, parts_b, evidence, soft_a, soft_b = [], [], [], [], []
    for model in R.models:
        lines = []
        # (a) W4A8 worse than W8A8 for every method
        for method in PAPER_METHODS:
            r8, r4 = R.get(model, method, "W8A8"), R.get(model, method, "W4A8")
            if not (r8 and r4):
                parts_a.append(UNTESTABLE)
                s8 = R.missing(model, method, "W8A8") if not r8 else "ok"
                s4 = R.missing(model, method, "W4A8") if not r4 else "ok"
                lines.append(f"{method}: W8A8 vs W4A8 not tested (W8A8 {s8}, W4A8 {s4})")
                continue
            d = degradation([r8, r4])
            if not d:
                parts_a.append(UNTESTABLE)
                lines.append(f"{method}: W8A8 and W4A8 not scored on the same datasets")
                continue
            d8, d4 = d[id(r8)], d[id(r4)]
            diff = d4.value - d8.value
            pair = paired_drop_difference(r8, r4, d4.tasks) if d4.kind == "accuracy" else None
            ok, noise, across = _decided(diff, pair, " (within combined stderr)"
                                         if _within(diff, d4.stderr, d8.stderr) else "")
            parts_a.append(HOLDS if ok else FAILS)
            if across:
                soft_a.append(parts_a[-1])
            ratio = f", {d4.value / d8.value:.1f}x" if d8.value >= 0.1 else ""
            lines.append(f"{method}: W4A8 {d4.text()} vs W8A8 {d8.text()}: {diff:+.2f} points{ratio}{noise}")
        # (b) SpinQuant degrades least at W4A8
        w4 = {m: R.get(model, m, "W4A8") for m in PAPER_METHODS}
        present = {m: r for m, r in w4.items() if r}
        if "SpinQuant" not in present or len(present) < 2:
            parts_b.append(UNTESTABLE)
            lines.append("SpinQuant least degraded at W4A8: not tested (" +
                         ("no SpinQuant W4A8 run" if "SpinQuant" not in present else "no other method at W4A8") + ")")
        else:
            d = degradation(present.values())
            if not d:
                parts_b.append(UNTESTABLE)
                lines.append("SpinQuant least degraded at W4A8: not tested (W4A8 runs not scored on the same datasets)")
            else:
                ranked = sorted(present, key=lambda m: d[id(present[m])].value)
                spin = d[id(present["SpinQuant"])]
                best_other = next(m for m in ranked if m != "SpinQuant")
                other = d[id(present[best_other])]
                ok = ranked[0] == "SpinQuant"
                parts_b.append(HOLDS if ok else FAILS)
                within = _within(other.value - spin.value, spin.stderr, other.stderr)
                pair = (paired_drop_difference(present["SpinQuant"], present[best_other], spin.tasks)
                        if spin.kind == "accuracy" else None)
                _, noise, across = _decided(other.value - spin.value, pair,
                                            " (within combined stderr)" if within else "")
                if across:
                    soft_b.append(parts_b[-1])
                perf = ", ".join(f"{m} {present[m].perf:.2f}" for m in ranked if present[m].perf is not None)
                extra = [r for r in R.extras(model, "W4A8")]
                dx = degradation(list(present.values()) + extra) if extra else {}
                extra_txt = ("; extra, not counted: " + ", ".join(f"{r.method} {dx[id(r)].value:.2f}" for r in extra)
                             if dx else "")
                lines.append(f"least degraded at W4A8: {ranked[0]} (" +
                             ", ".join(f"{m} {d[id(present[m])].value:.2f}" for m in ranked) +
                             f" [{spin.kind.replace('_', ' ')} measure]; SLMQ_perf {perf}){extra_txt}; SpinQuant vs "
                             f"{best_other}: {other.value - spin.value:+.2f}{noise}"
                             + ("" if spin.kind == "accuracy" else " — no accuracy results, SLMQ_perf on "
                                + ", ".join(LABELS[t] for t in spin.tasks)
                                + _flags(present["SpinQuant"], spin.tasks)))
        per_task = _task_drops([R.get(model, m, "W4A8") for m in PAPER_METHODS])
        if per_task:
            lines.append("W4A8 relative drop per task, mean over methods (not part of the verdict): " + per_task)
        evidence.append(f"{model}: " + "; ".join(lines))
    va, pa = _combine(parts_a)
    vb, pb = _combine(parts_b)
    verdict, partial = _combine([va, vb])
    partial = partial or pa or pb
    ua, ub = _undecided(va, parts_a, soft_a), _undecided(vb, parts_b, soft_b)
    summary = (f"W4A8 worse than W8A8: {verdict_label(va, ua, pa)}; "
               f"SpinQuant least degraded: {verdict_label(vb, ub, pb)}")
    halves = [(va, ua), (vb, ub)]
    undecided = _undecided(verdict, [v for v, _ in halves], [v for v, u in halves if u])
    return Claim(2, CLAIMS[2], verdict, summary + " — " + " — ".join(evidence), partial, undecided)


def _task_drops(runs) -> str:
    """``MMLU 9.2%, ...`` (largest first): each task's relative drop averaged over the runs that have it."""
    drops: dict = {}
    for r in runs:
        if r is None:
            continue
        for t in ACC_DATASETS:
            v, b = r.values.get(t), r.baseline.get(t)
            if v is not None and b is not None and v.finite and b.finite and b.value > 0:
                drops.setdefault(t, []).append(100.0 * (b.value - v.value) / b.value)
    ranked = sorted(drops, key=lambda t: -sum(drops[t]) / len(drops[t]))
    return ", ".join(f"{LABELS[t]} {sum(drops[t]) / len(drops[t]):.1f}%" for t in ranked)


def claim3(R: _Runs) -> Claim:
    parts, evidence, soft = [], [], []
    from .published import compression_table, row
    for model in R.models:
        run = R.get(model, "OmniQuant", "W4A8")
        if not run or "wikitext2" not in run.values or "wikitext2" not in run.baseline:
            parts.append(UNTESTABLE)
            evidence.append(f"{model}: OmniQuant W4A8 " +
                            (R.missing(model, "OmniQuant", "W4A8") if not run else "has no WikiText-2 perplexity "
                             "with a baseline"))
            continue
        c, b = run.values["wikitext2"].value, run.baseline["wikitext2"].value
        factor = c / b if c is not None and math.isfinite(c) else math.inf
        collapsed = factor > COLLAPSE_FACTOR
        decided = ""
        wiki = run.paired.get("wikitext2")
        if math.isfinite(factor) and wiki is not None and wiki.interval() is not None:
            # the ratio's paired 95% interval: exp of the per-token log-perplexity difference's interval
            lo, hi = (math.exp(x) for x in wiki.interval())
            across = lo <= COLLAPSE_FACTOR < hi
            decided = (f"; paired 95% interval of the ratio [{lo:.2f}, {hi:.2f}]x"
                       + (": not decided at 95%" if across else ""))
            if across:
                soft.append(HOLDS if collapsed else FAILS)
        parts.append(HOLDS if collapsed else FAILS)
        table = compression_table(model)
        p, pf = (row(table, "OmniQuant", "W4A8"), row(table, "Full Prec.")) if table else (None, None)
        paper = (f"; paper ({table['model']}): {p['wikitext2']} vs {pf['wikitext2']} "
                 f"({p['wikitext2'] / pf['wikitext2']:.1f}x)") if p and pf else "; not in the paper"
        ours = f"{c:.2f} vs float {b:.2f} ({factor:.2f}x" if math.isfinite(factor) else \
            f"{c} (diverged) vs float {b:.2f} (not finite"
        evidence.append(f"{model}: OmniQuant W4A8 ppl {ours}, {'>' if collapsed else '<='} {COLLAPSE_FACTOR:g}x)"
                        f"{decided}{_flags(run, ('wikitext2',))}{paper}")
    verdict, partial = _combine(parts)
    return Claim(3, CLAIMS[3], verdict, " — ".join(evidence) or "no quantized runs", partial,
                 _undecided(verdict, parts, soft))


def claim4(R: _Runs) -> Claim:
    from .published import TABLE2, compression_table
    smol = [m for m in R.models if is_smollm(m)]
    other = [m for m in R.models if compression_table(m) is TABLE2]     # the paper's claim is about Qwen
    if not smol or not other:
        return Claim(4, CLAIMS[4], UNTESTABLE, "needs W4A8 runs of a SmolLM model and of another (Qwen) model; "
                     f"models with quantized runs here: {', '.join(R.models) or 'none'}")
    parts, evidence, soft = [], [], []
    for s in smol:
        for q in other:
            for method in PAPER_METHODS:
                rs, rq = R.get(s, method, "W4A8"), R.get(q, method, "W4A8")
                if not (rs and rq and rs.perf is not None and rq.perf is not None):
                    parts.append(UNTESTABLE)
                    evidence.append(f"{method}: not on both models")
                    continue
                common = tuple(ds for ds in rs.perf_datasets if ds in rq.perf_datasets)
                if not common:
                    parts.append(UNTESTABLE)
                    evidence.append(f"{method}: no dataset evaluated on both models")
                    continue
                (ps, ses), (pq, seq) = perf_on(rs, common), perf_on(rq, common)
                diff = ps - pq
                parts.append(HOLDS if diff > 0 else FAILS)
                on = "" if common == rs.perf_datasets == rq.perf_datasets else \
                    f" (both scored on the datasets they share: {', '.join(LABELS[d] for d in common)})"
                interval = _model_difference(rs, rq, common)
                if interval is None:
                    noise = " (within combined stderr)" if _within(diff, ses, seq) else ""
                else:
                    lo, hi = interval
                    noise = (f" (95% interval [{lo:+.2f}, {hi:+.2f}], each model bootstrapped against its own "
                             f"float run" + (": not decided at 95%" if lo <= 0 <= hi else "") + ")")
                    if lo <= 0 <= hi:
                        soft.append(parts[-1])
                evidence.append(f"{method}: SLMQ_perf {s} {ps:.2f}{_flags(rs, common)} vs {q} "
                                f"{pq:.2f}{_flags(rq, common)}: {diff:+.2f}{on}{noise}")
    verdict, partial = _combine(parts)
    return Claim(4, CLAIMS[4], verdict, "; ".join(evidence), partial, _undecided(verdict, parts, soft))


def _model_difference(rs: Run, rq: Run, datasets) -> Optional[tuple[float, float]]:
    """The 95% bootstrap interval of SLMQ_perf(rs) - SLMQ_perf(rq) over ``datasets`` for runs of two
    different models (``paired.perf_difference_independent``), or None unless both runs hold per-item
    outcomes for every dataset."""
    from llmc_slm.paired import perf_difference_independent
    from .collect import BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED
    if not all(ds in r.paired_items for r in (rs, rq) for ds in datasets):
        return None
    try:
        d = perf_difference_independent({ds: rs.paired_items[ds] for ds in datasets},
                                        {ds: rq.paired_items[ds] for ds in datasets},
                                        n_boot=BOOTSTRAP_SAMPLES, seed=BOOTSTRAP_SEED)
    except ValueError:
        return None
    return d["low"], d["high"]


def _times(R: _Runs, model, bits) -> dict:
    out = {}
    for (m, meth, b), r in R.primary.items():
        if m == model and b == bits and r.complete and r.quant_cost and r.quant_cost["time_s"] > 0:
            out[meth] = r
    return out


def _time_line(runs: dict) -> str:
    ordered = sorted(runs.items(), key=lambda x: x[1].quant_cost["time_s"])
    parts = [f"{m} {r.quant_cost['time_min']:.2f} min" for m, r in ordered]
    profiles = {r.profile for r in runs.values()}
    prof = "" if profiles == {None} else f" (profile {', '.join(sorted(str(p) for p in profiles))})"
    return ", ".join(parts) + prof


def claim5(R: _Runs) -> Claim:
    parts, evidence = [], []
    for model in R.models:
        runs = _times(R, model, "W8A8")
        paper_runs = {m: r for m, r in runs.items() if m in PAPER_METHODS}
        extra4 = _times(R, model, "W4A8")
        w4 = f"; at W4A8 (extra): {_time_line(extra4)}" + _ratios(extra4) if extra4 else ""
        if "SmoothQuant" not in paper_runs or len(paper_runs) < 2:
            parts.append(UNTESTABLE)
            have = ", ".join(paper_runs) or "none"
            evidence.append(f"{model}: W8A8 quant_cost of SmoothQuant and OmniQuant/SpinQuant needed "
                            f"(have: {have}){w4}")
            continue
        cheapest = min(paper_runs, key=lambda m: paper_runs[m].quant_cost["time_s"])
        parts.append(HOLDS if cheapest == "SmoothQuant" else FAILS)
        if len(paper_runs) < len(PAPER_METHODS):
            parts.append(UNTESTABLE)
        profiles = {r.profile for r in paper_runs.values()}
        mixed = " (runs of different profiles: not comparable)" if len(profiles) > 1 else ""
        if profiles - {None}:   # the order is the claim's first part; the ratios need the methods' own sizes
            mixed += (" (the 6-7x part is not tested on these runs: a calibration profile shrinks each method's "
                      "calibration by its own factor, so only the order is comparable with the paper's)")
        others = {m: r for m, r in runs.items() if m not in PAPER_METHODS}
        extra = f"; extra, not counted: {_time_line(others)}" if others else ""
        evidence.append(f"{model} W8A8: {_time_line(paper_runs)}; cheapest {cheapest}{_ratios(paper_runs)}{mixed}"
                        f"{extra}{w4}")
    verdict, partial = _combine(parts)
    note = ("paper (A800): OmniQuant / SmoothQuant 6.25x (SmolLM), 7.74x (Qwen); SpinQuant / SmoothQuant 7.01x, "
            "5.93x. Timings are single runs.")
    return Claim(5, CLAIMS[5], verdict, " — ".join(evidence + [note]) if evidence else "no quantized runs", partial)


def _ratios(runs: dict) -> str:
    if "SmoothQuant" not in runs:
        return ""
    t0 = runs["SmoothQuant"].quant_cost["time_s"]
    parts = []
    for m in ("OmniQuant", "SpinQuant"):
        if m in runs:
            r = runs[m].quant_cost["time_s"] / t0
            parts.append(f"{m} / SmoothQuant {r:.2f}x ({'in' if 6.0 <= round(r, 1) <= 7.0 else 'outside'} 6-7x)")
    return "; " + ", ".join(parts) if parts else ""


def evaluate(coll: Collection) -> list[Claim]:
    """The five claims on ``coll``."""
    R = _Runs(coll)
    return [claim1(R), claim2(R), claim3(R), claim4(R), claim5(R)]


def subset_note(coll: Collection) -> Optional[str]:
    """The items of every dataset evaluated on a subset by a complete run, named once (a dataset's runs
    mostly share one sample; different ones are all listed)."""
    seen: dict[str, list[str]] = {}
    for run in coll.runs:
        if not run.complete:
            continue
        for d, v in run.values.items():
            if v.subset and d in LABELS:
                items = seen.setdefault(LABELS[d], [])
                if v.describe_items() not in items:
                    items.append(v.describe_items())
    if not seen:
        return None
    return "'subset': evaluated on a subset of the items: " + "; ".join(
        f"{label} {' or '.join(items)}" for label, items in seen.items()) + "."


def claims_table(claims, coll: Optional[Collection] = None) -> Table:
    """The claims as a table; with ``coll``, a note names the subsets the evidence's runs were scored on."""
    t = Table("claims", "The paper's claims, tested on these runs", ["#", "Claim", "Verdict", "Evidence"], left=4)
    for c in claims:
        t.add([str(c.number), c.text, c.verdict_text, c.evidence])
    t.notes.append("Claims are about SmoothQuant, OmniQuant and SpinQuant (one run per model, method and bits; "
                   "RTN/GPTQ shown as extra). Mean drop = mean over tasks of (A - A_c) / A in %. "
                   "'partial': some of the runs the claim covers are missing. 'within noise': the difference is "
                   "smaller than the combined standard error. 'not decided at 95%': the verdict follows the point "
                   "estimates, but a paired 95% interval it rests on crosses the claim's line.")
    note = subset_note(coll) if coll is not None else None
    if note:
        t.notes.append(note)
    return t
