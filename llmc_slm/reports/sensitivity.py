"""How sensitive each architecture is to each method and bit width, side by side: the question of the paper's
claim 4 ("SmolLM is more robust than Qwen"), asked with every model in a folder (Llama-shaped SmolLM2 and
Qwen2.5, Gemma-3's four-norm layout).

Per (method, bits) and model, from the run's paired statistics against its own float baseline
(``llmc_slm.paired``, attached by ``collect.attach_baselines``):

* ``acc Δ``: the mean over the accuracy tasks the run has of the paired change (quantized - float, points),
  ± the standard error of that mean, sqrt(sum SE_i^2) / k (tasks taken as independent); ``k/5`` when
  fewer than the five table tasks are paired;
* ``KLD``: WikiText-2's mean KL(p_float || p_quant) per predicted token (``eval.paired``), the
  measure of output distortion that does not depend on how hard a task is for the float model;
* ``Δ ln ppl``: the mean per-token log-perplexity change over windows ± its paired SE.

Across models the comparison is between separate samples (each model has its own items), so two cells
differ beyond noise only when their intervals are apart; the table says which pairs are. Where the models
were computed in different dtypes (bfloat16 on a CPU with AMX, float32 where bfloat16 has no fast kernels)
a note says so: the dtype then differs along with the architecture.

KLD and Δ ln ppl are per token, and each model splits WikiText-2's test text with its own tokenizer (Gemma-3's
262k words, Qwen2.5's 152k, SmolLM2's 49k). A per-token figure times the model's token count is the change over
the same text, so a note gives each model's count (its windows of ``seq_len`` tokens in the split) and the
largest ratio between them: the factor by which tokenization alone can move a comparison of per-token
figures across models. Two models' KLDs are called different only when they are apart beyond their 95%
interval (SEs over windows) and their ratio exceeds that factor.

Last, a line per pair of models counts, over the settings both ran, how often each has the larger KLD and the
larger accuracy loss, and how many of those orders are decided by the rules above: the answer to "which
architecture is the more sensitive" that no single cell gives. A note names the methods fitted on WikiText-2 text:
for them KLD and Δ ln ppl are in-domain figures (on Gemma-3, GPTQ W4A8 cuts RTN's KLD from 2.10 to 0.58 and loses
the same accuracy), so the accuracy columns are what speaks for other text. Another gives each model's float
accuracy and its headroom above chance (``TaskSpec.chance``): a model near chance has little accuracy to lose, so
the same acc Δ weighs more on a model with less headroom; the tallies also count who loses the larger share of
its headroom. Another note names the settings that are one model under two names (the same outcome on every item
and window as another setting of that model), which the tallies count twice.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional

from llmc_slm.tasks import TASKS

from .collect import ACC_DATASETS, COLUMN_TASKS, LABELS, Collection, Run, float_runs, primary_runs, sort_key
from .ranking import identical_outcomes
from .render import Table

DASH = "—"


def accuracy_change(run: Run) -> Optional[tuple[float, Optional[float], int]]:
    """(mean paired change in points, its standard error, tasks) over the accuracy tasks paired in ``run``."""
    deltas = [run.paired[ds] for ds in ACC_DATASETS if ds in run.paired]
    if not deltas:
        return None
    mean = sum(d.delta for d in deltas) / len(deltas)
    ses = [d.stderr for d in deltas]
    se = math.sqrt(sum(s * s for s in ses)) / len(deltas) if all(s is not None for s in ses) else None
    return mean, se, len(deltas)


def kld_with_stderr(run: Run) -> tuple[Optional[float], Optional[float]]:
    """WikiText-2's mean per-token KL(p_float || p_quant) and its standard error over windows (None: absent)."""
    v = run.values.get("wikitext2")
    vs = (v.vs_float or {}) if v is not None else {}
    return vs.get("kld"), vs.get("kld_stderr")


def kld_order(ka: tuple, kb: tuple, factor: float) -> Optional[tuple[bool, float, Optional[bool], bool]]:
    """Two models' (KLD, SE): (whether a's is the larger, the ratio larger / smaller, whether they are apart
    beyond their 95% interval (None without an SE), whether the order is decided: apart beyond noise where an SE
    is recorded, and a ratio above ``factor``); None when a KLD is missing or zero."""
    if ka[0] is None or kb[0] is None or min(ka[0], kb[0]) <= 0:
        return None
    a_higher = ka[0] >= kb[0]
    khi, klo = (ka, kb) if a_higher else (kb, ka)
    ratio = khi[0] / klo[0]
    noise = None if khi[1] is None or klo[1] is None else \
        khi[0] - klo[0] > 1.96 * math.sqrt(khi[1] ** 2 + klo[1] ** 2)
    return a_higher, ratio, noise, noise is not False and ratio > factor


def kld_verdict(setting: str, a: str, b: str, ka: tuple, kb: tuple, factor: float) -> Optional[str]:
    """Which of two models' KLDs is larger, by what ratio, and whether the ratio is beyond both noise (95%) and
    ``factor`` (what tokenization alone can move); None when a KLD is missing or zero."""
    order = kld_order(ka, kb, factor)
    if order is None:
        return None
    a_higher, ratio, noise, _ = order
    hi, lo = (a, b) if a_higher else (b, a)
    if noise is False:
        why = "within the 95% interval: not decided"
    elif ratio <= factor:
        why = f"within the {factor:.2f} tokenization factor: not decided"
    else:
        why = f"beyond {'noise and ' if noise else ''}the {factor:.2f} tokenization factor" + \
            ("" if noise else "; no standard error recorded")
    return f"{setting}: {hi}'s KLD is {ratio:.2f}x {lo}'s ({why})"


class PairTally:
    """Over the settings two models both ran: in how many each model's KLD is the larger and each loses the
    more accuracy, and in how many of those the order is decided (the verdicts' rules). Given the two models'
    headroom above chance (:func:`float_headroom`), also who loses the larger share of it: each change and its
    SE divided by its model's headroom (taken as exact), ordered by the same rule."""

    def __init__(self, a: str, b: str, headroom: Optional[tuple[float, float]] = None):
        self.a, self.b = a, b
        self.settings = 0
        self.kld = {a: [0, 0], b: [0, 0]}          # model -> [larger, decided]
        self.acc = {a: [0, 0], b: [0, 0]}          # model -> [loses more, decided]
        self.headroom = headroom if headroom is not None and min(headroom) > 0 else None
        self.share = {a: [0, 0], b: [0, 0]}        # model -> [loses the larger share of its headroom, decided]

    @staticmethod
    def _count(counts: dict, order, a: str, b: str) -> None:
        if order is not None:
            c = counts[a if order[0] else b]
            c[0] += 1
            c[1] += bool(order[1])

    def add(self, kld_a, kld_b, change_a, change_b, factor: float) -> None:
        self.settings += 1
        order = kld_order(kld_a, kld_b, factor)
        if order is not None:
            self._count(self.kld, (order[0], order[3]), self.a, self.b)
        self._count(self.acc, accuracy_order(change_a, change_b), self.a, self.b)
        if self.headroom is not None and change_a is not None and change_b is not None:
            (ha, hb) = self.headroom
            scaled = [(c[0] / h, None if c[1] is None else c[1] / h, c[2]) for c, h in ((change_a, ha), (change_b, hb))]
            self._count(self.share, accuracy_order(*scaled), self.a, self.b)

    def line(self) -> str:
        a, b = self.a, self.b

        def counts(what: str, by: dict) -> str:
            return f"{what} {a} in {by[a][0]} ({by[a][1]} decided), {b} in {by[b][0]} ({by[b][1]} decided)"

        parts = [counts("the larger KLD", self.kld), counts("the larger accuracy loss", self.acc)]
        if self.headroom is not None:
            parts.append(counts("the larger share of its headroom above chance lost", self.share))
        return f"Across the {self.settings} settings both ran, {a} against {b}: " + "; ".join(parts) + "."


def _acc_cell(change) -> str:
    if change is None:
        return DASH
    mean, se, k = change
    text = f"{mean:+.2f}" + (f" ± {se:.2f}" if se is not None else "")
    return text + (f" ({k}/{len(ACC_DATASETS)})" if k < len(ACC_DATASETS) else "")


def _ppl_cell(run: Run) -> str:
    p = run.paired.get("wikitext2")
    if p is None:
        return DASH
    return f"{p.delta:+.4f}" + (f" ± {p.stderr:.4f}" if p.stderr is not None else "")


def apart(a, b, z: float = 1.96) -> Optional[bool]:
    """Whether two (mean, se, k) accuracy changes differ beyond their combined 95% interval."""
    if a is None or b is None or a[1] is None or b[1] is None:
        return None
    return abs(a[0] - b[0]) > z * math.sqrt(a[1] ** 2 + b[1] ** 2)


def accuracy_order(ca, cb) -> Optional[tuple[bool, Optional[bool]]]:
    """Two models' accuracy changes (mean, se, k): (whether a loses the more, whether the two are apart beyond
    their 95% interval: None without both SEs); None when a change is missing. The one rule of the accuracy
    verdicts and the tallies."""
    if ca is None or cb is None:
        return None
    return ca[0] < cb[0], apart(ca, cb)


def model_dtypes(runs) -> dict[str, str]:
    """Each model's compute dtype (``environment.dtype``), "mixed" where its runs recorded several."""
    seen: dict[str, set] = {}
    for r in runs:
        if r.environment.dtype:
            seen.setdefault(r.model, set()).add(r.environment.dtype)
    return {m: ds.pop() if len(ds) == 1 else "mixed (" + ", ".join(sorted(ds)) + ")" for m, ds in seen.items()}


def wikitext_tokens(runs) -> dict[str, tuple[int, int]]:
    """Each model's (windows in WikiText-2's test split, tokens per window), from its runs' recorded values."""
    out: dict[str, tuple[int, int]] = {}
    for r in runs:
        v = r.values.get("wikitext2")
        if v is not None and v.n_total and v.seq_len:
            out.setdefault(r.model, (v.n_total, v.seq_len))
    return out


def tokenization_factor(runs) -> float:
    """The largest ratio between the models' WikiText-2 token counts (1.0 with fewer than two counts)."""
    tokens = [w * t for w, t in wikitext_tokens(runs).values()]
    return max(tokens) / min(tokens) if len(tokens) > 1 else 1.0


def float_headroom(coll: Collection) -> dict[str, tuple[float, float, int]]:
    """Model -> (its float run's mean accuracy over the table tasks it has, in points; that mean's headroom
    above chance, a uniform guess per task (``TaskSpec.chance``); the number of tasks). The float run is the
    one ``collect.attach_baselines`` prefers (``collect.float_runs``)."""
    out = {}
    for model in coll.models():
        floats = float_runs(r for r in coll.runs if r.model == model)
        if not floats:
            continue
        accs, chances = [], []
        for ds in ACC_DATASETS:
            v = floats[0].values.get(ds)
            chance = TASKS[COLUMN_TASKS[ds][0]].chance
            if v is not None and v.finite and chance is not None:
                accs.append(v.value)
                chances.append(100 * chance)
        if accs:
            mean = sum(accs) / len(accs)
            out[model] = mean, mean - sum(chances) / len(chances), len(accs)
    return out


def headroom_note(coll: Collection) -> Optional[str]:
    """Each model's float accuracy and headroom above chance: what bounds its accuracy loss (a model at chance
    has nothing to lose), so that a loss is read against its headroom as well as against the other models'."""
    room = float_headroom(coll)
    if len(room) < 2:
        return None
    parts = "; ".join(f"{m} {acc:.1f} ({head:+.1f} above chance{'' if k == len(ACC_DATASETS) else f', {k} tasks'})"
                      for m, (acc, head, k) in room.items())
    by_chance: dict = {}
    for ds in ACC_DATASETS:
        chance = TASKS[COLUMN_TASKS[ds][0]].chance
        if chance is not None:
            by_chance.setdefault(str(Fraction(chance).limit_denominator(100)), []).append(LABELS[ds])
    guess = "; ".join(f"{c} for {', '.join(labels)}" for c, labels in by_chance.items())
    return (f"Float accuracy, mean over the tasks, and its headroom above chance (a uniform guess: {guess}): "
            f"{parts}. A quantized model cannot fall much below chance, so a "
            "model with less headroom has less accuracy to lose: read each acc Δ against its model's headroom "
            "as well as against the other models' acc Δ.")


def calibrated_on_wikitext(run: Run) -> bool:
    """Whether the run's calibration text is WikiText-2 (its record's ``calibration`` section)."""
    cal = run.result.calibration or {}
    return "wikitext" in str(cal.get("file", "")).lower() or str(cal.get("preproc", "")).startswith("wikitext")


def calibration_note(runs) -> Optional[str]:
    """Which methods were fitted on WikiText-2 text, so that their KLD and Δ ln ppl (measured on WikiText-2's
    test split) are in-domain figures, and the accuracy tasks the out-of-domain measure."""
    methods = sorted({r.method for r in runs if not r.is_float and calibrated_on_wikitext(r)})
    if not methods:
        return None
    return (f"Calibrated on WikiText-2 text (the record's calibration file): {', '.join(methods)}. Their KLD and "
            f"Δ ln ppl are measured on WikiText-2's test split, disjoint but of the same kind, so they can "
            f"understate what the method changes on other text; the accuracy columns are the other-text measure.")


def identical_runs_note(runs) -> Optional[str]:
    """Which of a model's settings are one model under two names (:func:`ranking.identical_outcomes`: the same
    outcome on every item and window, e.g. OmniQuant+KB whose keep-best kept the end of training everywhere):
    each such setting repeats a comparison in the tallies."""
    groups: dict = {}
    for r in sorted(runs, key=sort_key):
        groups.setdefault((r.model, r.bits), []).append(r)
    pairs = [f"{model}: {a.label} and {b.label} {bits}" for (model, bits), group in groups.items()
             for i, a in enumerate(group) for b in group[i + 1:] if identical_outcomes(a, b)]
    if not pairs:
        return None
    return ("One model under two names (the same outcome on every item and window; 'identical' in the ranking "
            "tables): " + "; ".join(pairs) + ". The tallies count each of these settings as its own, so a pair "
            "of models that both have it counts that comparison twice.")


def tokenization_note(runs) -> Optional[str]:
    """How much tokenization can move a comparison of per-token KLD / Δ ln ppl across the models."""
    counts = wikitext_tokens(runs)
    if len(counts) < 2:
        return None
    ratio = tokenization_factor(runs)
    listed = "; ".join(f"{m} {w} windows of {t}" for m, (w, t) in sorted(counts.items()))
    return (f"Tokenization: WikiText-2 is the same text for every model, split into {listed} tokens; KLD and Δ ln "
            f"ppl are per token, so tokenization alone moves a comparison of them across models by a factor of "
            f"at most about {ratio:.2f} (per-token figure x token count = the change over the same text).")


def sensitivity_table(coll: Collection, name: str = "sensitivity") -> Table:
    models = coll.models()
    runs = primary_runs(r for r in coll.runs if r.complete)
    settings = []
    for r in sorted(runs.values(), key=sort_key):
        if (r.method, r.bits) not in settings:
            settings.append((r.method, r.bits))
    columns = ["Method", "Bits"]
    for m in models:
        columns += [f"{m}: acc Δ", f"{m}: KLD", f"{m}: Δ ln ppl"]
    t = Table(name, "Sensitivity by architecture: paired change against each model's own float baseline",
              columns, left=2)
    verdicts, kld_verdicts = [], []
    room = {m: head for m, (_, head, _) in float_headroom(coll).items()}
    tallies = {(a, b): PairTally(a, b, (room[a], room[b]) if a in room and b in room else None)
               for i, a in enumerate(models) for b in models[i + 1:]}
    factor = tokenization_factor(runs.values())
    for method, bits in sorted(settings, key=lambda s: (s[1] != "W8A8", s[1], s[0])):
        cells, changes, klds = [], {}, {}
        for m in models:
            r = runs.get((m, method, bits))
            if r is None:
                cells += [DASH] * 3
                continue
            changes[m] = accuracy_change(r)
            klds[m] = kld_with_stderr(r)
            k = klds[m][0]
            cells += [_acc_cell(changes[m]), DASH if k is None else f"{k:.4f}", _ppl_cell(r)]
        t.add([method, bits] + cells)
        present = [m for m in models if changes.get(m) is not None]
        for i, a in enumerate(present):
            for b in present[i + 1:]:
                a_worse, decided = accuracy_order(changes[a], changes[b])
                if decided is not None:
                    worse, other = (a, b) if a_worse else (b, a)
                    verdicts.append(f"{method} {bits}: {worse} loses more accuracy than {other}"
                                    + ("" if decided else " (within the 95% interval: not decided)"))
        with_kld = [m for m in models if m in klds]
        for i, a in enumerate(with_kld):
            for b in with_kld[i + 1:]:
                v = kld_verdict(f"{method} {bits}", a, b, klds[a], klds[b], factor)
                if v:
                    kld_verdicts.append(v)
        ran = [m for m in models if (m, method, bits) in runs]
        for i, a in enumerate(ran):
            for b in ran[i + 1:]:
                tallies[(a, b)].add(klds[a], klds[b], changes[a], changes[b], factor)
    t.notes.append("acc Δ: mean over the paired accuracy tasks of (quantized - float) in points ± SE of that mean "
                   "(tasks independent; k/5 when fewer tasks are paired); KLD: WikiText-2 mean KL(p_float || "
                   "p_quant) per token; Δ ln ppl: mean per-token log-perplexity change over windows ± paired SE.")
    t.notes.extend(verdicts)
    t.notes.extend(kld_verdicts)
    t.notes.extend(tally.line() for tally in tallies.values() if tally.settings)
    headroom = headroom_note(coll)
    if headroom:
        t.notes.append(headroom)
    identical = identical_runs_note(runs.values())
    if identical:
        t.notes.append(identical)
    calibration = calibration_note(runs.values())
    if calibration:
        t.notes.append(calibration)
    tokenization = tokenization_note(runs.values())
    if tokenization:
        t.notes.append(tokenization)
    dtypes = model_dtypes(runs.values())
    if len(set(dtypes.values())) > 1:
        t.notes.append("Compute dtypes differ: " + "; ".join(f"{m} {d}" for m, d in sorted(dtypes.items()))
                       + ". Each model's changes are against its own float run in the same dtype, but across "
                       "models the dtype differs along with the architecture (the folder's README says what it "
                       "moves).")
    if len(models) < 2:
        t.notes.append("Only one model in this folder: nothing to compare across architectures.")
    return t
