"""Seeded subsets, per-item outcomes, paired statistics, WikiText-2 KLD against the float model, and the
paired reports (llmc_slm.tasks.subsets, llmc_slm.paired, llmc.eval.reference, llmc.results items files)."""

from __future__ import annotations

import gzip
import json
import math
import os
import types

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from conftest import tiny_hf_model  # noqa: E402
from llmc.config import Config  # noqa: E402
from llmc.errors import UserError  # noqa: E402
from llmc_slm import paired  # noqa: E402
from llmc_slm.scoring import slmq_perf  # noqa: E402
from llmc_slm.tasks import subsets  # noqa: E402


def _cfg(**eval_kw) -> Config:
    cfg = Config()
    for k, v in eval_kw.items():
        setattr(cfg.eval, k, v)
    return cfg


# ------------------------------------------------------------------------------------- subsets
def test_random_sample_is_seeded_sorted_and_nested():
    a = subsets.sample(1000, 50, 1234, "piqa")
    assert a == subsets.sample(1000, 50, 1234, "piqa") and a == sorted(a) and len(set(a)) == 50
    assert a != list(range(50))
    assert a != subsets.sample(1000, 50, 99, "piqa") and a != subsets.sample(1000, 50, 1234, "arc_easy")
    assert set(a) <= set(subsets.sample(1000, 100, 1234, "piqa"))      # 50 of the 100
    assert subsets.sample(10, 20, 1, "x") == list(range(10))


def test_largest_remainder_and_allocation_by_hand():
    assert subsets.largest_remainder(10, [1, 1, 1]) == [4, 3, 3]       # ties to the earlier part
    assert subsets.largest_remainder(7, [10, 20, 40]) == [1, 2, 4]
    assert subsets.largest_remainder(5, [1, 2, 7]) == [1, 1, 3]        # 0.5, 1.0, 3.5: .5 tie -> the first
    assert subsets.allocate(4, [100, 10, 1, 5]) == [1, 1, 1, 1]        # at least one each
    assert subsets.allocate(10, [100, 10, 1, 5]) == [6, 2, 1, 1]       # 1 each + 6 over (99, 9, 0, 4)
    assert subsets.allocate(3, [100, 10, 1, 5]) == [3, 0, 0, 0]        # fewer items than parts
    assert subsets.allocate(500, [100, 10, 1, 5]) == [100, 10, 1, 5]


def test_first_mode_is_lm_evals_behaviour():
    from llmc_slm.tasks.lmeval import spread
    sizes = {f"s{i:02d}": 50 for i in range(57)}
    first = subsets.draw(sizes, 100, 1234, "first", spread)
    assert [len(v) for v in first.values()] == spread(100, [50] * 57)
    assert all(v == list(range(len(v))) for v in first.values())
    assert subsets.draw({"piqa": 1838}, 5, 1234, "first") == {"piqa": [0, 1, 2, 3, 4]}
    with pytest.raises(ValueError, match="eval.subset"):
        subsets.draw({"piqa": 10}, 5, 1, "sometimes")


def test_config_keys():
    cfg = Config()
    assert (cfg.eval.subset, cfg.eval.subset_seed, cfg.eval.paired) == ("random", 1234, True)


def _mmlu_task_set(name="mmlu"):
    from llmc.data.sources import find_dataset
    from llmc_slm.tasks import load_task_data
    from llmc_slm.tasks.lmeval import build_task_set
    try:
        loc = find_dataset(name)
    except UserError:
        pytest.skip("no MMLU data found")
    return build_task_set(name, load_task_data(name, loc))


def test_mmlu_random_subset_is_stratified_and_the_same_in_every_run():
    from llmc_slm.tasks.lmeval import picked, selection
    ts = _mmlu_task_set("mmlu")
    sizes = [len(t.eval_docs) for t in ts.tasks.values()]
    assert len(sizes) == 57 and sum(sizes) == 14042
    a = picked(ts, 1000, "random", 1234)
    assert a == picked(_mmlu_task_set("mmlu"), 1000, "random", 1234)            # another run, same items
    assert selection(ts, 1000, "random", 1234) == {"samples": a}
    cont = picked(_mmlu_task_set("mmlu_continuation"), 1000, "random", 1234)
    assert [v for v in a.values()] == [v for v in cont.values()]                  # same questions, other form
    counts = [len(v) for v in a.values()]
    assert sum(counts) == 1000 and min(counts) >= 1 and counts == subsets.allocate(1000, sizes)
    for k, s in zip(counts, sizes):        # proportional: within one item of the quota (after one each)
        assert abs(k - (1 + 943 * (s - 1) / (14042 - 57))) < 1
    assert a != picked(ts, 1000, "random", 7)
    first = picked(ts, 100, "first")
    assert [len(v) for v in first.values()] == [2] * 43 + [1] * 14 and all(v[0] == 0 for v in first.values())
    few = picked(ts, 30, "random", 1234)                                           # < 57: some subjects none
    assert sum(map(len, few.values())) == 30 and len(few) < 30


def test_plain_task_selection():
    from llmc_slm.tasks.lmeval import TaskSet, selection
    fake = types.SimpleNamespace(eval_docs=list(range(200)))
    ts = TaskSet("piqa", fake, {"piqa": fake}, {})
    assert selection(ts, 5, "first") == {"limit": 5}
    s = selection(ts, 5, "random", 1234)["samples"]["piqa"]
    assert s == subsets.sample(200, 5, 1234, "piqa")
    assert selection(ts, 500, "random", 1234) == {"limit": None}


# --------------------------------------------------------------------------------- items file
def test_items_file_written_atomically_and_read_back(tmp_path):
    from llmc.results import RunRecord, items_path, read_items, read_result
    rec = RunRecord.start(tmp_path / "run.json", config={"quant": None})
    name = rec.set_items("pretrain", "piqa", {"ids": [3, 7], "acc": [1.0, 0.0]})
    rec.set_items("pretrain", "wikitext2", {"window_nll": [10.5, 11.0], "window_tokens": [15, 15]})
    assert name == "run.items.json.gz" and items_path(tmp_path / "run.json") == tmp_path / name
    got = read_items(tmp_path / name)
    assert got["pretrain"]["piqa"] == {"ids": [3, 7], "acc": [1.0, 0.0]}
    assert got["pretrain"]["wikitext2"]["window_tokens"] == [15, 15]
    assert json.loads(gzip.decompress((tmp_path / name).read_bytes()))["schema_version"] == 1
    assert not list(tmp_path.glob(".*tmp"))
    read_result(tmp_path / "run.json")       # the record itself is unchanged in kind


def test_pipeline_moves_per_item_outcomes_into_the_items_file(tmp_path):
    from llmc.pipeline import _evaluator
    from llmc.results import RunRecord, read_items

    class Stub:
        uses_reference = True

        def run(self, adapter, reference=None):
            return {"ppl": 3.0, "ref": reference, "per_item": {"window_nll": [1.0], "window_tokens": [4]}}

    cfg = _cfg(eval_pos=["pretrain", "fake_quant"])
    rec = RunRecord.start(tmp_path / "r.json")
    plan = types.SimpleNamespace(evaluators={"wikitext2": Stub()})
    evaluate = _evaluator(cfg, plan, rec, adapter=None, reference="REF")
    evaluate("pretrain")
    evaluate("fake_quant")
    assert rec.data["metrics"]["pretrain"]["wikitext2"]["ref"] is None               # the float model itself
    assert rec.data["metrics"]["fake_quant"]["wikitext2"]["ref"] == "REF"
    assert "per_item" not in rec.data["metrics"]["fake_quant"]["wikitext2"]
    assert rec.data["metrics"]["fake_quant"]["wikitext2"]["items_file"] == "r.items.json.gz"
    assert set(read_items(tmp_path / "r.items.json.gz")) == {"pretrain", "fake_quant"}


# ---------------------------------------------------------------------------- harness outcomes
@pytest.fixture(scope="module")
def tiny(smollm2_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = smollm2_tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    return types.SimpleNamespace(model=LlamaForCausalLM(config).eval(), tokenizer=tok)


def test_harness_records_the_drawn_items_and_their_outcomes(tiny):
    from llmc.data.sources import find_dataset
    from llmc_slm.harness import HarnessTask
    try:
        find_dataset("arc_easy")
    except UserError:
        pytest.skip("no arc_easy data")
    out = HarnessTask("arc_easy", _cfg(limit=6, bs=8, subset_seed=5)).run(tiny)
    again = HarnessTask("arc_easy", _cfg(limit=6, bs=8, subset_seed=5)).run(tiny)
    ids = out["item_ids"]
    assert len(ids) == 6 and ids == again["item_ids"] and ids != list(range(6))
    assert out["subset_mode"] == "random" and out["subset_seed"] == 5 and out["items_digest"] == subsets.digest(ids)
    items = out["per_item"]
    assert items["ids"] == ids and len(items["ll"]) == 6
    assert [float(p == t) for p, t in zip(items["pred"], items["target"])] == items["acc"]
    assert [float(p == t) for p, t in zip(items["pred_norm"], items["target"])] == items["acc_norm"]
    assert np.mean(items["acc"]) == pytest.approx(out["acc"]) and np.mean(items["acc_norm"]) == pytest.approx(out["acc_norm"])
    first = HarnessTask("arc_easy", _cfg(limit=6, bs=8, subset="first")).run(tiny)
    assert first["per_item"]["ids"] == list(range(6)) and first["subset_mode"] == "first"
    assert first["subset_seed"] is None


# ---------------------------------------------------------------------------- paired statistics
def test_paired_delta_by_hand():
    p = paired.paired_delta([1, 1, 0, 0, 1], [1, 0, 0, 0, 1], [0, 1, 2, 3, 1], [0, 2, 2, 3, 1])
    # d = [0, -1, 0, 0, 0]: mean -0.2, sd (ddof 1) = sqrt((4 * 0.04 + 0.64) / 4) = sqrt(0.2), SE = 0.2
    assert p.n == 5 and p.delta == pytest.approx(-0.2) and p.stderr == pytest.approx(0.2)
    assert p.flips == pytest.approx(0.2) and p.mean_a == pytest.approx(0.6) and p.mean_b == pytest.approx(0.4)
    assert p.interval() == pytest.approx((-0.2 - 1.96 * 0.2, -0.2 + 1.96 * 0.2))
    q = paired.paired_delta([1, 0, 1, 1], [1, 1, 0, 1])      # d = [0, 1, -1, 0]: sd sqrt(2/3), SE sqrt(2/3)/2
    assert q.delta == 0 and q.stderr == pytest.approx(math.sqrt(2 / 3) / 2) and q.flips is None
    s = p.scaled(100)
    assert s.delta == pytest.approx(-20) and s.stderr == pytest.approx(20) and s.flips == p.flips
    w = paired.window_log_ppl_delta([30.0, 45.0], [33.0, 45.0], [15, 15])
    assert w.delta == pytest.approx(0.1) and w.stderr == pytest.approx(0.1)   # d = [0.2, 0]
    with pytest.raises(ValueError):
        paired.paired_delta([1, 0], [1])


def test_paired_stderr_is_much_smaller_on_correlated_items():
    rng = np.random.default_rng(0)
    a = (rng.random(2000) < 0.6).astype(float)
    b = a.copy()
    flip = rng.random(2000) < 0.03
    b[flip] = 1 - b[flip]
    p = paired.paired_delta(a, b)
    unpaired = paired.unpaired_stderr(a, b)
    assert p.stderr < 0.3 * unpaired
    assert p.delta == pytest.approx(b.mean() - a.mean())


def test_perf_bootstrap():
    rng = np.random.default_rng(1)
    items = {}
    for name, acc in (("arc_easy", 0.6), ("piqa", 0.7)):
        a = (rng.random(400) < acc).astype(float)
        b = a.copy()
        b[rng.random(400) < 0.05] = 0.0
        items[name] = paired.PerfItems(a, b)
    nll = rng.normal(40, 3, 50)
    items["wikitext2"] = paired.PerfItems(nll, nll + rng.normal(0.5, 0.2, 50), [15] * 50)
    point = paired.perf_point(items)
    means = {k: (np.mean(v.a), np.mean(v.b)) for k, v in items.items() if k != "wikitext2"}
    ppl = (math.exp(np.sum(items["wikitext2"].a) / 750), math.exp(np.sum(items["wikitext2"].b) / 750))
    expected = slmq_perf({**{k: m[0] for k, m in means.items()}, "wikitext2": ppl[0]},
                         {**{k: m[1] for k, m in means.items()}, "wikitext2": ppl[1]})
    assert point == pytest.approx(expected)
    ci = paired.perf_bootstrap(items, n_boot=500, seed=3)
    assert ci["low"] < ci["perf"] < ci["high"] and ci["high"] - ci["low"] < 5
    assert ci == paired.perf_bootstrap(items, n_boot=500, seed=3)
    same = {k: paired.PerfItems(v.a, v.a, v.tokens) for k, v in items.items()}
    ci0 = paired.perf_bootstrap(same, n_boot=200)
    assert ci0["low"] == pytest.approx(100) and ci0["high"] == pytest.approx(100)


# ------------------------------------------------------------------------------ WikiText-2 KLD
def test_kld_zero_for_the_same_model_and_positive_for_a_perturbed_one():
    from llmc.eval.perplexity import perplexity, window_ids
    from llmc.eval.reference import FloatReference
    model = tiny_hf_model("llama")
    windows = window_ids(torch.randint(0, 256, (4 * 16,), generator=torch.Generator().manual_seed(3)), 16)
    ref = FloatReference(model)
    assert next(ref.model.parameters()).device.type == "cpu"
    with ref.on("cpu") as r:
        same = perplexity(model, windows, bs=2, progress=False, reference=r)
    vs = same["vs_float"]
    assert vs["kld"] == pytest.approx(0, abs=1e-6) and vs["top1_agreement"] == 1.0
    assert vs["delta_log_ppl"] == pytest.approx(0, abs=1e-6) and vs["ref_ppl"] == pytest.approx(same["ppl"])
    with torch.no_grad():                              # perturb the model; the copy stays the float model
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with ref.on("cpu") as r:
        out = perplexity(model, windows, bs=3, progress=False, reference=r)
    vs = out["vs_float"]
    assert vs["kld"] > 1e-4 and vs["top1_agreement"] < 1.0 and vs["windows"] == 4
    assert vs["ref_ppl"] == pytest.approx(same["ppl"], rel=1e-5)
    assert vs["delta_log_ppl"] == pytest.approx(math.log(out["ppl"] / vs["ref_ppl"]), rel=1e-4)
    # KL by hand on the first window
    with torch.no_grad():
        lq = torch.log_softmax(model(windows[:1]).logits[0, :-1].float(), -1)
        lp = torch.log_softmax(ref.model(windows[:1]).logits[0, :-1].float(), -1)
    assert out["per_item"]["window_kl"][0] == pytest.approx((lp.exp() * (lp - lq)).sum().item(), rel=1e-4)
    assert sum(out["per_item"]["window_nll"]) / out["tokens"] == pytest.approx(out["nll"])


def test_reference_is_kept_only_when_used():
    from llmc.eval.reference import wanted
    wiki = {"wikitext2": types.SimpleNamespace(uses_reference=True)}
    acc = {"piqa": types.SimpleNamespace()}
    q = _cfg(eval_pos=["pretrain", "fake_quant"])
    q.quant = object()
    assert wanted(q, wiki) and not wanted(q, acc)
    assert not wanted(_cfg(eval_pos=["pretrain", "fake_quant"]), wiki)        # a float run
    q.eval.paired = False
    assert not wanted(q, wiki)


# ------------------------------------------------------------------------------------- reports
def _write_run(folder, name, method, acc_items, preds, nll, ids=None, vs_float=None, wbit=8, kl=None,
               model="smollm2-135m", group=None):
    from llmc.results import RunRecord
    from llmc_slm.tasks import TABLE_METRIC
    pos = "pretrain" if method is None else "fake_quant"
    quant = None if method is None else {"method": method, "weight": {"bit": wbit}, "act": {"bit": 8}}
    if group:
        quant["weight"].update(granularity="per_group", group_size=group)
    rec = RunRecord.start(folder / f"{name}.json", config={"quant": quant, "model": {"path": model}},
                          model={"name": model}, environment={"device": "cpu"})
    n = len(acc_items)
    ids = list(range(n)) if ids is None else ids
    acc = sum(acc_items) / n
    metric = TABLE_METRIC["arc_easy"]
    m = {"acc": acc, "acc_stderr": math.sqrt(acc * (1 - acc) / (n - 1)), "acc_norm": acc,
         "acc_norm_stderr": math.sqrt(acc * (1 - acc) / (n - 1)), "n": n, "n_total": 2376, "subset": True,
         "limit": n, "num_fewshot": 0, "table_metric": metric, "table_value": acc,
         "table_stderr": math.sqrt(acc * (1 - acc) / (n - 1)), "subset_mode": "random", "subset_seed": 1234,
         "items_digest": subsets.digest(ids), "item_ids": ids}
    m["items_file"] = rec.set_items(pos, "arc_easy", {"ids": ids, "acc": acc_items, "acc_norm": acc_items,
                                                      "pred": preds, "pred_norm": preds})
    rec.set_metric(pos, "arc_easy", m)
    w = {"ppl": math.exp(sum(nll) / (15 * len(nll))), "windows": len(nll), "windows_in_split": 148, "seq_len": 16}
    if vs_float:
        w["vs_float"] = vs_float
    w["items_file"] = rec.set_items(pos, "wikitext2", {"window_nll": nll, "window_tokens": [15] * len(nll),
                                                       **({"window_kl": kl} if kl is not None else {})})
    rec.set_metric(pos, "wikitext2", w)
    rec.finish()


def test_reports_pair_runs_on_the_same_items(tmp_path):
    from llmc_slm.reports import collect, tables
    rng = np.random.default_rng(0)
    a = (rng.random(300) < 0.6).astype(float).tolist()
    b = list(a)
    for i in range(0, 300, 25):
        b[i] = 1.0 - b[i]
    pa = [0 if x else 1 for x in a]
    pb = [0 if x else 1 for x in b]
    nll = rng.normal(40, 2, 20).tolist()
    _write_run(tmp_path, "fp16", None, a, pa, nll)
    _write_run(tmp_path, "w8a8", "SmoothQuant", b, pb, [x + 0.3 for x in nll],
               vs_float={"kld": 0.0123, "top1_agreement": 0.97})
    coll = collect.collect(tmp_path)
    run = next(r for r in coll.runs if not r.is_float)
    p = run.paired["arc_easy"]
    assert p.n == 300 and p.delta == pytest.approx(100 * (np.mean(b) - np.mean(a)))
    assert p.flips == pytest.approx(12 / 300)
    assert p.stderr < 0.5 * math.hypot(run.values["arc_easy"].stderr, run.baseline["arc_easy"].stderr)
    assert run.paired["wikitext2"].delta == pytest.approx(0.02) and run.paired["wikitext2"].stderr == pytest.approx(0, abs=1e-9)
    ci = run.perf_interval
    assert ci is not None and ci["low"] <= run.perf <= ci["high"] and ci["perf"] == pytest.approx(run.perf)
    t = tables.paired_table(coll, "smollm2-135m", "table1_paired", 1)
    text = " ".join(" ".join(row) for row in t.rows)
    # beside the paired error, the error of the same difference from two independent samples
    assert p.unpaired_stderr == pytest.approx(math.hypot(run.values["arc_easy"].stderr,
                                                         run.baseline["arc_easy"].stderr), rel=1e-3)
    assert f"{p.delta:+.2f} ± {p.stderr:.2f} [unpaired ± {p.unpaired_stderr:.2f}] (4.0%)†" in text
    assert "KLD 0.0123" in text and "top-1 97.0%" in text
    assert f"[{ci['low']:.2f}, {ci['high']:.2f}]" in text
    names = [t.name for t in tables.all_tables(coll, paired=True)]
    assert "table1_paired" in names and "table1_paired" not in [t.name for t in tables.all_tables(coll)]


def test_reports_fall_back_to_unpaired_when_items_differ(tmp_path):
    from llmc_slm.reports import collect
    a = [1.0, 0.0, 1.0, 1.0] * 10
    _write_run(tmp_path, "fp16", None, a, [0] * 40, [40.0] * 5)
    _write_run(tmp_path, "w8a8", "SmoothQuant", a, [0] * 40, [40.0] * 5, ids=list(range(100, 140)))
    run = next(r for r in collect.collect(tmp_path).runs if not r.is_float)
    assert "arc_easy" not in run.paired and "arc_easy" in run.mismatch          # another sample: a mismatch
    assert "wikitext2" in run.paired and run.perf_interval is None


def test_claim1_on_the_paired_interval(tmp_path):
    from llmc_slm.reports import claims, collect
    a = [1.0] * 150 + [0.0] * 150
    b = list(a)
    b[0] = 0.0                                   # one item of 300 lost: drop 0.67%, paired SE ~0.67%
    _write_run(tmp_path, "fp16", None, a, [0] * 300, [40.0] * 5)
    _write_run(tmp_path, "w8a8", "SmoothQuant", b, [0] * 300, [40.0] * 5)
    coll = collect.collect(tmp_path)
    run = next(r for r in coll.runs if not r.is_float)
    d = claims.mean_drop(run)
    assert d.paired and d.stderr == pytest.approx(100 / 50 * run.paired["arc_easy"].stderr)
    c1 = claims.claim1(claims._Runs(coll))
    assert "paired 95% interval" in c1.evidence and "not decided at 95%" in c1.evidence
    # the verdict column says the point estimate (0.67% >= 0.5%) is not decided
    assert c1.verdict == claims.FAILS and c1.undecided
    assert c1.verdict_text == "does not hold, not decided at 95% (partial)"   # one task of five


def test_claims_2_and_3_pair_two_quantized_runs(tmp_path):
    """Two quantized runs on the float run's items: the difference of their drops is paired item by item
    (the float outcomes cancel), so 19 more items lost of 300 is decided although each drop's own SE is
    wide; claim 3's perplexity ratio gets the exponentiated paired interval."""
    from llmc_slm.paired import paired_delta
    from llmc_slm.reports import claims, collect
    rng = np.random.default_rng(1)
    a = [1.0] * 150 + [0.0] * 150
    w8, w4 = list(a), list(a)
    w8[0] = 0.0
    for i in range(20):
        w4[i] = 0.0
    nll = rng.normal(40, 2, 30).tolist()
    _write_run(tmp_path, "fp16", None, a, [0] * 300, nll)
    _write_run(tmp_path, "omni_w8a8", "OmniQuant", w8, [0] * 300, [x + 0.1 for x in nll])
    _write_run(tmp_path, "omni_w4a8", "OmniQuant", w4, [0] * 300,
               [x + 40 + rng.normal(0, 1) for x in nll], wbit=4)          # ~14x the float perplexity
    coll = collect.collect(tmp_path)
    r8 = next(r for r in coll.runs if r.bits == "W8A8")
    r4 = next(r for r in coll.runs if r.bits == "W4A8")
    diff = claims.paired_drop_difference(r8, r4, ("arc_easy",))
    d8, d4 = claims.mean_drop(r8), claims.mean_drop(r4)
    assert diff.value == pytest.approx(d4.value - d8.value)
    assert diff.stderr == pytest.approx(100 * 100 / 50 * paired_delta(w4, w8).stderr)
    assert diff.stderr < math.hypot(d4.stderr, d8.stderr)       # pairing the two runs is tighter
    assert diff.interval()[0] > 0
    assert claims.paired_drop_difference(r8, r4, ("wikitext2",)) is None     # windows, not accuracies
    c2 = claims.claim2(claims._Runs(coll))
    assert "OmniQuant: W4A8" in c2.evidence and "paired 95% interval [+" in c2.evidence
    assert not c2.undecided and "W4A8 worse than W8A8: holds (partial)" in c2.evidence
    c3 = claims.claim3(claims._Runs(coll))
    assert c3.verdict == claims.HOLDS and "paired 95% interval of the ratio [" in c3.evidence
    assert not c3.undecided and c3.verdict_text == "holds"
    lo, hi = (math.exp(x) for x in r4.paired["wikitext2"].interval())
    assert f"[{lo:.2f}, {hi:.2f}]x" in c3.evidence and lo > 10


def test_claim2_verdict_says_when_the_paired_interval_does_not_decide(tmp_path):
    """SpinQuant loses 2 items of 300 at W4A8 and OmniQuant 3: SpinQuant degrades least on the point
    estimates, but their paired interval crosses 0, and the verdict column says so (not only the evidence)."""
    from llmc_slm.reports import claims, collect
    a = [1.0] * 150 + [0.0] * 150
    spin, omni = list(a), list(a)
    spin[0] = spin[1] = 0.0
    for i in (2, 3, 4):
        omni[i] = 0.0
    nll = [40.0] * 5
    _write_run(tmp_path, "fp16", None, a, [0] * 300, nll)
    _write_run(tmp_path, "spin_w4a8", "SpinQuant", spin, [0] * 300, nll, wbit=4)
    _write_run(tmp_path, "omni_w4a8", "OmniQuant", omni, [0] * 300, nll, wbit=4)
    c2 = claims.claim2(claims._Runs(coll := collect.collect(tmp_path)))
    assert "SpinQuant least degraded: holds, not decided at 95%" in c2.evidence
    assert "SpinQuant vs OmniQuant: +0.67 (paired 95% interval [" in c2.evidence
    assert c2.verdict == claims.HOLDS and c2.undecided and c2.partial          # no W8A8 runs: partial
    assert c2.verdict_text == "holds, not decided at 95% (partial)"
    row = claims.claims_table([c2], coll).rows[0]
    assert row[2] == "holds, not decided at 95% (partial)"
    # twenty more items lost by OmniQuant: the interval lies above 0, the verdict is decided
    for i in range(5, 25):
        omni[i] = 0.0
    _write_run(tmp_path, "omni_w4a8", "OmniQuant", omni, [0] * 300, nll, wbit=4)
    c2 = claims.claim2(claims._Runs(collect.collect(tmp_path)))
    assert "SpinQuant least degraded: holds — " in c2.evidence and not c2.undecided
    assert c2.verdict_text == "holds (partial)"


def test_paired_changes_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from llmc_slm.reports import collect
    from llmc_slm.reports.plots import make_plots, paired_data, score_data
    a = [1.0] * 150 + [0.0] * 150
    b = list(a)
    for i in range(12):
        b[i] = 0.0
    _write_run(tmp_path, "fp16", None, a, [0] * 300, [40.0] * 5)
    _write_run(tmp_path, "w8a8", "SmoothQuant", b, [0] * 300, [40.5] * 5)
    coll = collect.collect(tmp_path)
    run = next(r for r in coll.runs if not r.is_float)
    model = run.model
    cell = paired_data(coll, model)["W8A8"]["SmoothQuant"]["arc_easy"]
    assert cell == (run.paired["arc_easy"].delta, run.paired["arc_easy"].stderr) and cell[0] == pytest.approx(-4.0)
    ci = score_data(coll, model)["W8A8"]["SmoothQuant"]["perf_ci"]
    assert ci == (run.perf_interval["low"], run.perf_interval["high"]) and ci[0] < run.perf < ci[1]
    names = {p.name for p in make_plots(coll, tmp_path / "plots")}
    assert {f"paired_changes_{model}.png", f"paired_changes_{model}.pdf"} <= names


def test_perf_difference_pairs_two_compressed_runs():
    rng = np.random.default_rng(4)
    base = (rng.random(400) < 0.6).astype(float)
    a = base.copy()
    a[:10] = 0.0                                      # A loses a few items the float model had right ...
    b = a.copy()
    b[np.flatnonzero(a)[:15]] = 0.0                   # ... B loses those and 15 more
    nll = rng.normal(40, 2, 30)
    items_a = {"arc_easy": paired.PerfItems(base, a), "wikitext2": paired.PerfItems(nll, nll + 1, [15] * 30)}
    items_b = {"arc_easy": paired.PerfItems(base, b), "wikitext2": paired.PerfItems(nll, nll + 1.2, [15] * 30)}
    d = paired.perf_difference(items_a, items_b, n_boot=500)
    assert d["diff"] == pytest.approx(paired.perf_point(items_a) - paired.perf_point(items_b))
    assert 0 < d["low"] < d["diff"] < d["high"] and d["datasets"] == ["arc_easy", "wikitext2"]
    # narrower than the two runs' own intervals against the float model combined as if independent
    ia, ib = paired.perf_bootstrap(items_a, n_boot=500), paired.perf_bootstrap(items_b, n_boot=500)
    assert d["high"] - d["low"] < math.hypot(ia["high"] - ia["low"], ib["high"] - ib["low"])
    other = {"arc_easy": paired.PerfItems(1 - base, b)}
    with pytest.raises(ValueError, match="same items"):
        paired.perf_difference(items_a, other)


def test_perf_difference_of_two_models_resamples_each_against_its_own_baseline():
    rng = np.random.default_rng(5)

    def model(n, acc, lost, shift):
        base = (rng.random(n) < acc).astype(float)
        comp = base.copy()
        comp[np.flatnonzero(base)[:lost]] = 0.0
        nll = rng.normal(40, 2, 20)
        return {"arc_easy": paired.PerfItems(base, comp), "wikitext2": paired.PerfItems(nll, nll + shift, [15] * 20)}

    small, large = model(1000, 0.6, 20, 0.5), model(500, 0.5, 10, 0.6)      # different models, different items
    d = paired.perf_difference_independent(small, large, n_boot=500)
    assert d["diff"] == pytest.approx(paired.perf_point(small) - paired.perf_point(large))
    assert d["low"] < d["diff"] < d["high"] and d["datasets"] == ["arc_easy", "wikitext2"]
    # independent models: the difference's interval is about the two models' own intervals combined
    ia, ib = paired.perf_bootstrap(small, n_boot=500), paired.perf_bootstrap(large, n_boot=500)
    width = math.hypot(ia["high"] - ia["low"], ib["high"] - ib["low"])
    assert 0.7 * width < d["high"] - d["low"] < 1.3 * width
    assert d == paired.perf_difference_independent(small, large, n_boot=500)
    worse = model(500, 0.5, 100, 2.0)
    far = paired.perf_difference_independent(small, worse, n_boot=500)
    assert far["low"] > 0                                  # a clear gap is decided
    with pytest.raises(ValueError, match="no dataset"):
        paired.perf_difference_independent(small, {"piqa": small["arc_easy"]})
    with pytest.raises(ValueError, match="second model"):
        paired.perf_difference_independent(small, {"arc_easy": paired.PerfItems([1.0, 0.0], [1.0])})


@pytest.mark.parametrize("qwen_lost, decided", [(12, False), (150, True)])
def test_claim4_interval_across_models(tmp_path, qwen_lost, decided):
    """SmoothQuant W4A8 loses 10 of SmolLM's 240 right answers; Qwen loses 12 of its 200 (a hair more: the
    claim holds on the point estimates, not decided at 95%) or 150 (decided)."""
    from llmc_slm.reports import claims, collect
    smol, qwen = "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"
    nll = np.random.default_rng(6).normal(40, 2, 20).tolist()
    for model, n_right, lost in ((smol, 240, 10), (qwen, 200, qwen_lost)):
        base = [1.0] * n_right + [0.0] * (400 - n_right)
        comp = [0.0] * lost + base[lost:]
        _write_run(tmp_path, f"{model}_fp", None, base, [0] * 400, nll, model=model)
        _write_run(tmp_path, f"{model}_sq4", "SmoothQuant", comp, [0] * 400, [x + 0.1 for x in nll], wbit=4,
                   model=model)
    c4 = {c.number: c for c in claims.evaluate(collect.collect(tmp_path))}[4]
    assert c4.verdict == claims.HOLDS and c4.partial                      # OmniQuant, SpinQuant: no runs
    assert "each model bootstrapped against its own float run" in c4.evidence
    assert c4.undecided is not decided and ("not decided at 95%" in c4.verdict_text) is not decided, c4.evidence


def test_ranking_table_compares_neighbours_on_the_same_items(tmp_path):
    from llmc_slm.reports import collect
    from llmc_slm.reports.ranking import ranking_table
    a = [1.0] * 200 + [0.0] * 200
    rtn, smooth, gptq = list(a), list(a), list(a)
    for i in range(3):
        smooth[i] = 0.0
    for i in range(40):
        gptq[i] = 0.0
    nll = np.random.default_rng(2).normal(40, 2, 20).tolist()
    _write_run(tmp_path, "fp16", None, a, [0] * 400, nll)
    kl = np.random.default_rng(3).uniform(1, 2, 20)
    _write_run(tmp_path, "rtn", "RTN", rtn, [0] * 400, [x + 0.1 for x in nll], kl=(kl * 15).tolist())
    _write_run(tmp_path, "smooth", "SmoothQuant", smooth, [0] * 400, [x + 0.1 for x in nll], kl=(kl * 15 + 3).tolist())
    _write_run(tmp_path, "gptq", "GPTQ", gptq, [0] * 400, [x + 0.1 for x in nll])
    coll = collect.collect(tmp_path)
    t = ranking_table(coll, next(r.model for r in coll.runs), "t", 1)
    assert [(r[1], r[2]) for r in t.rows] == [("RTN", "SmoothQuant"), ("SmoothQuant", "GPTQ")]
    assert t.rows[0][3] == "+0.75 ± 0.43 (1 of 5 tasks)" and t.rows[0][-1] == "not decided"
    # SmoothQuant and GPTQ differ on ARC-e only: without it their SLMQ_perf interval includes 0
    assert t.rows[1][3].startswith("+9.25 ± ") and t.rows[1][-1] == "SmoothQuant ahead (not decided without ARC-e)"
    assert t.rows[1][4] == "+0.0000 ± 0.0000"
    assert t.rows[0][5] == "-0.2000 ± 0.0000" and t.rows[1][5] == "—"     # per token: 3 / 15; GPTQ has no KL


def test_ranking_calls_two_runs_with_the_same_outcome_on_every_item_and_window_identical(tmp_path):
    """OmniQuant+KB whose keep-best chose the end of training everywhere is OmniQuant's model: the ranking says
    "identical", not "not decided"; one item or one window's KL apart, it is "not decided" again."""
    from llmc_slm.reports import collect
    from llmc_slm.reports.ranking import ranking_table
    base = [1.0] * 200 + [0.0] * 200
    comp = [0.0] * 5 + base[5:]
    nll = np.random.default_rng(8).normal(40, 2, 20).tolist()
    kl = np.random.default_rng(9).uniform(1, 2, 20).tolist()

    def verdicts(name, second_acc, second_kl):
        folder = tmp_path / name
        folder.mkdir()
        _write_run(folder, "fp16", None, base, [0] * 400, nll)
        _write_run(folder, "omni", "OmniQuant", comp, [0] * 400, [x + 0.1 for x in nll], kl=kl)
        _write_run(folder, "gptq", "GPTQ", second_acc, [0] * 400, [x + 0.1 for x in nll], kl=second_kl)
        coll = collect.collect(folder)
        return [r[-1] for r in ranking_table(coll, next(r.model for r in coll.runs), "t", 1).rows]

    assert verdicts("same", comp, kl) == ["identical"]
    assert verdicts("one_item", [1.0] + comp[1:], kl) == ["not decided"]
    assert verdicts("one_window_kl", comp, kl[:-1] + [kl[-1] + 0.5]) == ["not decided"]


def test_sensitivity_names_a_models_settings_that_are_one_model_under_two_names(tmp_path):
    """The tallies count settings; two settings with the same outcome on every item and window (OmniQuant+KB
    that kept OmniQuant's model) repeat one comparison, and a note names them; a run one item apart is not named."""
    from llmc_slm.reports import collect
    from llmc_slm.reports.sensitivity import sensitivity_table
    base = [1.0] * 200 + [0.0] * 200
    comp = [0.0] * 5 + base[5:]
    nll = np.random.default_rng(10).normal(40, 2, 20).tolist()
    kl = np.random.default_rng(11).uniform(1, 2, 20).tolist()
    _write_run(tmp_path, "fp16", None, base, [0] * 400, nll)
    _write_run(tmp_path, "omni", "OmniQuant", comp, [0] * 400, [x + 0.1 for x in nll], kl=kl)
    _write_run(tmp_path, "gptq", "GPTQ", comp, [0] * 400, [x + 0.1 for x in nll], kl=kl)
    _write_run(tmp_path, "rtn", "RTN", [1.0] + comp[1:], [0] * 400, [x + 0.1 for x in nll], kl=kl)
    _write_run(tmp_path, "omni4", "OmniQuant", comp, [0] * 400, [x + 0.1 for x in nll], kl=kl, wbit=4)
    notes = [n for n in sensitivity_table(collect.collect(tmp_path)).notes if n.startswith("One model under")]
    assert len(notes) == 1 and "smollm2-135m: GPTQ and OmniQuant W8A8." in notes[0], notes
    assert "RTN" not in notes[0] and "W4A8" not in notes[0]          # one item apart; another bit setting


def test_a_group_wise_run_is_its_own_setting_never_ranked_against_per_channel_runs(tmp_path):
    """AWQ W4A8 in groups of 64 stores a scale per 64 weights: the tables label it W4A8-g64, the ranking
    does not set it against the per-channel W4A8 runs, and the paper's claims (per-channel W4A8) leave it out."""
    from llmc_slm.reports import claims, collect, tables
    from llmc_slm.reports.ranking import ranking_table
    base = [1.0] * 200 + [0.0] * 200
    nll = np.random.default_rng(7).normal(40, 2, 20).tolist()
    _write_run(tmp_path, "fp16", None, base, [0] * 400, nll)
    _write_run(tmp_path, "rtn", "RTN", base, [0] * 400, [x + 0.5 for x in nll], wbit=4)
    _write_run(tmp_path, "spin", "SpinQuant", base, [0] * 400, [x + 0.2 for x in nll], wbit=4)
    _write_run(tmp_path, "awq", "AWQ", base, [0] * 400, [x + 0.1 for x in nll], wbit=4, group=64)
    coll = collect.collect(tmp_path)
    assert {r.method: r.bits for r in coll.runs if not r.is_float} == {"RTN": "W4A8", "SpinQuant": "W4A8",
                                                                      "AWQ": "W4A8-g64"}
    t = ranking_table(coll, next(r.model for r in coll.runs), "t", 1)
    assert [(r[0], r[1], r[2]) for r in t.rows] == [("W4A8", "SpinQuant", "RTN")]
    rows = [r for r in tables.all_tables(coll) if r.name == "table1"][0].rows
    assert [(r[0], r[1]) for r in rows][1:] == [("RTN", "W4A8"), ("SpinQuant", "W4A8"), ("AWQ", "W4A8-g64")]
    c2 = {c.number: c for c in claims.evaluate(coll)}[2]
    assert "AWQ" not in c2.evidence


def test_ranking_verdict_that_rests_on_no_single_dataset(tmp_path):
    """A ahead of B on ARC-e (40 items of 400) and on WikiText-2 (every window): leaving out either one still
    decides, so the verdict carries no '(not decided without ...)'; B against C differs on WikiText-2 only."""
    from llmc_slm.reports import collect
    from llmc_slm.reports.ranking import fragile_datasets, ranking_table
    base = [1.0] * 200 + [0.0] * 200
    b = list(base)
    for i in range(40):
        b[i] = 0.0
    nll = np.random.default_rng(4).normal(40, 2, 20).tolist()
    _write_run(tmp_path, "fp16", None, base, [0] * 400, nll)
    _write_run(tmp_path, "a", "RTN", base, [0] * 400, [x + 0.1 for x in nll])
    _write_run(tmp_path, "b", "GPTQ", b, [0] * 400, [x + 3.0 for x in nll])
    _write_run(tmp_path, "c", "SmoothQuant", b, [0] * 400, [x + 9.0 for x in nll])
    coll = collect.collect(tmp_path)
    t = ranking_table(coll, next(r.model for r in coll.runs), "t", 1)
    assert [(r[1], r[2], r[-1]) for r in t.rows] == [
        ("RTN", "GPTQ", "RTN ahead"),
        ("GPTQ", "SmoothQuant", "GPTQ ahead (not decided without Wiki ppl)")]
    runs = {r.method: r for r in coll.runs}
    items = {m: {d: runs[m].paired_items[d] for d in runs[m].perf_datasets} for m in ("RTN", "GPTQ")}
    assert fragile_datasets(items["RTN"], items["GPTQ"]) == []
    assert "(not decided without X)" in t.notes[0]


def test_paired_drop_difference_needs_the_same_items(tmp_path):
    from llmc_slm.reports import claims, collect
    a = [1.0, 0.0, 1.0, 1.0] * 10
    _write_run(tmp_path, "fp16", None, a, [0] * 40, [40.0] * 5)
    _write_run(tmp_path, "w8a8", "SmoothQuant", a, [0] * 40, [40.0] * 5)
    _write_run(tmp_path, "w4a8", "SmoothQuant", a, [0] * 40, [41.0] * 5, ids=list(range(100, 140)), wbit=4)
    coll = collect.collect(tmp_path)
    r8 = next(r for r in coll.runs if r.bits == "W8A8")
    r4 = next(r for r in coll.runs if r.bits == "W4A8")
    assert claims.paired_drop_difference(r8, r4, ("arc_easy",)) is None   # the W4A8 run drew other items


def test_wikitext2_evaluator_with_the_float_reference(tiny):
    from llmc.eval.reference import FloatReference
    from llmc.evaluators import WikiText2Perplexity
    try:
        ev = WikiText2Perplexity("wikitext2", _cfg(seq_len=32, limit=2))
    except UserError:
        pytest.skip("no wikitext2 data")
    plain = ev.run(tiny)
    assert "vs_float" not in plain and len(plain["per_item"]["window_nll"]) == 2
    out = ev.run(tiny, reference=FloatReference(tiny.model))
    assert out["vs_float"]["kld"] == pytest.approx(0, abs=1e-5) and out["vs_float"]["reference"].startswith("float")
    assert out["ppl"] == pytest.approx(plain["ppl"])
