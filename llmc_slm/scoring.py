"""The three SLMQuant scores: SLMQ_perf, SLMQ_infer and SLMQ_quant.

Definitions from Wang et al., "SLMQuant: Benchmarking Small Language Model
Quantization for Practical Deployment", RichMediaGAI '25,
doi 10.1145/3746262.3761973 (see shared/guide/protocol.md). Every score is a
root mean square of ratios, times 100: 100 means "as good as the reference".

Plain functions over plain dicts; no torch, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

PAPER = (
    'Wang et al., "SLMQuant: Benchmarking Small Language Model Quantization for '
    'Practical Deployment", RichMediaGAI \'25, doi 10.1145/3746262.3761973'
)
ACCURACY_DATASETS = ("mmlu", "arc_easy", "arc_challenge", "piqa", "hellaswag")
PERPLEXITY_DATASETS = ("wikitext2",)
INFER_SPEEDS = ("tps", "macs")


def _rms_score(ratios: Iterable[float]) -> float:
    """100 * sqrt(mean of the squared ratios)."""
    values = list(ratios)
    return 100.0 * math.sqrt(sum(r * r for r in values) / len(values))


def _positive(what: str, value) -> float:
    """``value`` as a float, or ValueError unless it is finite and > 0."""
    x = float(value)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}")
    return x


def _non_negative(what: str, value) -> float:
    """``value`` as a float, or ValueError unless it is finite and >= 0."""
    x = float(value)
    if not (math.isfinite(x) and x >= 0):
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return x


def _require(what: str, mapping: Mapping, keys: Iterable[str]) -> None:
    missing = sorted(k for k in keys if k not in mapping)
    if missing:
        raise ValueError(f"{what} lacks {', '.join(map(repr, missing))}")


# --------------------------------------------------------------------------
# Track 1: compression performance
# --------------------------------------------------------------------------

def perf_ratios(
    baseline: Mapping[str, float],
    compressed: Mapping[str, float],
    lower_is_better: Iterable[str] = PERPLEXITY_DATASETS,
) -> dict[str, float]:
    """Per-dataset ratios r_i of SLMQ_perf (Wang et al., SLMQuant, Track 1 equation).

    r_i = A_i^c / A_i for an accuracy (higher is better) and P_i / P_i^c for a
    metric named in ``lower_is_better`` (perplexity); c = compressed model,
    the other = full-precision baseline. A ratio above 1 means the compressed
    model did better than the baseline on that dataset.

    The datasets scored are the baseline's: every one of them must be in
    ``compressed`` (extra keys there are ignored), else ValueError naming the
    missing ones. Baseline values must be finite and > 0.

    A diverged method is a result, not an error: a NaN or infinite compressed
    perplexity gives the ratio 0 (the limit of P / P^c as P^c grows without
    bound). Any other non-finite, negative or (for a perplexity) zero
    compressed value is an error.
    """
    worse_up = set(lower_is_better)
    if not baseline:
        raise ValueError("baseline has no datasets to score")
    _require("compressed results", compressed, baseline)
    ratios = {}
    for name, base in baseline.items():
        b = _positive(f"baseline {name!r}", base)
        c = float(compressed[name])
        if name in worse_up:
            if math.isnan(c) or c == math.inf:
                ratios[name] = 0.0  # diverged: perplexity blew up
            else:
                ratios[name] = b / _positive(f"compressed {name!r}", c)
        else:
            ratios[name] = _non_negative(f"compressed {name!r}", c) / b
    return ratios


def slmq_perf(
    baseline: Mapping[str, float],
    compressed: Mapping[str, float],
    lower_is_better: Iterable[str] = PERPLEXITY_DATASETS,
    *,
    cap: bool = False,
) -> float:
    """SLMQ_perf (Wang et al., SLMQuant, Track 1 equation).

        SLMQ_perf = 100 * sqrt( (1/N) * sum_i r_i^2 ),  r_i from :func:`perf_ratios`

    ``baseline`` and ``compressed`` map a dataset name (mmlu, arc_easy,
    arc_challenge, piqa, hellaswag, wikitext2, ...) to its accuracy or
    perplexity; accuracies may be fractions or percentages as long as both
    dicts use the same unit. N = the number of baseline datasets.

    The value is uncapped by default: a compressed model better than its
    baseline scores above 100. The paper caps the score at 100 (its Table 2
    prints 100.0 where the formula gives 100.35); ``cap=True`` does the same.
    A diverged perplexity (NaN/inf) counts as ratio 0, so the score is defined.
    """
    score = _rms_score(perf_ratios(baseline, compressed, lower_is_better).values())
    return min(score, 100.0) if cap else score


# --------------------------------------------------------------------------
# Track 2: inference performance
# --------------------------------------------------------------------------

def infer_ratios(
    baseline: Mapping[str, float],
    compressed: Mapping[str, float],
    speed: str = "tps",
) -> dict[str, float]:
    """The three ratios of SLMQ_infer (Wang et al., SLMQuant, Track 2 equation).

    Keys of both dicts: ``peak_mem`` (peak inference memory), ``size`` (model
    storage) and, depending on ``speed``, ``tps`` (tokens per second) or
    ``macs``. Returns ``{"peak_mem": M/M^c, "size": S/S^c, speed: ...}`` with
    the speed ratio TPS^c/TPS for ``speed="tps"`` (the protocol's measured
    score) or MACs/MACs^c for ``speed="macs"`` (the variant that reproduces the
    paper's Table 3). Each ratio is above 1 when the compressed model is better.
    """
    if speed not in INFER_SPEEDS:
        raise ValueError(f"speed must be one of {INFER_SPEEDS}, got {speed!r}")
    keys = ("peak_mem", "size", speed)
    _require("baseline", baseline, keys)
    _require("compressed", compressed, keys)

    def pos(key):
        return (_positive(f"baseline {key!r}", baseline[key]),
                _positive(f"compressed {key!r}", compressed[key]))

    mem, mem_c = pos("peak_mem")
    size, size_c = pos("size")
    if speed == "tps":
        tps = _positive("baseline 'tps'", baseline["tps"])
        speed_ratio = _non_negative("compressed 'tps'", compressed["tps"]) / tps
    else:
        macs, macs_c = pos("macs")
        speed_ratio = macs / macs_c
    return {"peak_mem": mem / mem_c, "size": size / size_c, speed: speed_ratio}


def slmq_infer(
    baseline: Mapping[str, float],
    compressed: Mapping[str, float],
    speed: str = "tps",
) -> float:
    """SLMQ_infer (Wang et al., SLMQuant, Track 2 equation).

        SLMQ_infer = 100 * sqrt( (1/3) * ( (M/M^c)^2 + (TPS^c/TPS)^2 + (S/S^c)^2 ) )

    M = peak inference memory, TPS = tokens per second, S = model storage;
    c = compressed, the other = full-precision baseline. ``speed="macs"``
    puts baseline MACs / compressed MACs in place of the TPS ratio: the
    paper-compatible variant, which reproduces Table 3 when its "GPU Mem."
    column is M and its "Model Size" column (a parameter count in millions,
    printed as MB) is S. Not capped: a smaller, faster model scores above 100.
    """
    return _rms_score(infer_ratios(baseline, compressed, speed).values())


# The SLMQ_infer variants of a Track 2 record: name -> (size key, speed key, speed) of the
# profile dicts ``llmc_slm.tracks.inference`` writes (bytes, parameters, tokens/s, MACs).
INFER_VARIANTS = {
    # the protocol's score: peak memory, stored bytes, measured prefill tokens/s
    "measured": ("size", "tps", "tps"),
    # reproduces the paper's Table 3: calflops' parameter count as the size, calflops' MACs as the speed
    "paper_compatible": ("params_calflops", "macs_calflops", "macs"),
    # every MAC counted (attention and integer GEMMs): quantization leaves the count, so that ratio is ~1
    "counted_macs": ("size", "macs", "macs"),
}


def infer_variants(
    baseline: Mapping[str, float],
    compressed: Mapping[str, float],
    skip_invalid: bool = False,
) -> dict[str, dict]:
    """SLMQ_infer of every variant in :data:`INFER_VARIANTS` that both profiles have the figures for:
    ``{variant: {"slmq_infer", "ratios", "inputs": {"size": key, "speed": key}}}``.

    A variant whose keys are missing from either profile is left out; one whose figures are not valid
    (not finite and > 0) raises ValueError, or is left out with ``skip_invalid=True``.
    """
    out = {}
    for name, (size_key, speed_key, speed) in INFER_VARIANTS.items():
        if any(k not in p for k in ("peak_mem", size_key, speed_key) for p in (baseline, compressed)):
            continue
        b, c = ({"peak_mem": p["peak_mem"], "size": p[size_key], speed: p[speed_key]} for p in (baseline, compressed))
        try:
            ratios = infer_ratios(b, c, speed=speed)
        except (ValueError, TypeError):
            if skip_invalid:
                continue
            raise
        out[name] = {"slmq_infer": _rms_score(ratios.values()), "ratios": ratios,
                     "inputs": {"size": size_key, "speed": speed_key}}
    return out


# --------------------------------------------------------------------------
# Track 3: quantization consumption
# --------------------------------------------------------------------------

def quant_ratios(
    costs_by_method: Mapping[str, Mapping[str, float]],
) -> dict[str, dict[str, float]]:
    """Per-method ratios of SLMQ_quant (Wang et al., SLMQuant, Track 3 equation).

    ``{method: {"time": T, "peak_mem": M}}`` -> ``{method: {"time": T_max/T,
    "peak_mem": M_max/M}}``, T_max and M_max being the largest time and memory
    among the methods given (compare methods of one model only). Units do not
    matter as long as they are the same for every method.
    """
    if not costs_by_method:
        raise ValueError("no methods to score")
    costs = {}
    for method, cost in costs_by_method.items():
        _require(f"costs of {method!r}", cost, ("time", "peak_mem"))
        costs[method] = (_positive(f"{method!r} time", cost["time"]),
                         _positive(f"{method!r} peak_mem", cost["peak_mem"]))
    t_max = max(t for t, _ in costs.values())
    m_max = max(m for _, m in costs.values())
    return {method: {"time": t_max / t, "peak_mem": m_max / m}
            for method, (t, m) in costs.items()}


def slmq_quant(costs_by_method: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """SLMQ_quant per method (Wang et al., SLMQuant, Track 3 equation).

        SLMQ_quant = 100 * sqrt( (1/2) * ( (T_max/T)^2 + (M_max/M)^2 ) )

    T = quantization wall-clock time, M = its peak memory; T_max, M_max = the
    largest among the methods compared for the same model, so the costliest
    method on both axes scores exactly 100 and cheaper ones score more.
    """
    return {method: _rms_score(r.values())
            for method, r in quant_ratios(costs_by_method).items()}
