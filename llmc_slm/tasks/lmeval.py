"""The tasks as lm-evaluation-harness objects, and one way to run them on an in-memory model.

Our tasks are ``ConfigurableTask``s built from our own config dicts (the task's ``TaskSpec``: its prompt,
splits and the harness's metric names and aggregations) over documents we converted (``docs.py``), so the
harness itself builds the requests, scores them and aggregates (acc, acc_norm, their standard errors, and
the size-weighted MMLU groups). Imported lazily: importing lm-eval costs a second or two.

The harness config of a task depends on its output type (``BUILDERS``): ``multiple_choice`` today; a
``generate_until`` task needs one more builder here (``doc_to_text``, ``generation_kwargs`` with its stop
sequences, and the metrics it reports); until then such a task fails with one line before any model loads.
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

from llmc.errors import UserError

from . import item_stderr
from .docs import as_dataset
from .spec import TaskSpec, get_task

FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed


class LocalTask(ConfigurableTask):
    """A harness task over documents given in memory (``{split: documents}``) instead of downloaded."""

    def __init__(self, config: dict, splits: dict):
        self._local_splits = {k: as_dataset(v) for k, v in splits.items()}
        super().__init__(config=config)

    def download(self, dataset_kwargs: Optional[dict] = None, **kwargs) -> None:
        self.dataset = datasets.DatasetDict(self._local_splits)


def _multiple_choice(spec: TaskSpec) -> dict:
    p = spec.prompt
    return {"doc_to_text": p.text, "doc_to_choice": p.choices, "doc_to_target": p.target,
            "target_delimiter": p.delimiter}


# output type -> (the config keys of its prompt, the metrics every result of that type carries)
BUILDERS = {"multiple_choice": (_multiple_choice, ("acc", "acc_norm"))}


def builder(spec: TaskSpec):
    """``BUILDERS[spec.output_type]``; a UserError (one line) for an output type not built yet."""
    if spec.output_type not in BUILDERS:
        raise UserError(f"eval.name: {spec.name} is a {spec.output_type} task, which llmc_slm.tasks.lmeval "
                        f"cannot build yet (it builds {', '.join(BUILDERS)})")
    return BUILDERS[spec.output_type]


def task_config(spec: TaskSpec, splits: dict) -> dict:
    """Our config dict for one leaf task of ``spec`` over ``splits`` (``{split: documents}``)."""
    prompt_keys, _ = builder(spec)
    cfg: dict[str, Any] = {"task": spec.name, "output_type": spec.output_type, **prompt_keys(spec),
                           "fewshot_delimiter": "\n\n", "metadata": {"version": 1.0}}
    if spec.metrics is not None:
        cfg["metric_list"] = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in spec.metrics]
    for split, key in spec.harness_splits.items():
        if split == spec.eval_split or split in splits:
            cfg[key] = split
    return cfg


@dataclass
class TaskSet:
    """What one evaluator name evaluates: a leaf task, or a group tree (MMLU)."""
    name: str
    root: Any                              # Task or Group
    tasks: dict[str, Task] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    subtask_keys: dict[str, str] = field(default_factory=dict)  # leaf task -> its key in "subjects"
    group_keys: dict[str, str] = field(default_factory=dict)    # inner group -> its key in "categories"

    def task_dict(self) -> dict:
        return {"tasks": dict(self.tasks), "groups": dict(self.groups),
                "group_map": {g.name: g.child_names for g in self.groups.values()}}

    @property
    def root_name(self) -> str:
        return self.root.name if isinstance(self.root, Group) else self.root.task_name


def build_task_set(name: str, data) -> TaskSet:
    """Harness objects for task ``name`` over converted documents: ``data`` is ``{split: docs}``, or for a
    grouped task (MMLU) ``{subject: {split: docs}}`` (``load_task_data``)."""
    spec = get_task(name)
    if spec.build is not None:
        return spec.build(spec, data)
    task = LocalTask(task_config(spec, data), data)
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


def selection(task_set, limit: int | None, mode: str = "first", seed: int = 1234) -> dict:
    """``limit`` / ``samples`` arguments for :func:`run`.

    ``mode`` first (lm-eval's behaviour): a plain task, its first ``limit`` documents; a group (MMLU),
    ``limit`` documents in total over its subjects, the first k of every subject, k = limit // n or one
    more for the first limit % n subjects in alphabetical order (100 over 57 subjects: 2 items for 43, 1
    for 14). ``mode`` random: a seeded sample (``llmc_slm.tasks.subsets``), stratified by subject for a
    group. Subjects that get none must then be dropped with :func:`prune`."""
    if limit is None or (mode == "first" and not task_set.groups):
        return {"limit": limit}
    samples = picked(task_set, limit, mode, seed)
    if not task_set.groups and all(len(v) == len(task_set.tasks[t].eval_docs) for t, v in samples.items()):
        return {"limit": None}   # every document: lm-eval's membership test over a full list is quadratic
    return {"samples": samples}


def picked(task_set, limit: int | None, mode: str = "first", seed: int = 1234) -> dict[str, list[int]]:
    """``{leaf task: sorted doc indices}`` that :func:`selection` evaluates (every leaf task, all of its
    documents, without a limit)."""
    from .subsets import draw
    keys = {t: task_set.subtask_keys.get(t, t) if task_set.groups else task_set.name for t in task_set.tasks}
    sizes = {keys[t]: len(task.eval_docs) for t, task in task_set.tasks.items()}
    by_key = draw(sizes, limit, seed, mode, spread)
    return {t: by_key[k] for t, k in keys.items() if k in by_key}


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


def metrics_of(entry: dict, metrics) -> dict:
    """Each of ``metrics`` and its stderr in one harness results entry (None where absent)."""
    names = [k for m in metrics for k in (m, f"{m}_stderr")]
    return {k: _num(entry.get(f"{k},none")) for k in names}


def result_metrics(spec: TaskSpec) -> tuple[str, ...]:
    """The metrics a result of ``spec`` carries: those of its output type, and its table metric."""
    metrics = builder(spec)[1]
    return metrics if spec.table_metric in metrics else (*metrics, spec.table_metric)


def _reported(entry: dict, metrics) -> dict:
    """A subtask's or group's entry without the metrics it does not report (MMLU letters: acc_norm)."""
    for m in metrics:
        if entry.get(m) is None:
            entry.pop(m)
            entry.pop(f"{m}_stderr")
    return entry


def summarize(task_set: TaskSet, results: dict) -> dict:
    """Our result dict for one evaluator name from the harness's results."""
    metrics = result_metrics(get_task(task_set.name))
    res = results["results"]
    n_samples = results.get("n-samples", {})
    leaf_n = {t: n_samples[t]["effective"] for t in task_set.tasks if t in n_samples}
    leaf_total = {t: n_samples[t]["original"] for t in task_set.tasks if t in n_samples}
    out = {"task": task_set.root_name, **metrics_of(res[task_set.root_name], metrics),
           "n": sum(leaf_n.values()), "n_total": sum(leaf_total.values())}
    if task_set.groups:
        subjects = {task_set.subtask_keys[t]: _reported({**metrics_of(res[t], metrics), "n": leaf_n.get(t)}, metrics)
                    for t in task_set.tasks}
        categories = {task_set.group_keys[g.name]: _reported({**metrics_of(res[g.name], metrics),
                                                              "n": res[g.name].get("sample_len")}, metrics)
                      for g in task_set.groups.values() if g is not task_set.root}
        out["categories"] = categories
        out["subjects"] = subjects
        for metric in metrics:
            if out.get(metric) is not None and out.get(f"{metric}_stderr") is None:
                out[f"{metric}_stderr"] = item_stderr(out[metric], out["n"])
                out["stderr_from_items"] = True
    return out


def per_item(task_set: TaskSet, results: dict) -> dict:
    """The per-item outcomes of a run with ``log_samples=True``, compact and column-wise:
    ``{"ids", "target", "ll", "pred", "pred_norm", "acc", "acc_norm"}``, one entry per document in the
    order of the leaf tasks and their doc indices. ``ids``: doc indices (a plain task) or
    ``subject:index`` (a group); ``ll``: each choice's summed log-likelihood of its continuation (6
    decimals); ``pred`` / ``pred_norm``: the chosen choice for acc / acc_norm, the harness's argmax of the
    log-likelihoods and of the log-likelihoods over the choices' lengths in characters; ``acc`` /
    ``acc_norm``: 1 where correct (``acc_norm`` None where the task does not report it)."""
    import numpy as np
    cols: dict[str, list] = {k: [] for k in ("ids", "target", "ll", "pred", "pred_norm", "acc", "acc_norm")}
    samples = results.get("samples") or {}
    for t, task in task_set.tasks.items():
        for ex in sorted(samples.get(t, []), key=lambda e: e["doc_id"]):
            lls = [float(r[0]) for r in ex["filtered_resps"]]
            lengths = np.array([float(len(c)) for c in task.doc_to_choice(ex["doc"])])
            cols["ids"].append(f"{task_set.subtask_keys[t]}:{ex['doc_id']}" if task_set.groups else int(ex["doc_id"]))
            target = ex["target"]
            cols["target"].append(int(target) if isinstance(target, (int, np.integer)) else target)
            cols["ll"].append([round(x, 6) for x in lls])
            cols["pred"].append(int(np.argmax(lls)))
            cols["pred_norm"].append(int(np.argmax(np.array(lls) / lengths)) if len(lengths) == len(lls) else None)
            cols["acc"].append(_num(ex.get("acc")))
            cols["acc_norm"].append(_num(ex.get("acc_norm")))
    if all(v is None for v in cols["acc_norm"]):
        cols["acc_norm"] = None
    return cols
