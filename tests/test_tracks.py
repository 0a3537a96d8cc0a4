"""Track 2 (inference profile, MACs, storage, SLMQ_infer) and Track 3 (quant_cost -> SLMQ_quant) helpers."""

import json
import math

import pytest
import torch

from conftest import tiny_adapter, tiny_hf_model
from llmc.config import load_config
from llmc.deploy import deploy_integer
from llmc.quant.packed import save_packed_model
from llmc.registry import ALGO_REGISTRY
from llmc_slm.scoring import slmq_infer
from llmc.quant.packed_info import checkpoint_kind
from llmc_slm.tracks.inference import (RESULT_KEYS, infer_scores, measure_model, profile_inference,
                                       save_baseline_checkpoint, track2_for_run)
from llmc_slm.tracks.macs import attention_macs, count_macs
from llmc_slm.tracks.quant_cost import bits_label, quant_table, read_quant_cost
from llmc.pipeline import quantize_model, quantize_stages


# -------------------------------------------------------------------------------------------- MACs
def test_attention_macs_formula_equals_a_hand_count():
    model = tiny_hf_model("llama", num_hidden_layers=2, hidden_size=64, num_attention_heads=4)
    seq, head_dim, heads, layers = 128, 16, 4, 2
    qk = seq * seq * head_dim        # one head's Q K^T: seq x seq dot products of head_dim
    av = seq * seq * head_dim        # one head's A V: seq x head_dim outputs, sums over seq
    assert attention_macs(model.config, seq, 1) == layers * heads * (qk + av) == 4_194_304
    assert attention_macs(model.config, seq, 2) == 2 * 4_194_304
    # SmolLM2-135M: 30 layers, 9 heads of 64 -> 0.566 GMACs at 1 x 128
    from transformers import AutoConfig
    smol = AutoConfig.for_model("llama", num_hidden_layers=30, hidden_size=576, num_attention_heads=9,
                                num_key_value_heads=3)
    assert attention_macs(smol) == 30 * 2 * 9 * 128 * 128 * 64


def _linear_macs(model, tokens):
    return tokens * sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_calflops_counts_linears_only_and_we_add_the_rest():
    model = tiny_hf_model("qwen2")
    ids = torch.randint(0, 256, (1, 32))
    c = count_macs(model, ids)
    assert c["macs_calflops"] == _linear_macs(model, 32)              # calflops sees F.linear, not SDPA
    assert c["macs_attention"] == attention_macs(model.config, 32, 1)
    assert c["macs"] == c["macs_calflops"] + c["macs_attention"] and c["macs_integer"] == 0
    assert c["params_calflops"] == sum(p.numel() for p in model.parameters())


def test_deployed_model_macs():
    adapter = tiny_adapter("llama")
    cfg = load_config(None, ["--quant.method", "RTN", "--quant.weight.bit", "8", "--quant.act.bit", "8",
                             "--quant.act.granularity", "per_token"])
    float_macs = _linear_macs(adapter.model, 32)
    quantize_model(adapter, cfg, None)
    deploy_integer(adapter.model)
    c = count_macs(adapter.model, torch.randint(0, 256, (1, 32)))
    lm_head = 32 * adapter.model.lm_head.in_features * adapter.model.lm_head.out_features
    assert c["macs_calflops"] == lm_head                 # what the paper's calflops saw of quantized models
    assert c["macs_integer"] == float_macs - lm_head     # the integer GEMMs, counted by us
    assert c["macs"] == float_macs + c["macs_attention"]


# -------------------------------------------------------------------------------------- profiling
def _checkpoints(tmp_path):
    adapter = tiny_adapter("qwen2")
    save_baseline_checkpoint(adapter.model, None, tmp_path / "base", torch.bfloat16)
    adapter.model.to(torch.bfloat16)
    cfg = load_config(None, ["--quant.method", "RTN", "--quant.weight.bit", "4", "--quant.act.bit", "8",
                             "--quant.act.granularity", "per_token"])
    quantize_model(adapter, cfg, None)
    save_packed_model(adapter, cfg, tmp_path / "w4a8")
    return tmp_path / "base", tmp_path / "w4a8"


SMALL = dict(warmup=1, runs=2, decode_tokens=2, decode_runs=1, last_logit_runs=1, seq_len=16)


def test_profile_in_a_fresh_process_and_slmq_infer(tmp_path):
    base_dir, packed_dir = _checkpoints(tmp_path)
    assert checkpoint_kind(base_dir) == "hf" and checkpoint_kind(packed_dir) == "packed"
    run = track2_for_run(packed_dir, "unused: baseline_dir is given", baseline_dir=base_dir, **SMALL)
    base, comp = run.baseline, run.compressed
    assert run.input["source"].startswith("random token ids")      # the tiny checkpoints have no tokenizer
    assert run.scores == infer_scores(base, comp)
    for prof in (base, comp):
        assert set(RESULT_KEYS) <= set(prof)
        assert all(prof[k] > 0 for k in RESULT_KEYS)
        assert prof["fresh_process"] and prof["threads"] == 1 and prof["memory_kind"] in ("cpu_peak_rss",
                                                                                             "cpu_rss_sampled")
        assert prof["seq_len"] == 16 and prof["runs"] == 2
        assert prof["macs"] == prof["macs_calflops"] + prof["macs_attention"] + prof["macs_integer"]
    assert comp["deployment"]["fake_layers"] == 0 and comp["deployment"]["int_layers"] == 14
    assert comp["size"] < base["size"] and base["macs"] == comp["macs"]
    scores = infer_scores(base, comp)
    measured = slmq_infer({"peak_mem": base["peak_mem"], "size": base["size"], "tps": base["tps"]},
                          {"peak_mem": comp["peak_mem"], "size": comp["size"], "tps": comp["tps"]})
    assert scores["measured"]["slmq_infer"] == pytest.approx(measured)
    r = scores["paper_compatible"]["ratios"]
    assert r["size"] == pytest.approx(base["params_calflops"] / comp["params_calflops"])
    assert r["macs"] == pytest.approx(base["macs_calflops"] / comp["macs_calflops"])
    assert scores["counted_macs"]["ratios"]["macs"] == pytest.approx(1.0)


def test_profile_with_given_input_ids(tmp_path):
    base_dir, _ = _checkpoints(tmp_path)
    ids = torch.randint(3, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    prof = profile_inference(base_dir, input_ids=ids, input_source="test ids", macs=False, **SMALL)
    assert prof["input"]["source"] == "test ids" and prof["checkpoint_kind"] == "hf" and "macs" not in prof


def test_measure_model_in_process():
    model = tiny_hf_model("llama").to(torch.bfloat16)
    prof = measure_model(model, torch.randint(0, 256, (1, 16)), warmup=1, runs=2, decode_tokens=2, decode_runs=1,
                         last_logit_runs=1)
    assert prof["tps"] > 0 and prof["decode_tps"] > 0 and prof["peak_mem"] > 0 and prof["macs"] > 0


# ------------------------------------------------------------------------------------------ Track 3
def _result(model, method, minutes, mb, bits=8, kind="cuda_max_allocated"):
    quant = {"method": method, "weight": {"bit": bits}, "act": {"bit": 8}}
    return {"schema_version": 1, "status": "complete", "model": {"name": model}, "config": {"quant": quant},
            "profile": None,
            "environment": {"device": "cuda"},
            "quant_cost": {"time_s": minutes * 60, "peak_mem_bytes": int(mb * 2 ** 20), "peak_mem_mb": mb,
                           "memory_kind": kind}}


def test_quant_table_reproduces_the_papers_table_4(tmp_path):
    runs = [_result("SmolLM-135M", "SmoothQuant", 2.02, 828.31), _result("SmolLM-135M", "OmniQuant", 12.63, 2769.60),
            _result("SmolLM-135M", "SpinQuant", 14.17, 1558.56), _result("Qwen", "SmoothQuant", 2.2, 2254.33)]
    path = tmp_path / "spin.json"
    path.write_text(json.dumps(runs[2]))
    table = quant_table([runs[0], runs[1], path, runs[3]])
    smol = {r["method"]: r for r in table if r["model"] == "SmolLM-135M"}
    assert smol["SmoothQuant"]["slmq_quant"] == pytest.approx(549.4, abs=0.15)
    assert smol["SpinQuant"]["time_ratio"] == pytest.approx(1.0) and smol["SpinQuant"]["methods_compared"] == 3
    assert [r["slmq_quant"] for r in table if r["model"] == "Qwen"] == [pytest.approx(100 * math.sqrt(1.0))]
    assert read_quant_cost(path)["bits"] == "W8A8" and bits_label({"weight": {"bit": 4}, "act": None}) == "W4A16"
    assert bits_label({"weight": {"bit": 4, "granularity": "per_group", "group_size": 128}, "act": None}) == "W4A16-g128"
    assert bits_label({"weight": {"bit": 4, "granularity": "per_channel", "group_size": -1}, "act": {"bit": 8},
                       "kvcache": {"bit": 4}}) == "W4A8KV4"
    assert bits_label({"weight": {"bit": 4}, "act": {"bit": 8}, "kvcache": {"bit": 4}}) == "W4A8KV4"


def test_quant_table_refuses_mixed_memory_kinds_and_skips_runs_without_cost():
    runs = [_result("m", "A", 1, 100), _result("m", "B", 2, 200, kind="cpu_peak_rss")]
    with pytest.raises(ValueError, match="different kinds"):
        quant_table(runs)
    fp = {"schema_version": 1, "status": "complete", "model": {"name": "m"}, "config": {"quant": None}}
    assert len(quant_table([runs[0], fp])) == 1
    with pytest.raises(ValueError, match="no quant_cost"):
        read_quant_cost(fp)


def test_quant_table_leaves_uncalibrated_rtn_out_of_the_comparison():
    """RTN only rounds weights: however long that took (1.2 s on the AMX machine, where a 1 s threshold
    once let it in with a score of 68,170), it is reported but neither scored nor allowed to set T_max."""
    smooth, omni = _result("m", "SmoothQuant", 2.0, 800), _result("m", "OmniQuant", 12.0, 2800)
    rtn = _result("m", "RTN", 1.2 / 60, 900)
    rows = {r["method"]: r for r in quant_table([smooth, omni, rtn])}
    assert rows["RTN"]["slmq_quant"] is None and "no calibration" in rows["RTN"]["note"]
    assert rows["RTN"]["time_s"] == pytest.approx(1.2) and rows["RTN"]["peak_mem_mb"] == pytest.approx(900)
    assert rows["OmniQuant"]["slmq_quant"] == pytest.approx(100.0) and rows["OmniQuant"]["methods_compared"] == 2
    expected = 100 * math.sqrt(0.5 * ((12.0 / 2.0) ** 2 + (2800 / 800) ** 2))
    assert rows["SmoothQuant"]["slmq_quant"] == pytest.approx(expected)
    everything = {r["method"]: r for r in quant_table([smooth, omni, rtn], score_uncalibrated=True)}
    assert everything["RTN"]["slmq_quant"] > 1000 and everything["RTN"]["methods_compared"] == 3


def test_quant_table_takes_calibration_and_label_from_the_record_not_the_algorithms(tmp_path):
    """Whether a method calibrates is what its run recorded (``method.calibrated``); older records without
    ``method``: RTN is the one uncalibrated method. Rows are named by the recorded label, so OmniQuant and
    OmniQuant+KB are two methods of one group."""
    omni, kb, rtn = (_result("m", "OmniQuant", 12.0, 2800), _result("m", "OmniQuant", 13.0, 2900),
                     _result("m", "RTN", 0.02, 900))
    omni["method"] = {"name": "OmniQuant", "label": "OmniQuant", "calibrated": True}
    kb["method"] = {"name": "OmniQuant", "label": "OmniQuant+KB", "calibrated": True}
    novel = _result("m", "Rounder", 0.5, 800)
    novel["method"] = {"name": "Rounder", "label": "Rounder", "calibrated": False}
    from llmc.results import RunResult
    rows = {r["method"]: r for r in quant_table([RunResult.from_dict(omni), kb, rtn, novel])}
    assert set(rows) == {"OmniQuant", "OmniQuant+KB", "RTN", "Rounder"}
    assert rows["RTN"]["slmq_quant"] is None and rows["Rounder"]["slmq_quant"] is None
    assert rows["OmniQuant+KB"]["slmq_quant"] == pytest.approx(100.0) and rows["OmniQuant"]["methods_compared"] == 2
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "omni.json").write_text(json.dumps(omni))
    (tmp_path / "runs" / "sweep.json").write_text(json.dumps({"runs": []}))     # not a record: skipped
    assert [r["method"] for r in quant_table([tmp_path / "runs"])] == ["OmniQuant"]


def test_reports_and_quant_cost_do_not_import_the_algorithms():
    import subprocess
    import sys
    # the registry itself (the bottom layer, names only) may be imported; no algorithm, method spec or torch
    code = ("import sys, llmc_slm.reports.tables, llmc_slm.tracks.quant_cost; "
            "bad = [m for m in sys.modules if m.startswith(('llmc.algos', 'llmc.methods', 'torch'))]; "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-500:]


def test_child_launcher_failure_is_one_line():
    from llmc_slm.tracks.child import ChildError, run_module
    with pytest.raises(ChildError) as e:
        run_module("llmc_slm.tracks.no_such_module", [], threads=1, what="test child")
    assert str(e.value).startswith("test child failed (exit 1): ") and "\n" not in str(e.value)
    assert "No module named" in str(e.value) and "no_such_module" in e.value.stderr


# ------------------------------------------------------------------------------ interleaved timing
def test_speed_ab_summary_takes_per_round_ratios():
    from llmc_slm.tracks.speed_ab import summarize
    # the machine slows down 2x in rounds 3-4: per-round ratios stay 2.0 for "fast", the pooled times do not
    times = {"base": {"prefill": [1.0, 1.0, 2.0, 2.0, 1.0]}, "fast": {"prefill": [0.5, 0.5, 1.0, 1.0, 0.5]},
             "odd": {"prefill": [1.0, 0.5, 4.0, 1.0, 2.0]}}
    s = summarize(times, "base", tokens=128, passes=2)
    assert s["base"]["prefill"]["speedup_median"] == 1.0
    fast = s["fast"]["prefill"]
    assert fast["speedup_median"] == fast["speedup_min"] == fast["speedup_max"] == 2.0 and fast["rounds"] == 5
    assert fast["tps_median"] == pytest.approx(128 * 2 / 0.5)
    odd = s["odd"]["prefill"]          # ratios 1, 2, 0.5, 2, 0.5
    assert odd["speedup_median"] == 1.0 and odd["speedup_min"] == 0.5 and odd["speedup_max"] == 2.0
    assert odd["speedup_q1"] == 0.5 and odd["speedup_q3"] == 2.0


def test_speed_ab_in_a_fresh_process(tmp_path):
    from llmc.quant.prepacked_linear import prepack_available
    from llmc_slm.tracks.speed_ab import compare_speed
    base_dir, packed_dir = _checkpoints(tmp_path)
    ids = torch.randint(3, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    prepack = {"base_packed": base_dir} if prepack_available() else {}
    res = compare_speed({"base": base_dir, "w4a8": packed_dir}, prepack=prepack, rounds=3, passes=1, warmup=1,
                        seq_len=16, input_ids=ids, input_source="test ids")
    assert res["baseline"] == "base" and res["input"] == "test ids" and res["tokens_per_pass"] == 16
    assert set(res["summary"]) == {"base", "w4a8", *prepack}
    for name, modes in res["times"].items():
        assert set(modes) == {"prefill", "prefill_last_logit"}
        assert all(len(v) == 3 and all(t > 0 for t in v) for v in modes.values())
    assert res["models"]["w4a8"]["deployment"]["int_layers"] == 14 and not res["models"]["w4a8"]["prepacked"]
    if prepack:
        assert res["models"]["base_packed"]["prepacked"] and res["models"]["base_packed"]["prepacked_float_linears"] > 0
    ratios = [b / t for b, t in zip(res["times"]["base"]["prefill"], res["times"]["w4a8"]["prefill"])]
    assert res["summary"]["w4a8"]["prefill"]["speedup_median"] == pytest.approx(sorted(ratios)[1])
