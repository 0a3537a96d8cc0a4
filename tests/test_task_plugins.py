"""A task is one specification: a throwaway multiple-choice task declared and registered in this file
alone runs through the command line (``python -m llmc``, in-process) on a tiny random model.

Also: ``eval.name`` is checked against the registered names before any model loads (one line, with a
suggestion), an output type the harness objects are not built for yet fails the same way, and the task
specs import neither torch nor lm-eval.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmc.data.sources import DATASETS, DatasetLayout
from llmc.registry import EVALUATOR_REGISTRY
from llmc_slm.tasks import TASKS, Prompt, TaskSpec, register_task
from llmc_slm.tasks.docs import jsonl, location_file

ROOT = Path(__file__).resolve().parents[1]
ITEMS = [
    {"q": "Which is a colour?", "options": ["red", "seven", "loud"], "gold": 0},
    {"q": "Which is a number?", "options": ["blue", "three"], "gold": 1},
    {"q": "Which animal barks?", "options": ["cat", "fish", "dog", "owl"], "gold": 2},
    {"q": "What is frozen water?", "options": ["ice", "steam"], "gold": 0},
]


def read_files(location) -> dict:
    return {"test": jsonl(location_file(location, "toy.jsonl"))}


def text(doc: dict) -> str:
    return f"Question: {doc['q']}\nAnswer:"


def choices(doc: dict) -> list[str]:
    return list(doc["options"])


def target(doc: dict) -> int:
    return int(doc["gold"])


def toy_spec(name: str = "toy_mc", **kw) -> TaskSpec:
    return TaskSpec(name=name, label="Toy", data=DatasetLayout("toy", ("toy.jsonl",)), read_files=read_files,
                    prompt=Prompt(text, choices, target), eval_split="test", harness_splits={"test": "test_split"},
                    table_metric="acc_norm", **kw)


@pytest.fixture
def registered():
    """Register specs for one test, then forget them (task, data layout and evaluator entry)."""
    names = []

    def add(spec: TaskSpec) -> TaskSpec:
        names.append(spec.name)
        return register_task(spec)
    yield add
    for name in names:
        for registry in (TASKS, DATASETS, EVALUATOR_REGISTRY):
            registry.pop(name, None)


def _config(tmp_path: Path, model: str, name: str = "toy_mc") -> Path:
    data = tmp_path / "data" / "toy"
    data.mkdir(parents=True)
    (data / "toy.jsonl").write_text("".join(json.dumps(item) + "\n" for item in ITEMS), encoding="utf-8")
    cfg = tmp_path / "toy.yml"
    cfg.write_text(f"model: {{path: {model}, torch_dtype: float32, device: cpu}}\n"
                   f"eval: {{name: [{name}], eval_pos: [pretrain], path: {tmp_path / 'data'}, bs: 4}}\n"
                   f"save: {{save_path: {tmp_path / 'results'}}}\n")
    return cfg


def _one_line_error(capsys, code: int) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    return err[0]


def test_a_task_declared_here_runs_through_the_cli(registered, tiny_model_dir, tmp_path, capsys):
    from llmc.__main__ import main
    registered(toy_spec())
    cfg = _config(tmp_path, tiny_model_dir)
    assert main(["--config", str(cfg), "--quiet"]) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "results" / "toy.json").read_text())
    assert record["status"] == "complete"
    result = record["metrics"]["pretrain"]["toy_mc"]
    assert result["table_metric"] == "acc_norm" and result["n"] == 4 and result["n_total"] == 4
    assert not result["subset"] and result["task"] == "toy_mc"
    assert 0.0 <= result["table_value"] <= 1.0 and result["table_value"] == result["acc_norm"]
    assert result["table_stderr"] == result["acc_norm_stderr"] is not None
    assert record["data"]["toy_mc"]["table_metric"] == "acc_norm"
    assert "toy_mc" in capsys.readouterr().out  # the summary table has its row


def test_an_unknown_name_fails_before_the_model_loads(registered, tmp_path, capsys):
    from llmc.__main__ import main
    registered(toy_spec())
    cfg = _config(tmp_path, "./no/such/model", name="toy_mx")
    line = _one_line_error(capsys, main(["--config", str(cfg)]))
    assert line.startswith("error: eval.name: no evaluator for 'toy_mx' (available: ")
    assert "toy_mc" in line and "wikitext2" in line and line.endswith("(did you mean 'toy_mc'?)")


def test_an_output_type_not_built_yet_fails_in_one_line(registered, tmp_path, capsys):
    from llmc.__main__ import main
    registered(toy_spec("toy_gen", output_type="generate_until"))
    cfg = _config(tmp_path, "smollm2-135m-random", name="toy_gen")
    line = _one_line_error(capsys, main(["--config", str(cfg)]))
    assert "toy_gen is a generate_until task" in line and "builds multiple_choice" in line
    assert not (tmp_path / "results").exists()  # nothing ran


def test_specs_import_neither_torch_nor_lm_eval():
    code = ("import sys, llmc_slm.tasks, llmc_slm.reports.collect; "
            "assert not {'torch', 'lm_eval'} & set(sys.modules), sorted({'torch', 'lm_eval'} & set(sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_derived_views_follow_the_registry():
    from llmc_slm.reports.collect import ACC_DATASETS, LABELS
    from llmc_slm.tasks import TABLE_METRIC, TASK_NAMES
    assert set(TASK_NAMES) == {"mmlu", "mmlu_continuation", "arc_easy", "arc_challenge", "piqa", "hellaswag"}
    assert TABLE_METRIC == {name: spec.table_metric for name, spec in TASKS.items()}
    assert ACC_DATASETS == ("mmlu", "arc_challenge", "arc_easy", "piqa", "hellaswag")  # the paper's columns
    assert LABELS["arc_easy"] == "ARC-e" and LABELS["mmlu"] == "MMLU"
    with pytest.raises(ValueError, match="output_type"):
        toy_spec(output_type="loglikelihood_rolling")
