#!/usr/bin/env python
"""Run a grid of experiments, one ``python -m llmc`` process per run, resumably, here or on a Ray cluster.

    python tools/sweep.py --models smollm --methods rtn smooth omni spin --bits w8a8 w4a8 --profile cpu \\
        --limit 100 --eval-names wikitext2 mmlu_continuation arc_easy arc_challenge piqa hellaswag \\
        --results results/sweep_smollm [--workers 2] [--inference] [--set eval.bs=16] [--dry-run] \\
        [--seeds 0 1 2] [--executor ray [--address HOST:PORT] [--cpus-per-run 4] [--gpus-per-run 1]] [--retries 1]

Runs whose results are complete with the same resolved config are skipped, so rerunning the same command
resumes an interrupted sweep. Failed runs are rerun only with ``--retry-failed``. Logs go to
``<results>/logs/<model>/<run>.log``, the manifest to ``<results>/sweep.json``. Exit status 0 when every
run is complete, 1 if any is not, 2 on a usage or config error, 130 when interrupted.
On Ray (``pip install -e '.[cluster]'``) every node must see ``--results`` at the same path (checked with a
probe file before anything runs). The logic lives in ``llmc_slm/sweep.py`` and ``llmc_slm/executors/``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmc_slm.sweep import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
