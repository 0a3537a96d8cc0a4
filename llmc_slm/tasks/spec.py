"""One specification per accuracy task, and the registry every list of task names, metrics and labels
is derived from.

A :class:`TaskSpec` says everything the benchmark needs about a task: its name (``eval.name``), its label
in the tables, where its data lives (a ``DatasetLayout`` for ``llmc.data.sources.find_dataset``), how the
files are read, its prompt, the splits it evaluates and draws few-shot examples from, its harness output
type and metrics, and the metric the tables report. :func:`register_task` adds it to ``TASKS``, makes
its data findable, and registers the engine evaluator (``llmc_slm.harness.HarnessTask``) under its name
as a lazy entry, so ``eval.name`` is checked without importing the harness.

No torch and no lm-eval here nor in the task modules (``arc``, ``piqa``, ``hellaswag``, ``mmlu``): they
are imported when a config is validated.

A new task is one module: its reader, its prompt and ``register_task(TaskSpec(...))``, imported by
``llmc_slm/tasks/__init__.py`` (or by a package declared under the ``llmc.extensions`` entry points, which
``python -m llmc`` imports before it reads the config). A ``generate_until`` task also needs its harness
config builder in ``lmeval.BUILDERS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from llmc.data.sources import DataLocation, DatasetLayout, register_dataset
from llmc.errors import UserError
from llmc.registry import EVALUATOR_REGISTRY

OUTPUT_TYPES = ("multiple_choice", "generate_until")  # the harness's; lmeval.py builds multiple_choice
EVALUATOR = "llmc_slm.harness:HarnessTask"


@dataclass(frozen=True)
class Prompt:
    """A multiple-choice prompt as functions of a document: the harness's ``doc_to_text``,
    ``doc_to_choice`` and ``doc_to_target``. The harness scores each choice as the continuation
    ``delimiter + choice`` after the context ``description + text(doc)``."""
    text: Callable[[dict], str]
    choices: Callable[[dict], list]
    target: Callable[[dict], int]
    delimiter: str = " "

    def requests(self, doc: dict, description: str = "") -> list[tuple[str, str]]:
        """The zero-shot (context, continuation) pairs the harness scores for one document."""
        context = description + self.text(doc)
        return [(context, self.delimiter + c) for c in self.choices(doc)]


@dataclass(frozen=True)
class TaskSpec:
    """One accuracy task. Documents are dicts in the schema of the hub data set the harness loads."""
    name: str                                   # eval.name, the results key
    label: str                                  # the tables' column label (e.g. "ARC-e")
    data: DatasetLayout                         # where find_dataset looks for the files
    read_files: Optional[Callable[[DataLocation], dict]]  # a "files" location -> {split: documents}
    prompt: Prompt
    eval_split: str                             # the split evaluated
    # split -> the harness config key naming it (test_split, validation_split, training_split,
    # fewshot_split); the evaluated split always, the others where the data has them
    harness_splits: Mapping[str, str]
    fewshot_split: str = "train"                # where num_fewshot > 0 draws its examples
    output_type: str = "multiple_choice"        # one of OUTPUT_TYPES
    metrics: Optional[tuple[str, ...]] = ("acc", "acc_norm")  # the harness metric_list (None: its defaults)
    table_metric: str = "acc"                   # the metric the tables report (table_value)
    harness_name: str = ""                      # the harness's task (or group) name; default: name
    column: Optional[str] = None                # the column of the paper's tables it fills, if any
    chance: Optional[float] = None              # a uniform guess's expected accuracy, 1 / choices
    process_doc: Optional[Callable[[dict], dict]] = None  # fields added to every document (process_docs)
    builtin: Optional[str] = None               # lm-eval's folder of the built-in task it reproduces
    # a task made of subtasks (MMLU: 57 subjects in a group tree): ``read`` returns
    # {subtask: {split: documents}} from any location, ``build(spec, data)`` the harness objects
    read: Optional[Callable[[DataLocation], dict]] = None
    build: Optional[Callable[["TaskSpec", dict], Any]] = None

    def __post_init__(self):
        if self.output_type not in OUTPUT_TYPES:
            raise ValueError(f"{self.name}: output_type '{self.output_type}' is not one of {', '.join(OUTPUT_TYPES)}")
        if self.eval_split not in self.harness_splits:
            raise ValueError(f"{self.name}: harness_splits must name the evaluated split {self.eval_split}")
        if not self.harness_name:
            object.__setattr__(self, "harness_name", self.name)

    @property
    def grouped(self) -> bool:
        return self.build is not None


TASKS: dict[str, TaskSpec] = {}  # in registration order: the tables' column order and preference


def register_task(spec: TaskSpec, evaluator: str = EVALUATOR) -> TaskSpec:
    """Register ``spec``: its data layout with ``find_dataset`` and its evaluator (``"module:Class"``,
    imported when first built) with the engine, under ``spec.name``."""
    TASKS[spec.name] = spec
    register_dataset(spec.name, spec.data)
    EVALUATOR_REGISTRY.declare(spec.name, evaluator)
    return spec


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise UserError(f"unknown task '{name}'; known: {', '.join(TASKS)}")
    return TASKS[name]
