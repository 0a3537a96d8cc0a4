"""The six tasks as lm-evaluation-harness objects, and one way to run them on an in-memory model.

Our tasks are ``ConfigurableTask``s built from our own config dicts (prompts from ``prompts.py``, the
harness's metric names and aggregations) over documents we converted (``docs.py``), so the harness
itself builds the requests, scores them and aggregates (acc, acc_norm, their standard errors, and the
size-weighted MMLU groups). Imported lazily: importing lm-eval costs a second or two.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import datasets
from lm_eval.api.group import Group
from lm_eval.api.task import ConfigurableTask, Task

from . import item_stderr, prompts
from .docs import as_dataset
from .mmlu_subjects import CATEGORIES, SUBJECTS, description, subjects_of, task_name

FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed


class LocalTask(ConfigurableTask):
    """A harness task over documents given in memory (``{split: documents}``) instead of downloaded."""

    def __init__(self, config: dict, splits: dict):
        self._local_splits = {k: as_dataset(v) for k, v in splits.items()}
        super().__init__(config=config)

    def download(self, dataset_kwargs: Optional[dict] = None, **kwargs) -> None:
        self.dataset = datasets.DatasetDict(self._local_splits)


_ACC = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
_ACC_NORM = {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}


def task_config(name: str, splits: dict, subject: Optional[str] = None) -> dict:
    """Our config dict for one leaf task (``name`` one of the six; ``subject`` for MMLU)."""
    text, choice, target = prompts.PROMPTS[name]
    cfg: dict[str, Any] = {
        "task": name, "output_type": "multiple_choice",
        "doc_to_text": text, "doc_to_choice": choice, "doc_to_target": target,
        "target_delimiter": prompts.TARGET_DELIMITER, "fewshot_delimiter": "\n\n",
        "metric_list": [dict(_ACC), dict(_ACC_NORM)],
        "metadata": {"version": 1.0},
    }
    if name in ("arc_easy", "arc_challenge"):
        cfg["test_split"] = "test"
        for split, key in (("train", "training_split"), ("validation", "validation_split")):
            if split in splits:
                cfg[key] = split
    elif name in ("piqa", "hellaswag"):
        cfg["validation_split"] = "validation"
        if "train" in splits:
            cfg["training_split"] = "train"
    else:  # the two MMLU formulations
        cloze = name == "mmlu_continuation"
        cfg["task"] = task_name(subject, cloze)
        cfg["description"] = description(subject, cloze)
        cfg["test_split"] = "test"
        if "dev" in splits:
            cfg["fewshot_split"] = "dev"
        cfg["fewshot_config"] = {"sampler": "first_n"}
        if cloze:
            cfg.pop("metric_list")  # the harness's continuation tasks use the defaults: acc and acc_norm
        else:
            cfg["metric_list"] = [dict(_ACC)]  # letters: acc only
            cfg["task_alias"] = subject
    return cfg


@dataclass
class TaskSet:
    """What one evaluator name evaluates: a leaf task, or the MMLU group tree."""
    name: str
    root: Any                              # Task or Group
    tasks: dict[str, Task] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)

    def task_dict(self) -> dict:
        return {"tasks": dict(self.tasks), "groups": dict(self.groups),
                "group_map": {g.name: g.child_names for g in self.groups.values()}}

    @property
    def root_name(self) -> str:
        return self.root.name if isinstance(self.root, Group) else self.root.task_name


def _agg(metrics):
    return [{"metric": m, "weight_by_size": True} for m in metrics]


def mmlu_groups(cloze: bool, leaf: dict[str, Task]) -> tuple[Group, dict[str, Group]]:
    """The harness's group tree: ``mmlu`` -> four category groups -> subjects (alphabetical).

    Letters: groups ``mmlu_stem`` ... (aliases ``stem`` ...), aggregating acc. Cloze: groups
    ``mmlu_continuation::stem`` ..., aggregating acc as the harness does, and acc_norm the same way
    (size-weighted mean, pooled stderr), which the harness's YAML does not ask for.
    """
    metrics = ("acc", "acc_norm") if cloze else ("acc",)
    if cloze:
        root = Group.from_config({"group": "mmlu_continuation", "group_alias": "mmlu (continuation)",
                                  "aggregate_metric_list": _agg(metrics), "metadata": {"version": 2}})
    else:
        root = Group.from_config({"group": "mmlu", "aggregate_metric_list": _agg(metrics),
                                  "metadata": {"version": 2}})
    groups = {root.name: root}
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
            groups[g.name] = g
    return root, groups


def build_task_set(name: str, data) -> TaskSet:
    """Harness objects for ``name`` over converted documents: ``data`` is ``{split: docs}``, or for MMLU
    ``{subject: {split: docs}}`` (``docs.load_splits`` / ``docs.load_mmlu``)."""
    if name in ("mmlu", "mmlu_continuation"):
        cloze = name == "mmlu_continuation"
        leaf = {}
        for subject in SUBJECTS:
            if subject in data:
                t = LocalTask(task_config(name, data[subject], subject), data[subject])
                leaf[t.task_name] = t
        root, groups = mmlu_groups(cloze, leaf)
        return TaskSet(name, root, leaf, groups)
    task = LocalTask(task_config(name, data), data)
    return TaskSet(name, task, {task.task_name: task}, {})


# ----------------------------------------------------------------------------------------- running
@contextlib.contextmanager
def quiet_lm_eval(level: int = logging.WARNING):
    """lm-eval logs every task it builds at INFO; keep warnings only while we run it."""
    log = logging.getLogger("lm_eval")
    old = log.level
    log.setLevel(max(level, old) if old else level)
    try:
        yield
    finally:
        log.setLevel(old)


def spread(total: int, sizes: list[int]) -> list[int]:
    """How many leading items of each part make ``total`` items spread evenly (earlier parts first)."""
    n = len(sizes)
    base, extra = divmod(total, n)
    return [min(size, base + (1 if i < extra else 0)) for i, size in enumerate(sizes)]


def selection(task_set, limit: int | None) -> dict:
    """``limit`` / ``samples`` arguments for :func:`run`. A plain task: its first ``limit`` documents. A group
    (MMLU): ``limit`` documents in total over its subjects, the first k of every subject, k = limit // n or
    one more for the first limit % n subjects in alphabetical order (100 over 57 subjects: 2 items for 43,
    1 for 14). Subjects that get none must then be dropped with :func:`prune`."""
    if not task_set.groups or limit is None:
        return {"limit": limit}
    names = list(task_set.tasks)
    counts = spread(limit, [len(task_set.tasks[t].eval_docs) for t in names])
    return {"samples": {t: list(range(k)) for t, k in zip(names, counts) if k > 0}}


def prune(task_set, keep) -> None:
    """Drop the subjects that get no items (lm-eval reads an empty ``samples`` list as "all documents")."""
    from lm_eval.api.group import Group
    for group in list(task_set.groups.values()):
        for child in list(group):
            if not isinstance(child, Group) and child.task_name not in keep:
                group.pop(child.task_name)
    for name, group in list(task_set.groups.items()):
        if len(group) == 0:
            del task_set.groups[name]
            for parent in task_set.groups.values():
                parent.pop(name)
    task_set.tasks = {k: v for k, v in task_set.tasks.items() if k in keep}


def run(lm, task_dict: dict, *, limit: Optional[int] = None, samples: Optional[dict] = None,
        num_fewshot: int = 0, log_samples: bool = False) -> dict:
    """``lm_eval.evaluator.evaluate`` on prepared tasks, set up as ``simple_evaluate`` sets them up
    (num_fewshot on every task, the default few-shot seed), without its environment and git probes."""
    from lm_eval.evaluator import evaluate
    for task in task_dict["tasks"].values():
        task.set_config(key="num_fewshot", value=num_fewshot)
        task.set_fewshot_seed(seed=FEWSHOT_SEED)
    with quiet_lm_eval():
        return evaluate(lm=lm, task_dict=task_dict, limit=limit, samples=samples, log_samples=log_samples)


def _num(value) -> Optional[float]:
    if value is None or isinstance(value, str):  # the harness writes "N/A" where it has no stderr
        return None
    value = float(value)
    return None if math.isnan(value) else value


def metrics_of(entry: dict) -> dict:
    """acc, acc_stderr, acc_norm, acc_norm_stderr of one harness results entry (None where absent)."""
    return {m: _num(entry.get(f"{m},none")) for m in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")}


def summarize(task_set: TaskSet, results: dict) -> dict:
    """Our result dict for one evaluator name from the harness's results."""
    res = results["results"]
    n_samples = results.get("n-samples", {})
    leaf_n = {t: n_samples[t]["effective"] for t in task_set.tasks if t in n_samples}
    leaf_total = {t: n_samples[t]["original"] for t in task_set.tasks if t in n_samples}
    out = {"task": task_set.root_name, **metrics_of(res[task_set.root_name]),
           "n": sum(leaf_n.values()), "n_total": sum(leaf_total.values())}
    if task_set.groups:
        subjects = {}
        for t, task in task_set.tasks.items():
            subject = t[len("mmlu_"):].removesuffix("_continuation")
            subjects[subject] = {**metrics_of(res[t]), "n": leaf_n.get(t)}
            if subjects[subject]["acc_norm"] is None:
                for k in ("acc_norm", "acc_norm_stderr"):
                    subjects[subject].pop(k)
        categories = {}
        for g in task_set.groups.values():
            if g is task_set.root:
                continue
            cat = g.name.split("::")[-1].removeprefix("mmlu_").replace(" ", "_")
            categories[cat] = {**metrics_of(res[g.name]), "n": res[g.name].get("sample_len")}
            if categories[cat]["acc_norm"] is None:
                for k in ("acc_norm", "acc_norm_stderr"):
                    categories[cat].pop(k)
        out["categories"] = categories
        out["subjects"] = subjects
        for metric in ("acc", "acc_norm"):
            if out.get(metric) is not None and out.get(f"{metric}_stderr") is None:
                out[f"{metric}_stderr"] = item_stderr(out[metric], out["n"])
                out["stderr_from_items"] = True
    return out
