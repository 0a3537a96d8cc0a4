"""HellaSwag (lm-evaluation-harness 0.4.13 ``hellaswag``).

Data: the rowanz jsonl (``hellaswag/hellaswag_val.jsonl``) as Rowan/hellaswag rows (label as a string, as
on the hub); the validation split is evaluated. Every document also carries ``query``, ``choices`` and
``gold``: the fields the harness's ``process_docs`` adds (:func:`process_doc`), computed once when read.
Prompt: ``query``, choices the preprocessed endings, gold ``label``. Tables: acc_norm.
"""

from __future__ import annotations

import re
from pathlib import Path

from llmc.data.sources import DataLocation, DatasetLayout
from llmc.errors import UserError

from .docs import jsonl, location_file
from .spec import Prompt, TaskSpec, register_task

FIELDS = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split", "split_type", "label")


def read_hellaswag(path: Path) -> list[dict]:
    """rowanz jsonl -> Rowan/hellaswag rows (label as a string, as on the hub)."""
    docs = []
    for i, r in enumerate(jsonl(path), 1):
        missing = [k for k in FIELDS if k not in r]
        if missing:
            raise UserError(f"{path}:{i}: HellaSwag row without {', '.join(missing)}")
        doc = {k: r[k] for k in FIELDS}
        doc["label"] = str(doc["label"])
        docs.append(doc)
    return docs


def read_files(location: DataLocation) -> dict:
    return {"validation": read_hellaswag(location_file(location, "hellaswag_val.jsonl"))}


_BRACKETED = re.compile(r"\[.*?\]")


def preprocess(text: str) -> str:
    """The harness's clean-up of HellaSwag text: strip; WikiHow ``[title]`` markers become ``. ``; other
    bracketed markers are dropped; double spaces become single (one pass)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = _BRACKETED.sub("", text)
    return text.replace("  ", " ")


def process_doc(doc: dict) -> dict:
    """The fields the harness's ``process_docs`` adds to a Rowan/hellaswag row."""
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "query": preprocess(doc["activity_label"] + ": " + context),
        "choices": [preprocess(ending) for ending in doc["endings"]],
        "gold": int(doc["label"]),
    }


def text(doc: dict) -> str:
    return doc["query"]


def choices(doc: dict) -> list[str]:
    return list(doc["choices"])


def target(doc: dict) -> int:
    return int(doc["label"])


HELLASWAG = register_task(TaskSpec(
    name="hellaswag", label="HellaSwag", column="hellaswag", builtin="hellaswag",
    prompt=Prompt(text, choices, target), table_metric="acc_norm", read_files=read_files, process_doc=process_doc,
    chance=0.25,
    data=DatasetLayout("hellaswag", ("hellaswag_val.jsonl",), "hellaswag/none/validation", ("Rowan/hellaswag",)),
    eval_split="validation", fewshot_split="train",
    harness_splits={"validation": "validation_split", "train": "training_split"}))
