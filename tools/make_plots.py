#!/usr/bin/env python
"""Plots from a folder of results JSON files (matplotlib, PNG and PDF).

    python tools/make_plots.py results/                 # into results/plots/
    python tools/make_plots.py results/smollm --out /tmp/plots

Per model: ``slmq_scores_<model>`` (SLMQ_perf, SLMQ_infer measured and SLMQ_quant per method, grouped
bars per bit width; missing scores annotated n/a) and ``accuracy_vs_bits_<model>`` (each task against
the weight bit width, one line per method; WikiText-2 perplexity on a log scale). A missing or empty
folder: one line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmc_slm.reports.cli import run_reporting  # noqa: E402
from llmc_slm.reports.collect import POSITIONS, collect  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="folder searched (recursively) for results *.json")
    p.add_argument("--out", help="folder for the figures (default: RESULTS_DIR/plots)")
    p.add_argument("--position", choices=POSITIONS, default="fake_quant",
                   help="evaluation position of the quantized runs (default: fake_quant)")
    args = p.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("error: matplotlib is not installed (pip install -e '.[plots]')", file=sys.stderr)
        return 2
    return run_reporting(lambda: _plot(args))


def _plot(args) -> int:
    from llmc_slm.reports.plots import make_plots
    coll = collect(args.results_dir, args.position)
    out = Path(args.out) if args.out else Path(args.results_dir) / "plots"
    paths = make_plots(coll, out)
    for path in paths:
        print(path)
    if not paths:
        print("nothing to plot: no complete quantized run with results", file=sys.stderr)
    return 0

if __name__ == "__main__":
    sys.exit(main())
