"""PIQA (lm-evaluation-harness 0.4.13 ``piqa``).

Data: ``piqa/valid.jsonl`` (goal, sol1, sol2) joined line by line with ``valid-labels.lst`` (0/1), as
baber/piqa rows; the validation split is evaluated. Prompt: ``Question: {goal}\\nAnswer:``, choices
``[sol1, sol2]``, gold ``label``. Tables: acc_norm.
"""

from __future__ import annotations

from pathlib import Path

from llmc.data.sources import DataLocation, DatasetLayout
from llmc.errors import UserError

from .docs import jsonl
from .spec import Prompt, TaskSpec, register_task


def read_piqa(rows_path: Path, labels: Path) -> list[dict]:
    """``valid.jsonl`` (goal, sol1, sol2) joined line by line with ``valid-labels.lst`` (0/1)."""
    rows = jsonl(rows_path)
    with open(labels, encoding="utf-8") as f:
        gold = [line.strip() for line in f if line.strip()]
    if len(gold) != len(rows):
        raise UserError(f"{labels}: {len(gold)} labels for {len(rows)} rows of {rows_path}")
    docs = []
    for i, (r, g) in enumerate(zip(rows, gold), 1):
        if g not in ("0", "1"):
            raise UserError(f"{labels}:{i}: label '{g}' is not 0 or 1")
        docs.append({"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(g)})
    return docs


def read_files(location: DataLocation) -> dict:
    return {"validation": read_piqa(location.file("valid.jsonl"), location.file("valid-labels.lst"))}


def text(doc: dict) -> str:
    return f"Question: {doc['goal']}\nAnswer:"


def choices(doc: dict) -> list[str]:
    return [doc["sol1"], doc["sol2"]]


def target(doc: dict) -> int:
    return int(doc["label"])


PIQA = register_task(TaskSpec(
    name="piqa", label="PIQA", column="piqa", builtin="piqa", prompt=Prompt(text, choices, target),
    table_metric="acc_norm", read_files=read_files, chance=0.5,
    data=DatasetLayout("piqa", ("valid.jsonl", "valid-labels.lst"), "piqa/plain_text/validation", ("baber/piqa",)),
    eval_split="validation", fewshot_split="train",
    harness_splits={"validation": "validation_split", "train": "training_split"}))
