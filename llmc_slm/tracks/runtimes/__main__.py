"""The measuring child of an edge runtime (see the package docstring for the contract)::

    python -m llmc_slm.tracks.runtimes --runtime llamacpp --artifact model.gguf --threads 1 \\
        --ids-file ids.json [--ppl-file windows.json] [--decode-tokens 32] [--options '{"runs": 10}'] --out r.json

Imports nothing but the runtime's own module before it measures (no torch), so the idle footprint is the
runtime's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    from ..child import emit_json, read_ids_file
    from . import resolve
    p = argparse.ArgumentParser(prog="python -m llmc_slm.tracks.runtimes", description=__doc__.split("\n\n")[0])
    p.add_argument("--runtime", required=True)
    p.add_argument("--artifact", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ids-file", required=True, help="JSON {input_ids: [[...]]}: the prefill input")
    p.add_argument("--ppl-file", help="JSON {windows: [[...], ...]}: WikiText-2 windows to score")
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--options", default="{}", help="JSON of the runtime's extra keyword options")
    p.add_argument("--out")
    args = p.parse_args(argv)
    from llmc.errors import UserError
    ids, source = read_ids_file(args.ids_file)
    windows = json.loads(Path(args.ppl_file).read_text())["windows"] if args.ppl_file else None
    try:
        result = resolve(args.runtime)(args.artifact, threads=args.threads, prefill_ids=ids,
                                       decode_tokens=args.decode_tokens, ppl_windows=windows,
                                       **json.loads(args.options))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result.setdefault("input", {"source": source})
    emit_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
