"""AI2 ARC, Easy and Challenge sets (lm-evaluation-harness 0.4.13 ``arc_easy`` / ``arc_challenge``).

Data: the AI2 release jsonl (``arc/ARC-Easy-Test.jsonl``, ``arc/ARC-Challenge-Test.jsonl``) converted to
allenai/ai2_arc rows (id, question, choices{text,label}, answerKey); the test split is evaluated.
Prompt: ``Question: {question}\\nAnswer:``, choices ``choices.text``, gold the index of ``answerKey`` in
``choices.label``. Tables: acc_norm.
"""

from __future__ import annotations

from pathlib import Path

from llmc.data.sources import DataLocation, DatasetLayout
from llmc.errors import UserError

from .docs import jsonl, location_file
from .spec import Prompt, TaskSpec, register_task


def read_arc(path: Path) -> list[dict]:
    """AI2 release jsonl -> allenai/ai2_arc rows (``question`` is the stem; choices as two lists)."""
    docs = []
    for i, r in enumerate(jsonl(path), 1):
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


def text(doc: dict) -> str:
    return f"Question: {doc['question']}\nAnswer:"


def choices(doc: dict) -> list[str]:
    return list(doc["choices"]["text"])


def target(doc: dict) -> int:
    return list(doc["choices"]["label"]).index(doc["answerKey"])


PROMPT = Prompt(text, choices, target)


def _spec(name: str, config: str, label: str) -> TaskSpec:
    file = f"{config}-Test.jsonl"

    def read_files(location: DataLocation) -> dict:
        return {"test": read_arc(location_file(location, file))}

    return TaskSpec(
        name=name, label=label, column=name, builtin="arc", prompt=PROMPT, table_metric="acc_norm",
        data=DatasetLayout("arc", (file,), None, ("allenai/ai2_arc", config)), read_files=read_files,
        eval_split="test", fewshot_split="train",
        chance=0.25,  # 4 choices; 18 of the 3,548 test items have 3 or 5, which moves chance by under 0.1 point
        harness_splits={"test": "test_split", "train": "training_split", "validation": "validation_split"})


# the paper's column order: ARC-c before ARC-e
ARC_CHALLENGE = register_task(_spec("arc_challenge", "ARC-Challenge", "ARC-c"))
ARC_EASY = register_task(_spec("arc_easy", "ARC-Easy", "ARC-e"))
