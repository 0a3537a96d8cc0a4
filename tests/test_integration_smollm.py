"""The embedded SmolLM2-135M-Instruct end to end on real WikiText-2 text: numbers must be sane."""

import pytest
import torch

from llmc.data.sources import find_dataset
from llmc.data.wikitext2 import evaluation_text
from llmc.eval.perplexity import perplexity, window_ids
from llmc.models.loading import load_model
from llmc.pipeline import quantize_model, quantize_stages


@pytest.fixture(scope="module")
def smollm2(smollm2_source):
    return load_model(smollm2_source, dtype=torch.bfloat16)


def test_architecture_read_from_the_model(smollm2):
    facts = smollm2.arch_facts()
    assert (facts["layers"], facts["hidden_size"], facts["heads"], facts["kv_heads"]) == (30, 576, 9, 3)
    assert facts["tied_embeddings"] and facts["rope_theta"] == 100000.0
    assert smollm2.source.sha256 == smollm2.source.pinned_sha256


def test_wikitext2_perplexity_on_first_windows_is_sane(smollm2):
    """Full-split value (148 windows of 2048) is 21.6; the first 4 windows give a value near it."""
    loc = find_dataset("wikitext2")
    ids = smollm2.tokenizer(evaluation_text(loc), return_tensors="pt").input_ids[0]
    windows = window_ids(ids, 2048)
    assert windows.shape[0] == 148  # the split tokenizes to 148 full windows (protocol)
    result = perplexity(smollm2.model, windows[:4], progress=False)
    assert 12.0 < result["ppl"] < 35.0, result


@pytest.fixture(scope="module")
def smollm2_fp32(smollm2_source):
    return load_model(smollm2_source, dtype=torch.float32)


def test_smoothquant_smoothing_is_an_equivalence_on_the_real_model(smollm2_fp32):
    """Issue 3: transformed == pretrain, max|delta logits| / max|logits| <= 1e-5 in float32."""
    import copy
    from llmc.config import load_config
    from llmc.data.calib import make_calibration, resolve_calibration_text
    from llmc.registry import ALGO_REGISTRY
    adapter = copy.copy(smollm2_fp32)
    adapter.model = copy.deepcopy(smollm2_fp32.model)
    cfg = load_config(None, ["--quant.method", "SmoothQuant", "--quant.weight.bit", "8", "--quant.act.bit", "8",
                             "--quant.act.granularity", "per_token", "--calib.n_samples", "4",
                             "--calib.seq_len", "128", "--quant.special.smooth_vo", "true",
                             "--quant.special.smooth_down", "true"])
    text, info = resolve_calibration_text(cfg.calib)
    assert info["split"] != "test"
    calib = make_calibration(adapter.tokenizer, text, info, 4, 128, "wikitext2_gptq", 0)
    ids = adapter.tokenizer(evaluation_text(find_dataset("wikitext2"))[:3000], return_tensors="pt").input_ids[:, :256]
    with torch.no_grad():
        before = adapter.model(input_ids=ids).logits
    ALGO_REGISTRY["SmoothQuant"](adapter, cfg).quantize(calib)
    with torch.no_grad():
        after = adapter.model(input_ids=ids).logits
    rel = ((after - before).abs().max() / before.abs().max()).item()
    print(f"SmoothQuant equivalence on SmolLM2 (float32): {rel:.2e}")
    assert rel <= 1e-5


@pytest.mark.parametrize("wbit", [8, 4])
def test_deployed_integer_model_matches_fake_quant_perplexity(smollm2, wbit, tmp_path):
    """Issue 7: the packed checkpoint, deployed with integer kernels (int8 GEMMs, fused per-token kernels,
    int8 embeddings), gives the fake-quant model's WikiText-2 perplexity within 0.5% at W8A8 and 1% at W4A8
    (first 16 windows of 512 tokens; the 2048-token windows of the protocol took half an hour per bit width on
    a CPU without AMX, where bfloat16 is slow). Measured: on 2026-11-30 (no AMX) W8A8 +0.14%, W4A8 -0.28%; on
    2026-12-01 on an AMX machine W4A8 -0.81% with one thread (80.485 -> 79.830) and within 0.5% with two:
    bfloat16 rounds differently with the kernel and thread count, and with 4-bit weights single windows move
    by more than 1% (below), so 16 windows bound W4A8 at 1%."""
    import copy
    from llmc.config import load_config
    from llmc.deploy import deployment_summary, load_deployed
    from llmc.quant.packed import save_packed_model
    from llmc.registry import ALGO_REGISTRY
    adapter = copy.copy(smollm2)
    adapter.model = copy.deepcopy(smollm2.model)
    cfg = load_config(None, ["--quant.method", "RTN", "--quant.weight.bit", str(wbit), "--quant.weight.symmetric",
                             "true", "--quant.weight.granularity", "per_channel", "--quant.act.bit", "8",
                             "--quant.act.symmetric", "true", "--quant.act.granularity", "per_token"])
    quantize_model(adapter, cfg, None)
    ids = smollm2.tokenizer(evaluation_text(find_dataset("wikitext2")), return_tensors="pt").input_ids[0]
    # 16 windows: per-window differences are noisy with 4-bit weights (2048-token windows, W4A8: first 2
    # -1.3%, first 8 -0.56%, 16 -0.13%, 40 -0.04%; the int8 embedding rows move single windows most)
    windows = window_ids(ids, 512)[:16]
    fake = perplexity(adapter.model, windows, progress=False)["ppl"]
    save_packed_model(adapter, cfg, tmp_path / "packed")
    deployed = load_deployed(tmp_path / "packed")
    summary = deployment_summary(deployed)
    assert summary["fake_layers"] == 0 and summary["int_layers"] == 30 * 7
    real = perplexity(deployed, windows, progress=False)["ppl"]
    assert abs(real - fake) / fake < (0.005 if wbit == 8 else 0.01), (wbit, fake, real)
    assert real != fake          # really another computation (integer GEMMs, int8 embeddings), not the same model
