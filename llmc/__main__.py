"""``python -m llmc --config FILE [--task_id ID] [--print-config] [--section.key VALUE ...]``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from .errors import UserError, WorldError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmc", description="Run one LLMC-style experiment from a YAML config.",
        epilog="Any config key can be overridden as --section.key VALUE, e.g. --eval.limit 200.")
    parser.add_argument("--config", help="YAML config (LLMC schema); omitted: all defaults")
    parser.add_argument("--task_id", default=None, help="run identifier, appended to the results file name")
    parser.add_argument("--profile", default=None,
                        help="named calibration profile from configs/profiles/ (e.g. cpu), or a YAML path")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from .library_logs import quiet_import_noise
    quiet_import_noise()
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    # a terminated run unwinds like Ctrl-C, so its results file records the interruption
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        from .config import dump_config, load_config
        cfg = load_config(args.config, rest, task_id=args.task_id, profile=args.profile)
        if args.print_config:
            print(dump_config(cfg), end="")
            return 0
        from .pipeline import run
        run(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WorldError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:            # disk full, permission denied, a file gone: the world, not the code
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or type(e).__name__}{where} (what was finished before is kept in the "
              f"results file)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
