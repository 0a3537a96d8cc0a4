"""Where a run writes (torch-free): its results file and the folders of its exported checkpoints."""

from __future__ import annotations

import re
from pathlib import Path


def run_stem(cfg) -> str:
    """``<config name>[_<profile>][_<task_id>]``, the name every file of the run starts with."""
    stem = Path(cfg.source).stem if cfg.source else "run"
    if cfg.profile:
        stem = f"{stem}_{Path(cfg.profile).stem}"
    if cfg.task_id:
        stem = f"{stem}_{cfg.task_id}"
    return re.sub(r"[^\w.-]+", "_", stem)


def results_path(cfg) -> Path:
    """The run's results JSON: ``<save.save_path>/<stem>.json``."""
    return Path(cfg.save.save_path) / f"{run_stem(cfg)}.json"


def artifact_dir(cfg, kind: str) -> Path:
    """The folder of an exported checkpoint: ``<save.save_path>/<stem>_<kind>`` (``transformed``,
    ``fake_quant``, ``real_quant`` for LLMC's save_trans / save_fake / save_real, or an exporter's name)."""
    return Path(cfg.save.save_path) / f"{run_stem(cfg)}_{kind}"


def packed_dir(cfg) -> Path:
    """Where ``save.save_real`` writes the run's packed checkpoint (Track 2 reads it from here)."""
    return artifact_dir(cfg, "real_quant")
