#!/usr/bin/env python
"""Tables 1-4 of the SLMQuant paper, in its layout, from a folder of results JSON files.

    python tools/make_tables.py results/                        # markdown, LaTeX and CSV into results/tables/
    python tools/make_tables.py results/smollm --format latex --out /tmp/tables --stderr
    python tools/make_tables.py results/ --position real_quant  # the integer-deployed evaluations
    python tools/make_tables.py results/ --paired               # + paired changes against the float model
    python tools/make_tables.py results/ --calibration          # + block-wise losses, spread over seeds

Table 1: SmolLM models, Table 2: any other model (one per model), Table 3: inference (W8A8), Table 4:
quantization cost (W8A8); W4A8 versions of 3 and 4 are added (labelled extra) when such runs exist.
Writes ``<name>.md`` / ``.tex`` / ``.csv`` per table into ``--out`` and prints the markdown; the tables of an
earlier run in ``--out`` that this one does not write (in the formats it writes) are removed, each named on
stderr, so that the folder holds the tables its results and options give. A missing or
empty folder is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmc_slm.reports.calibration import calibration_tables  # noqa: E402
from llmc_slm.reports.cli import run_reporting  # noqa: E402
from llmc_slm.reports.collect import POSITIONS, collect  # noqa: E402
from llmc_slm.reports.evaluations import stage_time_table  # noqa: E402
from llmc_slm.reports.render import RENDERERS, to_markdown  # noqa: E402
from llmc_slm.reports.tables import all_tables  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="folder searched (recursively) for results *.json")
    p.add_argument("--format", choices=("markdown", "latex", "csv", "all"), default="all",
                   help="file format(s) written (default: all); markdown is always printed")
    p.add_argument("--out", help="folder for the table files (default: RESULTS_DIR/tables)")
    p.add_argument("--stderr", action="store_true", help="add ± standard error to the accuracies and SLMQ_perf")
    p.add_argument("--paired", action="store_true",
                   help="add Table 1/2 (paired): change against the float baseline on the same items, paired "
                        "standard errors, flips, WikiText-2 KLD, SLMQ_perf bootstrap interval")
    p.add_argument("--calibration", action="store_true",
                   help="add the calibration tables: block-wise training losses (OmniQuant) and the WikiText-2 "
                        "spread over seeds of settings run with several seeds")
    p.add_argument("--position", choices=POSITIONS, default="fake_quant",
                   help="evaluation position of the quantized runs (default: fake_quant)")
    args = p.parse_args(argv)
    return run_reporting(lambda: _write_tables(args))


def _write_tables(args) -> int:
    coll = collect(args.results_dir, args.position)
    tables = all_tables(coll, with_stderr=args.stderr, paired=args.paired)
    tables.append(stage_time_table(coll))
    if args.calibration:
        tables += calibration_tables(coll.runs)
    out = Path(args.out) if args.out else Path(args.results_dir) / "tables"
    formats = list(RENDERERS) if args.format == "all" else [args.format]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for t in tables:
        for fmt in formats:
            render, ext = RENDERERS[fmt]
            path = out / f"{t.name}{ext}"
            path.write_text(render(t), encoding="utf-8")
            written.append(path)
    stale = _remove_stale(out, written, [RENDERERS[f][1] for f in formats])
    print("\n".join(to_markdown(t) for t in tables))
    for path in stale:
        print(f"removed {path}: an earlier table that this command did not write", file=sys.stderr)
    for w in coll.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for path, why in coll.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(f"{len(coll.runs)} run(s); wrote {len(written)} file(s) to {out}", file=sys.stderr)
    return 0


# the names this tool writes besides "table*": a file by another name in --out is never touched
GENERATED_STEMS = ("sensitivity", "stage_times", "calibration")


def _remove_stale(out: Path, written: list[Path], exts: list[str]) -> list[Path]:
    """Delete the tables of an earlier run of this tool that this one did not write (a bits setting renamed
    or gone), in the formats written, so that the folder holds what its results give and nothing else."""
    keep = set(written)
    stale = [p for p in sorted(out.iterdir()) if p.suffix in exts and p not in keep
             and (p.stem.startswith("table") or p.stem.startswith(GENERATED_STEMS))]
    for p in stale:
        p.unlink()
    return stale


if __name__ == "__main__":
    sys.exit(main())
