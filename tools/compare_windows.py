#!/usr/bin/env python
"""Two runs of one setting on the WikiText-2 windows both evaluated: each run's KLD and log-perplexity change
against its own float model, and B - A paired over the windows (``llmc_slm.reports.windows``).

    python tools/compare_windows.py A.json B.json                  # markdown on stdout
    python tools/compare_windows.py A.json B.json --out cmp.md     # also written to a file

Both runs need a paired WikiText-2 (``eval.paired``, the default) and their ``.items.json.gz`` beside the
results file. A missing file or a run without the windows is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmc.utils import atomic_write_text  # noqa: E402
from llmc_slm.reports.cli import run_reporting  # noqa: E402
from llmc_slm.reports.render import to_markdown  # noqa: E402
from llmc_slm.reports.windows import read_window_run, window_comparison  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", metavar="A.json", help="the first run's results file")
    p.add_argument("b", metavar="B.json", help="the second run's results file")
    p.add_argument("--position", default="fake_quant", help="evaluation position (default fake_quant)")
    p.add_argument("--out", help="also write the markdown to this file")
    args = p.parse_args(argv)

    def action() -> int:
        md = to_markdown(window_comparison(read_window_run(args.a, args.position),
                                           read_window_run(args.b, args.position)))
        print(md)
        if args.out:
            atomic_write_text(args.out, md + "\n")
        return 0

    return run_reporting(action)


if __name__ == "__main__":
    sys.exit(main())
