"""Fast tests of the harness tasks (llmc_slm.tasks, llmc_slm.harness): no real model.

- the MMLU subject table against the installed harness's YAML files;
- our documents and prompts on the real data files (shared/data) against the harness's own task configs,
  rendered by lm-eval on the same documents (first items of every task);
- a missing or incomplete data folder is a UserError naming the key, raised before any model loads;
- the evaluator on a tiny random Llama (the embedded SmolLM2 tokenizer) returns n = limit, accuracies in
  [0, 1], and leaves untied weights untied;
- request-level equivalence with the built-in task (``llmc_slm.tasks.reference``) on a few items.

The data-dependent tests skip where no data set is found (find_dataset's search order).
"""

from __future__ import annotations

import os
import types

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from llmc.config import Config  # noqa: E402
from llmc.data.sources import DataLocation, find_dataset  # noqa: E402
from llmc.errors import UserError  # noqa: E402
from llmc_slm.tasks import TASK_NAMES, TASKS, load_task_data  # noqa: E402
from llmc_slm.tasks.mmlu_subjects import SUBJECTS, description, task_name  # noqa: E402

LM_EVAL_TASKS = Path(__import__("lm_eval.tasks", fromlist=["x"]).__file__).parent


def location(name: str) -> DataLocation:
    try:
        loc = find_dataset(name)
    except UserError:
        pytest.skip(f"no {name} data found")
    if loc.kind != "files":
        pytest.skip(f"{name} found as {loc.kind}, these tests read the files layout")
    return loc


# ------------------------------------------------------------------------------------ MMLU table
def test_mmlu_subjects_match_the_installed_harness():
    import yaml
    for cloze, folder, tag_suffix in ((False, "default", "_tasks"), (True, "continuation", "_continuation")):
        found = {}
        for path in sorted((LM_EVAL_TASKS / "mmlu" / folder).glob("mmlu_*.yaml")):
            cfg = yaml.safe_load(path.read_text())
            found[cfg["dataset_name"]] = cfg
        assert set(found) == set(SUBJECTS)
        for subject, cfg in found.items():
            assert cfg["task"] == task_name(subject, cloze)
            assert cfg["description"] == description(subject, cloze)
            assert cfg["tag"] == f"mmlu_{SUBJECTS[subject]}{tag_suffix}"


# ------------------------------------------------------------------------- documents and prompts
def _builtin_task(yaml_rel: str, split: str, docs: list[dict], **overrides):
    """The harness's own task config (installed YAML, includes and !function resolved) over ``docs``."""
    import datasets
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(LM_EVAL_TASKS / yaml_rel, resolve_func=True, recursive=True)
    for key in ("tag", "group"):
        cfg.pop(key, None)
    dd = datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})
    cfg.update(custom_dataset=lambda **kwargs: dd, training_split=None, **overrides)
    if split == "test":
        cfg["validation_split"] = None
    cfg.pop("fewshot_split", None)
    return ConfigurableTask(config=cfg)


def _raw_hub_rows(docs: list[dict]) -> list[dict]:
    """HellaSwag documents without the fields process_docs adds (as the hub serves them)."""
    return [{k: v for k, v in d.items() if k not in ("query", "choices", "gold")} for d in docs]


CASES = {  # name -> (builtin yaml, split)
    "arc_easy": ("arc/arc_easy.yaml", "test"),
    "arc_challenge": ("arc/arc_challenge.yaml", "test"),
    "piqa": ("piqa/piqa.yaml", "validation"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_prompts_match_the_harness_configs(name):
    loc = location(name)
    docs = load_task_data(name, loc)[CASES[name][1]][:8]
    yaml_rel, split = CASES[name]
    builtin = _builtin_task(yaml_rel, split, _raw_hub_rows(docs) if name == "hellaswag" else docs)
    theirs = list(builtin.eval_docs)
    prompt = TASKS[name].prompt
    for ours, doc in zip(docs, theirs):
        assert prompt.requests(ours) == [(builtin.fewshot_context(doc, 0), " " + c)
                                               for c in builtin.doc_to_choice(doc)]
        assert prompt.target(ours) == builtin.doc_to_target(doc)
        assert prompt.choices(ours) == builtin.doc_to_choice(doc)


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_silences_the_harness_progress_bars(tiny, quiet, monkeypatch, capfd):
    """``python -m llmc --quiet`` sets TQDM_DISABLE; lm-eval passes tqdm's `disable` itself, so the
    evaluator has to pass it on."""
    from llmc_slm.harness import HarnessTask
    if quiet:
        monkeypatch.setenv("TQDM_DISABLE", "1")
    else:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    capfd.readouterr()
    HarnessTask("piqa", _cfg(limit=3, bs=4)).run(tiny)
    err = capfd.readouterr().err
    assert ("Running loglikelihood requests" in err) != quiet


@pytest.mark.parametrize("name", ["mmlu", "mmlu_continuation"])
def test_mmlu_prompts_match_the_harness_configs(name):
    loc = location(name)
    cloze = name == "mmlu_continuation"
    folder = "continuation" if cloze else "default"
    data = load_task_data(name, loc)
    for subject in ("abstract_algebra", "high_school_european_history", "us_foreign_policy", "world_religions"):
        docs = data[subject]["test"][:3]
        builtin = _builtin_task(f"mmlu/{folder}/mmlu_{subject}.yaml", "test", docs)
        for ours, doc in zip(docs, list(builtin.eval_docs)):
            expect = [(builtin.fewshot_context(doc, 0), " " + c) for c in builtin.doc_to_choice(doc)]
            assert TASKS[name].prompt.requests(ours, description(subject, cloze)) == expect
            assert TASKS[name].prompt.target(ours) == builtin.doc_to_target(doc)


def test_first_documents_and_gold():
    """The conversion of each file format, first rows spelled out (shared/data, SOURCE.md formats)."""
    arc = load_task_data("arc_easy", location("arc_easy"))["test"][0]
    assert arc["id"] == "Mercury_417466" and arc["answerKey"] == "A" and TASKS["arc_easy"].prompt.target(arc) == 0
    assert arc["choices"]["label"] == ["A", "B", "C", "D"]
    piqa = load_task_data("piqa", location("piqa"))["validation"]
    assert len(piqa) == 1838 and piqa[0]["label"] == 0 and piqa[1]["label"] == 1
    hs = load_task_data("hellaswag", location("hellaswag"))["validation"][0]
    assert hs["label"] == "3" and hs["gold"] == 3
    assert hs["query"] == "Roof shingle removal: A man is sitting on a roof. He"
    mmlu = load_task_data("mmlu", location("mmlu"))
    assert len(mmlu) == 57 and sum(len(s["test"]) for s in mmlu.values()) == 14042
    first = mmlu["abstract_algebra"]["test"][0]
    assert first["choices"] == ["0", "4", "2", "6"] and first["answer"] == 1
    # a quoted cell with a comma stays one option
    assert mmlu["abstract_algebra"]["test"][2]["choices"] == ["0", "1", "0,1", "0,4"]


def test_hellaswag_preprocess():
    from llmc_slm.tasks.hellaswag import preprocess
    assert preprocess(" How to x [title] Step one [header] more  text ") == \
        "How to x. Step one more text"


# ------------------------------------------------------------------------------ missing data
def _cfg(path=None, **eval_kw) -> Config:
    cfg = Config()
    cfg.eval.path = str(path) if path is not None else None
    for k, v in eval_kw.items():
        setattr(cfg.eval, k, v)
    return cfg


def test_missing_data_folder_is_a_user_error_naming_the_key(tmp_path):
    from llmc_slm.harness import HarnessTask
    for name in TASK_NAMES:
        with pytest.raises(UserError, match="eval.path"):
            HarnessTask(name, _cfg(tmp_path / "nowhere"))
        with pytest.raises(UserError, match="eval.path"):
            HarnessTask(name, _cfg(tmp_path))  # exists, but holds no data


def test_incomplete_mmlu_folder_names_the_missing_subject(tmp_path):
    from llmc_slm.harness import HarnessTask
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    (tmp_path / "mmlu" / "test" / "anatomy_test.csv").write_text('"q",a,b,c,d,A\n')
    with pytest.raises(UserError, match="abstract_algebra"):
        HarnessTask("mmlu", _cfg(tmp_path))


def test_fewshot_without_a_fewshot_split_is_a_user_error():
    from llmc_slm.harness import HarnessTask
    loc = location("arc_easy")
    with pytest.raises(UserError, match="num_fewshot"):
        HarnessTask("arc_easy", _cfg(loc.root, num_fewshot=5))


def test_bad_rows_are_user_errors(tmp_path):
    from llmc_slm.tasks.mmlu import read_mmlu_csv
    from llmc_slm.tasks.piqa import read_piqa
    bad = tmp_path / "x_test.csv"
    bad.write_text("q,a,b,c,d,E\n")
    with pytest.raises(UserError, match="row 1"):
        read_mmlu_csv(bad, "x")
    (tmp_path / "v.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    (tmp_path / "l.lst").write_text("0\n1\n")
    with pytest.raises(UserError, match="2 labels for 1 rows"):
        read_piqa(tmp_path / "v.jsonl", tmp_path / "l.lst")


# ------------------------------------------------------------------------------ tiny model
@pytest.fixture(scope="module")
def tiny(smollm2_tokenizer):
    """A random 2-layer Llama with the embedded SmolLM2 tokenizer; lm_head untied from the embedding
    although the config says tied (as after a method that changed one of them)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = smollm2_tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 0.5)
    return types.SimpleNamespace(model=model, tokenizer=tok)


@pytest.mark.parametrize("name", ["arc_easy", "piqa", "hellaswag"])
def test_evaluator_on_a_tiny_model(tiny, name):
    from llmc_slm.harness import HarnessTask
    location(name)
    ev = HarnessTask(name, _cfg(limit=5, bs=4))
    assert ev.describe()["task"] == name
    out = ev.run(tiny)
    assert out["n"] == 5 and out["limit"] == 5 and out["subset"] and out["n_total"] > 5
    assert out["task"] == name and out["num_fewshot"] == 0
    for key in ("acc", "acc_norm"):
        assert 0.0 <= out[key] <= 1.0 and out[f"{key}_stderr"] is not None
    assert out["table_metric"] == "acc_norm" and out["table_value"] == out["acc_norm"]
    assert tiny.model.lm_head.weight is not tiny.model.model.embed_tokens.weight  # HFLM did not re-tie


@pytest.mark.parametrize("name", ["mmlu", "mmlu_continuation"])
def test_mmlu_evaluator_on_a_tiny_model(tiny, name):
    """The MMLU group on one subject per category (the full 57 take ~20 s even on a tiny model: the
    vocabulary projection over long prompts dominates)."""
    from llmc_slm.harness import HarnessTask
    location(name)
    ev = HarnessTask(name, _cfg(limit=12, bs=8, subset="first"))   # 12 in total over the group: 3 per subject
    assert len(ev.data) == 57
    picked = {"college_physics": 3, "marketing": 3, "sociology": 3, "logical_fallacies": 3}
    ev.data = {s: ev.data[s] for s in picked}
    out = ev.run(tiny)
    assert out["task"] == name and out["n"] == 12 and out["limit"] == 12 and out["subset"]
    assert set(out["subjects"]) == set(picked)
    assert set(out["categories"]) == {"stem", "other", "social_sciences", "humanities"}
    assert sum(c["n"] for c in out["categories"].values()) == out["n"]
    metrics = ("acc", "acc_norm") if name == "mmlu_continuation" else ("acc",)
    for entry in (out, *out["categories"].values(), *out["subjects"].values()):
        for m in metrics:
            assert 0.0 <= entry[m] <= 1.0 and entry[f"{m}_stderr"] is not None
    if name == "mmlu":
        assert out["acc_norm"] is None and "acc_norm" not in out["subjects"]["marketing"]
    # the group's acc is the item-weighted mean over subjects (equal weights here: 3 items each)
    assert out["acc"] == pytest.approx(sum(s["acc"] for s in out["subjects"].values()) / len(picked))
    assert out["table_metric"] == "acc" and out["table_value"] == out["acc"]


def test_requests_identical_to_the_builtin_task(tiny, tmp_path):
    """Our arc_challenge and the harness's built-in one (reading the same file) on 4 items, through HFLM."""
    from llmc_slm.harness import make_lm
    from llmc_slm.tasks import lmeval, reference
    name = "arc_challenge"
    loc = location(name)
    ours = lmeval.build_task_set(name, load_task_data(name, loc))
    ref = reference.builtin_task_set(name, loc, workdir=tmp_path)
    lm = make_lm(tiny, 4, "hf")
    a = lmeval.run(lm, ours.task_dict(), limit=4, log_samples=True)
    b = lmeval.run(lm, ref.task_dict(), limit=4, log_samples=True)
    sa, sb = a["samples"][name], b["samples"][name]
    assert len(sa) == len(sb) == 4
    for x, y in zip(sa, sb):
        assert [tuple(r) for r in x["arguments"]] == [tuple(r) for r in y["arguments"]]
        assert (x["target"], x["acc"], x["acc_norm"]) == (y["target"], y["acc"], y["acc_norm"])
        assert x["filtered_resps"] == y["filtered_resps"]
    for key in ("acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none"):
        assert a["results"][name][key] == b["results"][name][key]


def test_group_limit_is_a_total_spread_over_subjects():
    from llmc_slm.tasks.lmeval import spread
    assert spread(100, [50] * 57) == [2] * 43 + [1] * 14
    assert sum(spread(200, [100] * 57)) == 200
    assert spread(10, [1, 50, 50]) == [1, 3, 3]          # a short subject gives what it has


def test_mmlu_group_stderr_with_single_item_subjects(tiny):
    """One item per subject: the harness has no stderr for the group ("N/A"); ours is the item-level one."""
    from llmc_slm.harness import HarnessTask
    from llmc_slm.tasks import item_stderr
    location("mmlu_continuation")
    ev = HarnessTask("mmlu_continuation", _cfg(limit=4, bs=8))
    ev.data = {s: ev.data[s] for s in ("college_physics", "marketing", "sociology", "logical_fallacies")}
    out = ev.run(tiny)
    assert out["n"] == 4 and out["stderr_from_items"]
    assert out["acc_stderr"] == pytest.approx(item_stderr(out["acc"], 4))
    assert out["table_stderr"] == out["acc_stderr"]


def test_item_stderr_is_the_harness_sample_stderr():
    from lm_eval.api.metrics import mean_stderr

    from llmc_slm.tasks import item_stderr
    items = [1, 0, 0, 1, 1, 0, 0, 0]
    assert item_stderr(sum(items) / len(items), len(items)) == pytest.approx(mean_stderr(items))
    assert item_stderr(0.5, 1) is None and item_stderr(None, 10) is None
