"""Figures from a results folder (matplotlib, Agg backend), each written as PNG and PDF.

- ``slmq_scores_<model>``: the three SLMQ scores (perf, infer measured, quant) per method, grouped bars, one
  panel per bit width; a score that is missing is not drawn and is annotated ``n/a``;
  SLMQ_perf carries its paired bootstrap 95% interval where the run has one;
- ``accuracy_vs_bits_<model>``: each task's value against the weight bit width (16 = float, 8, 4), one
  line per method, one panel per task; WikiText-2 perplexity in its own panel, log scale;
- ``paired_changes_<model>``: each run's accuracy change against the float model on the same items, in
  points, with its paired 95% interval (``llmc_slm.paired``), one panel per bit setting, one bar per
  method and task: the figure that ranks methods whose accuracies differ by less than their own errors.

One run per model, method and bits (:func:`~llmc_slm.reports.collect.primary_runs`), complete ones only.
"""

from __future__ import annotations

import re

from pathlib import Path

from .collect import ACC_DATASETS, DATASETS, LABELS, METHOD_ORDER, Collection, bits_rank, method_rank, primary_runs
from .tables import cost_scores, slug

SCORES = (("perf", "SLMQ_perf"), ("infer", "SLMQ_infer (measured)"), ("quant", "SLMQ_quant"))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        p = out / f"{stem}.{ext}"
        # no creation date in the PDF: regenerating a figure from the same runs gives the same bytes
        fig.savefig(p, dpi=150 if ext == "png" else None, bbox_inches="tight",
                    metadata={"CreationDate": None} if ext == "pdf" else None)
        paths.append(p)
    return paths


def score_data(coll: Collection, model: str) -> dict:
    """{bits: {method: {"perf": x|None, "infer": x|None, "quant": x|None}}} for ``model``."""
    runs = [r for r in primary_runs(coll.runs).values() if r.model == model and r.complete]
    quant, _ = cost_scores(runs)
    data: dict = {}
    for r in sorted(runs, key=lambda r: (bits_rank(r), method_rank(r.method))):
        ci = r.perf_interval
        data.setdefault(r.bits, {})[r.method] = {
            "perf": r.perf, "infer": (r.inference or {}).get("measured"),
            "quant": (quant.get(r.rel) or {}).get("slmq_quant"),
            "perf_ci": (ci["low"], ci["high"]) if ci else None}
    return data


def plot_scores(coll: Collection, model: str, out: Path) -> list[Path]:
    plt = _pyplot()
    from matplotlib.patches import Patch
    data = score_data(coll, model)
    if not data:
        return []
    counts = [len(m) for m in data.values()]
    fig, axes = plt.subplots(1, len(data), figsize=(1.3 * sum(counts) + 2.5 * len(data), 4.2), squeeze=False,
                             gridspec_kw={"width_ratios": counts})
    width = 0.26
    colors = ("#4C72B0", "#DD8452", "#55A868")
    values = [m[key] for methods in data.values() for m in methods.values() for key, _ in SCORES
              if m[key] is not None]
    values += [m["perf_ci"][1] for methods in data.values() for m in methods.values() if m["perf_ci"]]
    top = max(values + [100.0])
    log = top > 400
    for ax, (bits, methods) in zip(axes[0], data.items()):
        names = list(methods)
        for k, ((key, _), color) in enumerate(zip(SCORES, colors)):
            for i, name in enumerate(names):
                x = i + (k - 1) * width
                v = methods[name][key]
                if v is None:
                    ax.text(x, 1.2 if log else top * 0.02, "n/a", ha="center", va="bottom", fontsize=7,
                            rotation=90, color="0.4")
                else:
                    ax.bar(x, v, width, color=color)
                    ci = methods[name]["perf_ci"] if key == "perf" else None
                    if ci:      # the paired bootstrap 95% interval of SLMQ_perf
                        ax.errorbar(x, v, yerr=[[v - ci[0]], [ci[1] - v]], fmt="none", ecolor="black",
                                    elinewidth=0.8, capsize=2)
                    ax.text(x + width * 0.08 if ci else x, ci[1] if ci else v, f"{v:.0f}", ha="center",
                            va="bottom", fontsize=6)
        ax.axhline(100, color="0.5", lw=0.8, ls="--")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_title(bits)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(1, top * 2)
        else:
            ax.set_ylim(0, top * 1.15)
    axes[0][0].set_ylabel("score (100 = reference)" + (", log scale" if log else ""))
    fig.legend([Patch(color=c) for c in colors], [label for _, label in SCORES], fontsize=7, loc="lower center",
               ncol=len(SCORES), frameon=False)
    whiskers = any(m["perf_ci"] for methods in data.values() for m in methods.values())
    fig.suptitle(f"SLMQ scores, {model} (n/a: not measured, or RTN's SLMQ_quant: no calibration, not scored; "
                 "SLMQ_perf uncapped)" + ("\nwhiskers: SLMQ_perf's paired bootstrap 95% interval" if whiskers else ""),
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    paths = _save(fig, out, f"slmq_scores_{slug(model)}")
    plt.close(fig)
    return paths


def series_suffix(run) -> str:
    """What sets a run's line apart besides its method: activation bits other than 8, a quantized KV cache
    (``W4A8KV4``: " (KV4)"), weights in groups (``W4A8-g64``: " (g64)"), so that a W4A8 run and a W4A8KV4 or
    group-wise run are not one line."""
    parts = [] if run.abits == 8 else [f"A{run.abits}"]
    kv = re.search(r"KV(\d+)", run.bits or "")
    if kv:
        parts.append(f"KV{kv.group(1)}")
    group = re.search(r"-g(\d+)$", run.bits or "")
    if group:
        parts.append(f"g{group.group(1)}")
    return f" ({', '.join(parts)})" if parts else ""


def bits_data(coll: Collection, model: str) -> dict:
    """{dataset: {line label: [(weight bits, value), ...]}}: the float run's value at 16, then each
    method's runs (activation bits in the label when not 8); and ``KLD`` (``"kld"``): each run's WikiText-2
    KL divergence from the float model where the run measured it (0 at 16 bits)."""
    floats = sorted((r for r in coll.of_model(model) if r.is_float and r.complete and r.values),
                    key=lambda r: (-len(r.values), r.rel))
    runs = [r for r in primary_runs(coll.runs).values() if r.model == model and r.complete and r.wbits]
    out: dict = {}
    for ds in DATASETS:
        lines: dict = {}
        for r in sorted(runs, key=lambda r: (method_rank(r.method), bits_rank(r))):
            v = r.values.get(ds)
            if v is None or not v.finite:
                continue
            label = r.method + series_suffix(r)
            pts = lines.setdefault(label, [])
            base = r.baseline.get(ds)
            if not pts and base is not None and base.finite:
                pts.append((16, base.value, base.stderr))
            elif not pts and floats and ds in floats[0].values and floats[0].values[ds].finite:
                pts.append((16, floats[0].values[ds].value, floats[0].values[ds].stderr))
            pts.append((r.wbits, v.value, v.stderr))
        if lines:
            out[ds] = lines
    kld_lines: dict = {}
    for r in sorted(runs, key=lambda r: (method_rank(r.method), bits_rank(r))):
        v = r.values.get("wikitext2")
        k = (v.vs_float or {}).get("kld") if v is not None else None
        if k is not None:
            kld_lines.setdefault(r.method + series_suffix(r), [(16, 0.0, None)]).append((r.wbits, k, None))
    if kld_lines:
        out[KLD] = kld_lines
    return out


KLD = "kld"   # the WikiText-2 KL divergence from the float model (eval.paired), 0 at 16 bits


def plot_bits(coll: Collection, model: str, out: Path) -> list[Path]:
    plt = _pyplot()
    data = bits_data(coll, model)
    if not data:
        return []
    n = len(data)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    markers = "osD^vP*X"
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    for ax, (ds, lines) in zip(axes.flat, data.items()):
        for label, pts in sorted(lines.items(), key=lambda x: (order.get(x[0].split(" ")[0], 99), x[0])):
            pts = sorted(set(pts), key=lambda p: -p[0])
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            line, = ax.plot(xs, ys, marker=markers[order.get(label.split(" ")[0], 7) % len(markers)], ls="none",
                            label=label)
            bars = [(x, y, se) for x, y, se in pts if se and ds not in ("wikitext2", KLD)]
            if bars:     # ± one standard error of the accuracy (each run's own, not paired)
                ax.errorbar([b[0] for b in bars], [b[1] for b in bars], yerr=[b[2] for b in bars], fmt="none",
                            ecolor=line.get_color(), elinewidth=0.8, capsize=2, alpha=0.6)
            for (x0, y0, _), (x1, y1, _) in zip(pts, pts[1:]):
                # solid between neighbouring widths (16-8, 8-4); dotted across a width without a run
                ax.plot([x0, x1], [y0, y1], color=line.get_color(), ls="-" if x0 == 2 * x1 else ":")
        ax.set_xscale("log", base=2)
        ax.set_xticks([16, 8, 4])
        ax.set_xticklabels(["16 (FP)", "8", "4"])
        ax.invert_xaxis()
        ax.set_xlabel("weight bits")
        if ds == KLD:
            ax.set_ylabel("KL(p_float || p_quant) per token")
        elif ds == "wikitext2":
            from matplotlib.ticker import FuncFormatter
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_ylabel("perplexity (log scale)")
        else:
            ax.set_ylabel("accuracy (%)")
        ax.set_title("WikiText-2 KLD from the float model" if ds == KLD else LABELS[ds])
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    subset = any(v.subset for r in coll.of_model(model) for v in r.values.values())
    fig.suptitle(f"{model}: task results against weight bit width (dotted: no run at the width between; "
                 f"bars: ± 1 standard error; the paired changes are in the paired tables)" +
                 ("\nsome points on subsets, see the tables" if subset else ""), fontsize=10)
    fig.tight_layout()
    paths = _save(fig, out, f"accuracy_vs_bits_{slug(model)}")
    plt.close(fig)
    return paths


def paired_data(coll: Collection, model: str) -> dict:
    """{bits: {method label: {dataset: (delta in points, paired SE)}}} for ``model``'s runs with paired
    accuracy changes against their float baseline (``Run.paired``), in the table order."""
    runs = [r for r in primary_runs(coll.runs).values() if r.model == model and r.complete and not r.is_float]
    out: dict = {}
    for r in sorted(runs, key=lambda r: (bits_rank(r), method_rank(r.method))):
        cells = {ds: (r.paired[ds].delta, r.paired[ds].stderr) for ds in ACC_DATASETS
                 if ds in r.paired and r.paired[ds].stderr is not None}
        if cells:
            out.setdefault(r.bits, {})[r.method] = cells
    return out


def plot_paired(coll: Collection, model: str, out: Path, z: float = 1.96) -> list[Path]:
    plt = _pyplot()
    data = paired_data(coll, model)
    if not data:
        return []
    methods = [m for m in METHOD_ORDER if any(m in row for row in data.values())]
    methods += sorted({m for row in data.values() for m in row} - set(methods))
    cmap = plt.get_cmap("tab10")
    color = {m: cmap(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(data), figsize=(5.2 * len(data), 3.8), squeeze=False, sharey=True)
    for ax, (bits, row) in zip(axes[0], data.items()):
        names = [m for m in methods if m in row]
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            xs = [i + (k - (len(names) - 1) / 2) * width for i, ds in enumerate(ACC_DATASETS) if ds in row[name]]
            cells = [row[name][ds] for ds in ACC_DATASETS if ds in row[name]]
            ax.bar(xs, [c[0] for c in cells], width, color=color[name], label=name)
            ax.errorbar(xs, [c[0] for c in cells], yerr=[z * c[1] for c in cells], fmt="none", ecolor="black",
                        elinewidth=0.8, capsize=2)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_xticks(range(len(ACC_DATASETS)))
        ax.set_xticklabels([LABELS[ds] for ds in ACC_DATASETS], rotation=20)
        ax.set_title(bits)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("accuracy change vs float (points)")
    fig.suptitle(f"{model}: accuracy change against the float model on the same items "
                 f"(whiskers: paired 95% interval, ± {z:g} SE)", fontsize=10)
    fig.tight_layout()
    paths = _save(fig, out, f"paired_changes_{slug(model)}")
    plt.close(fig)
    return paths


def make_plots(coll: Collection, out) -> list[Path]:
    """The figures for every model of the folder (the paired one where runs have paired items); returns
    the files written."""
    out = Path(out)
    paths = []
    for model in coll.models():
        paths += plot_scores(coll, model, out)
        paths += plot_bits(coll, model, out)
        paths += plot_paired(coll, model, out)
    return paths
