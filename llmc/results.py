"""One results record per run, written atomically after every stage so nothing is lost on a crash.

Schema (``schema_version`` 1)::

    {schema_version, status: running|complete|failed, error?, task_id, config (resolved), config_file,
     model: {source..., arch...}, environment: {...}, git: {...}, data: {...},
     metrics: {eval_pos: {dataset: {...}}}, timings: {stage: seconds}, quant_cost?, inference?, log: [...]}
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .utils import atomic_write_json, cpu_name

SCHEMA_VERSION = 1


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    import transformers
    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device": device.type,
        "dtype": str(dtype).replace("torch.", ""),
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def git_info() -> dict:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty}


class RunRecord:
    """A results dict bound to its file; ``save()`` rewrites the file atomically."""

    def __init__(self, path: Path, data: dict):
        self.path = Path(path)
        self.data = data

    @classmethod
    def start(cls, path: Path, **fields) -> "RunRecord":
        data = {"schema_version": SCHEMA_VERSION, "status": "running",
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "metrics": {}, "timings": {}, "log": []}
        data.update(fields)
        rec = cls(path, data)
        rec.save()
        return rec

    def set_metric(self, eval_pos: str, dataset: str, value: dict) -> None:
        self.data["metrics"].setdefault(eval_pos, {})[dataset] = value
        self.save()

    def note(self, message: str) -> None:
        self.data["log"].append(message)

    def finish(self, status: str = "complete", error: str | None = None) -> None:
        self.data["status"] = status
        if error:
            self.data["error"] = error
        self.data["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)
