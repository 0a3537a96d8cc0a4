#!/usr/bin/env python
"""Our results beside the SLMQuant paper's published numbers, with deltas, and its five claims tested.

    python tools/compare_published.py results/
    python tools/compare_published.py results/smollm --out /tmp/compare.md

Published numbers: ``llmc_slm/reports/published.py`` (Wang, Zeng, Guo, Ma, Liu, Liu, "SLMQuant:
Benchmarking Small Language Model Quantization for Practical Deployment", RichMediaGAI '25,
doi 10.1145/3746262.3761973). Claims: verdict holds / does not hold / not testable, with the numbers used
(see ``llmc_slm/reports/claims.py`` for the tests). A missing or empty folder: one line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmc_slm.reports.claims import claims_table, evaluate  # noqa: E402
from llmc_slm.reports.cli import run_reporting  # noqa: E402
from llmc_slm.reports.collect import POSITIONS, collect  # noqa: E402
from llmc_slm.reports.compare import all_comparisons  # noqa: E402
from llmc_slm.reports.render import to_markdown  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="folder searched (recursively) for results *.json")
    p.add_argument("--position", choices=POSITIONS, default="fake_quant",
                   help="evaluation position of the quantized runs (default: fake_quant)")
    p.add_argument("--out", help="also write the report (markdown) to this file")
    args = p.parse_args(argv)
    return run_reporting(lambda: _compare(args))


def _compare(args) -> int:
    coll = collect(args.results_dir, args.position)
    tables = all_comparisons(coll) + [claims_table(evaluate(coll), coll)]
    text = "\n".join(to_markdown(t) for t in tables)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    for w in coll.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0

if __name__ == "__main__":
    sys.exit(main())
