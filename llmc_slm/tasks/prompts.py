"""Prompts of the six tasks as plain functions of a document (no model, no harness needed to test them).

Each reproduces lm-evaluation-harness 0.4.13's task config (its ``doc_to_text`` / ``doc_to_target`` /
``doc_to_choice`` Jinja templates, rendered on the same documents); the harness then scores every choice
as the continuation ``target_delimiter + choice`` (a single space for all six) after the context
``description + doc_to_text(doc)``. ``tests/test_tasks.py`` compares these functions with the installed
harness's own configs on the real data.

| task | doc_to_text | choices | gold |
|---|---|---|---|
| arc_* | ``Question: {question}\\nAnswer:`` | ``choices.text`` | index of ``answerKey`` in ``choices.label`` |
| piqa | ``Question: {goal}\\nAnswer:`` | ``[sol1, sol2]`` | ``label`` |
| hellaswag | preprocessed ``activity_label: ctx_a Ctx_b`` | preprocessed endings | ``label`` |
| mmlu (letters) | question (stripped), the four options as ``A. ...`` lines, ``Answer:`` | ``A B C D`` | ``answer`` |
| mmlu_continuation | ``Question: {question stripped}\\nAnswer:`` | the four option texts | ``answer`` |
"""

from __future__ import annotations

import re

# ------------------------------------------------------------------------------------------ ARC
def arc_text(doc: dict) -> str:
    return f"Question: {doc['question']}\nAnswer:"


def arc_choices(doc: dict) -> list[str]:
    return list(doc["choices"]["text"])


def arc_target(doc: dict) -> int:
    return list(doc["choices"]["label"]).index(doc["answerKey"])


# ----------------------------------------------------------------------------------------- PIQA
def piqa_text(doc: dict) -> str:
    return f"Question: {doc['goal']}\nAnswer:"


def piqa_choices(doc: dict) -> list[str]:
    return [doc["sol1"], doc["sol2"]]


def piqa_target(doc: dict) -> int:
    return int(doc["label"])


# ------------------------------------------------------------------------------------ HellaSwag
_BRACKETED = re.compile(r"\[.*?\]")


def hellaswag_preprocess(text: str) -> str:
    """The harness's clean-up of HellaSwag text: strip; WikiHow ``[title]`` markers become ``. ``; other
    bracketed markers are dropped; double spaces become single (one pass)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = _BRACKETED.sub("", text)
    return text.replace("  ", " ")


def hellaswag_process_doc(doc: dict) -> dict:
    """The fields the harness's ``process_docs`` adds to a Rowan/hellaswag row."""
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "query": hellaswag_preprocess(doc["activity_label"] + ": " + context),
        "choices": [hellaswag_preprocess(ending) for ending in doc["endings"]],
        "gold": int(doc["label"]),
    }


def hellaswag_text(doc: dict) -> str:
    return doc["query"]


def hellaswag_choices(doc: dict) -> list[str]:
    return list(doc["choices"])


def hellaswag_target(doc: dict) -> int:
    return int(doc["label"])


# ----------------------------------------------------------------------------------------- MMLU
MMLU_LETTER_CHOICES = ["A", "B", "C", "D"]


def mmlu_text(doc: dict) -> str:
    c = doc["choices"]
    return (f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:")


def mmlu_choices(doc: dict) -> list[str]:
    return list(MMLU_LETTER_CHOICES)


def mmlu_cloze_text(doc: dict) -> str:
    return f"Question: {doc['question'].strip()}\nAnswer:"


def mmlu_cloze_choices(doc: dict) -> list[str]:
    return list(doc["choices"])


def mmlu_target(doc: dict) -> int:
    return int(doc["answer"])


# name -> (doc_to_text, doc_to_choice, doc_to_target)
PROMPTS = {
    "arc_easy": (arc_text, arc_choices, arc_target),
    "arc_challenge": (arc_text, arc_choices, arc_target),
    "piqa": (piqa_text, piqa_choices, piqa_target),
    "hellaswag": (hellaswag_text, hellaswag_choices, hellaswag_target),
    "mmlu": (mmlu_text, mmlu_choices, mmlu_target),
    "mmlu_continuation": (mmlu_cloze_text, mmlu_cloze_choices, mmlu_target),
}
TARGET_DELIMITER = " "


def requests(name: str, doc: dict, description: str = "") -> list[tuple[str, str]]:
    """The zero-shot (context, continuation) pairs the harness scores for one document."""
    text, choices, _ = PROMPTS[name]
    context = description + text(doc)
    return [(context, TARGET_DELIMITER + c) for c in choices(doc)]
