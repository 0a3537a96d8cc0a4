"""Paired statistics: what quantization cost, measured on the same items as the float baseline
(protocol.md, "Paired statistics").

For per-item scores a_i (float model) and b_i (quantized model) on the same n items:

    delta = mean(b - a),   SE = sd(b - a, ddof=1) / sqrt(n)

which is much smaller than the unpaired sqrt(SE_a^2 + SE_b^2) when the two models get mostly the same
items right (their scores are correlated). Flips: the share of items whose chosen answer differs from the
float model's (Dutta et al. 2024, "Accuracy is not all you need"), which can be large while the accuracy
barely moves. SLMQ_perf gets a paired bootstrap interval: items are resampled jointly for both models
(the same resampled items for the baseline and the quantized run), independently per dataset.

Plain numpy over plain lists; no torch, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from .scoring import PERPLEXITY_DATASETS


@dataclass(frozen=True)
class PairedDelta:
    """mean(b - a) over n paired items, its standard error, the flips (None without choices), and the
    standard error the same difference would have were the two samples independent (``unpaired_stderr``:
    what comparing two separately reported accuracies gives)."""
    n: int
    mean_a: float
    mean_b: float
    delta: float
    stderr: Optional[float]
    flips: Optional[float] = None
    unpaired_stderr: Optional[float] = None

    def interval(self, z: float = 1.96) -> Optional[tuple[float, float]]:
        """The normal-approximation interval delta ± z SE (95% by default)."""
        if self.stderr is None:
            return None
        return self.delta - z * self.stderr, self.delta + z * self.stderr

    def scaled(self, k: float) -> "PairedDelta":
        """The same in other units (k = 100: accuracies in percent points)."""
        return PairedDelta(self.n, self.mean_a * k, self.mean_b * k, self.delta * k,
                           None if self.stderr is None else self.stderr * k, self.flips,
                           None if self.unpaired_stderr is None else self.unpaired_stderr * k)


def paired_delta(a: Sequence[float], b: Sequence[float], pred_a: Optional[Sequence] = None,
                 pred_b: Optional[Sequence] = None) -> PairedDelta:
    """delta = mean(b - a), SE = sd(b - a, ddof=1) / sqrt(n) (None for n < 2), flips of the chosen
    answers ``pred_a`` / ``pred_b`` when given."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired scores need two equal non-empty lists, got {a.shape} and {b.shape}")
    d = b - a
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else None
    return PairedDelta(int(d.size), float(a.mean()), float(b.mean()), float(d.mean()), se,
                       None if pred_a is None or pred_b is None else flips(pred_a, pred_b), unpaired_stderr(a, b))


def unpaired_stderr(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """The standard error of mean(b) - mean(a) were the two samples independent: sqrt(SE_a^2 + SE_b^2)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or b.size < 2:
        return None
    return float(math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size))


def flips(pred_a: Sequence, pred_b: Sequence) -> float:
    """The share of items whose chosen answer differs between the two models."""
    if len(pred_a) != len(pred_b) or not pred_a:
        raise ValueError("flips need two equal non-empty lists of choices")
    return sum(x != y for x, y in zip(pred_a, pred_b)) / len(pred_a)


def window_log_ppl_delta(nll_a: Sequence[float], nll_b: Sequence[float], tokens: Sequence[int]) -> PairedDelta:
    """Perplexity windows: the per-token log-perplexity difference of each window, (NLL_b - NLL_a) / tokens,
    and its mean with the paired SE over windows (``mean_a`` / ``mean_b``: the mean per-token NLLs)."""
    t = np.asarray(tokens, dtype=float)
    return paired_delta(np.asarray(nll_a, dtype=float) / t, np.asarray(nll_b, dtype=float) / t)


# ----------------------------------------------------------------------------- SLMQ_perf bootstrap
@dataclass(frozen=True)
class PerfItems:
    """One dataset's per-item outcomes for both models, aligned on the same items. Accuracy: ``a`` / ``b``
    are the 0/1 scores of the table metric. Perplexity: ``a`` / ``b`` are the windows' summed NLLs and
    ``tokens`` their token counts."""
    a: Sequence[float]
    b: Sequence[float]
    tokens: Optional[Sequence[int]] = None


def _perf_from_stats(base: np.ndarray, comp: np.ndarray, ppl: np.ndarray) -> np.ndarray:
    """SLMQ_perf per replicate from [B, D] baseline and compressed statistics (accuracy means, or mean
    per-token NLLs where ``ppl``): r = comp / base, or P / P^c = exp(nll_base - nll_comp) for perplexity
    (0 for a non-finite compressed NLL, as ``llmc_slm.scoring.perf_ratios``)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r_acc = comp / base
        r_ppl = np.where(np.isfinite(comp), np.exp(base - comp), 0.0)
    r = np.where(ppl[None, :], r_ppl, r_acc)
    return 100.0 * np.sqrt(np.mean(r * r, axis=1))


def perf_point(items: Mapping[str, PerfItems], lower_is_better=PERPLEXITY_DATASETS) -> float:
    """SLMQ_perf computed from the per-item outcomes (equal to ``scoring.slmq_perf`` on their means)."""
    names = list(items)
    base, comp = _stats(items, names, None)
    return float(_perf_from_stats(base, comp, np.array([n in set(lower_is_better) for n in names]))[0])


def _stats(items, names, idx):
    base, comp = [], []
    for name in names:
        it = items[name]
        a, b = np.asarray(it.a, dtype=float), np.asarray(it.b, dtype=float)
        sel = (lambda x: x[None, :]) if idx is None else (lambda x, i=idx[name]: x[i])
        if it.tokens is None:
            base.append(sel(a).mean(axis=1))
            comp.append(sel(b).mean(axis=1))
        else:
            t = sel(np.asarray(it.tokens, dtype=float)).sum(axis=1)
            base.append(sel(a).sum(axis=1) / t)
            comp.append(sel(b).sum(axis=1) / t)
    return np.stack(base, axis=1), np.stack(comp, axis=1)


def perf_bootstrap(items: Mapping[str, PerfItems], n_boot: int = 2000, seed: int = 0,
                   lower_is_better=PERPLEXITY_DATASETS, level: float = 0.95, chunk: int = 250) -> dict:
    """A paired bootstrap interval of SLMQ_perf: each replicate resamples every dataset's items with
    replacement, the same draws for the baseline and the compressed model, and recomputes SLMQ_perf.
    Returns ``{"perf", "low", "high", "level", "n_boot", "seed", "n": {dataset: items}}`` with the
    (1 - level)/2 and (1 + level)/2 percentiles (2.5 / 97.5 by default)."""
    names = list(items)
    if not names:
        raise ValueError("no datasets to bootstrap")
    for name in names:
        it = items[name]
        if len(it.a) != len(it.b) or not len(it.a) or (it.tokens is not None and len(it.tokens) != len(it.a)):
            raise ValueError(f"{name}: paired items need equal non-empty lists")
    ppl = np.array([n in set(lower_is_better) for n in names])

    def replicate(idx):
        return _perf_from_stats(*_stats(items, names, idx), ppl)

    low, high = _percentiles(replicate, {n: len(items[n].a) for n in names}, n_boot, seed, chunk, level)
    return {"perf": perf_point(items, lower_is_better), "low": low, "high": high, "level": level,
            "n_boot": n_boot, "seed": seed, "n": {n: len(items[n].a) for n in names}}


def _percentiles(replicate, sizes: Mapping[str, int], n_boot: int, seed: int, chunk: int,
                 level: float) -> tuple[float, float]:
    """The (1 - level)/2 and (1 + level)/2 percentiles of ``replicate(idx)`` over ``n_boot`` draws, where
    ``idx`` maps each dataset to [draws, items] indices resampled with replacement (``chunk`` draws at a
    time, from one seeded generator); non-finite replicates are dropped."""
    rng = np.random.default_rng(seed)
    reps = []
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        reps.append(replicate({n: rng.integers(0, k, size=(size, k)) for n, k in sizes.items()}))
    reps = np.concatenate(reps)
    reps = reps[np.isfinite(reps)]
    q = (1 - level) / 2
    low, high = (np.quantile(reps, [q, 1 - q]) if reps.size else (math.nan, math.nan))
    return float(low), float(high)


def perf_difference(items_a: Mapping[str, PerfItems], items_b: Mapping[str, PerfItems], n_boot: int = 1000,
                    seed: int = 0, lower_is_better=PERPLEXITY_DATASETS, level: float = 0.95, chunk: int = 250) -> dict:
    """SLMQ_perf(a) - SLMQ_perf(b) for two compressed models scored on the same items against the same
    baseline, with a paired bootstrap interval: each replicate resamples every dataset's items once and
    scores the baseline and both models on them, so what the two models share cancels. Datasets are those
    both have; each must hold the same baseline outcomes (the same items) in both, else ValueError.
    Returns ``{"diff", "low", "high", "level", "n_boot", "seed", "datasets"}``."""
    names = [n for n in items_a if n in items_b]
    if not names:
        raise ValueError("no dataset scored in both")
    for n in names:
        a, b = items_a[n], items_b[n]
        same_tokens = (a.tokens is None) == (b.tokens is None) and (a.tokens is None or list(a.tokens) == list(b.tokens))
        if len(a.a) != len(b.a) or list(a.a) != list(b.a) or not same_tokens:
            raise ValueError(f"{n}: the two runs were not scored on the same items against the same baseline")
    ia, ib = {n: items_a[n] for n in names}, {n: items_b[n] for n in names}
    ppl = np.array([n in set(lower_is_better) for n in names])

    def replicate(idx):
        base, comp_a = _stats(ia, names, idx)
        _, comp_b = _stats(ib, names, idx)
        return _perf_from_stats(base, comp_a, ppl) - _perf_from_stats(base, comp_b, ppl)

    low, high = _percentiles(replicate, {n: len(ia[n].a) for n in names}, n_boot, seed, chunk, level)
    return {"diff": perf_point(ia, lower_is_better) - perf_point(ib, lower_is_better), "low": low,
            "high": high, "level": level, "n_boot": n_boot, "seed": seed, "datasets": names}


def perf_difference_independent(items_a: Mapping[str, PerfItems], items_b: Mapping[str, PerfItems],
                                n_boot: int = 1000, seed: int = 0, lower_is_better=PERPLEXITY_DATASETS,
                                level: float = 0.95, chunk: int = 250) -> dict:
    """SLMQ_perf(a) - SLMQ_perf(b) for two compressed models each scored against its own baseline (two
    different models: nothing is shared to pair across them), with a bootstrap interval: each replicate
    resamples every dataset of ``a`` and of ``b`` independently, each jointly with its own baseline (the
    paired bootstrap of :func:`perf_bootstrap` within each model), and takes the difference. Datasets are
    those both have. Where the two models happen to share items, any correlation of their outcomes across
    the models is ignored: the two samples are treated as independent.
    Returns ``{"diff", "low", "high", "level", "n_boot", "seed", "datasets"}``."""
    names = [n for n in items_a if n in items_b]
    if not names:
        raise ValueError("no dataset scored in both")
    for side, items in (("first", items_a), ("second", items_b)):
        for n in names:
            it = items[n]
            if len(it.a) != len(it.b) or not len(it.a):
                raise ValueError(f"{n}: the {side} model's paired items need equal non-empty lists")
    ppl = np.array([n in set(lower_is_better) for n in names])
    ia, ib = {n: items_a[n] for n in names}, {n: items_b[n] for n in names}
    sizes = {("a", n): len(ia[n].a) for n in names} | {("b", n): len(ib[n].a) for n in names}

    def replicate(idx):
        perf = [_perf_from_stats(*_stats(it, names, {n: idx[(side, n)] for n in names}), ppl)
                for side, it in (("a", ia), ("b", ib))]
        return perf[0] - perf[1]

    low, high = _percentiles(replicate, sizes, n_boot, seed, chunk, level)
    return {"diff": perf_point(ia, lower_is_better) - perf_point(ib, lower_is_better), "low": low,
            "high": high, "level": level, "n_boot": n_boot, "seed": seed, "datasets": names}
