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
    """The embedded SmolLM2 in the dtype the engine's ``auto`` picks here: bfloat16 on CPUs with AMX or
    AVX512-BF16, float32 elsewhere, where bfloat16 runs torch's reference kernel (about 40x slower on an
    AVX2-only EPYC, which made these tests take most of an hour). The tests below hold in either dtype."""
    from llmc.utils import pick_dtype
    return load_model(smollm2_source, dtype=pick_dtype("auto", torch.device("cpu")))


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


# --------------------------------------------------------------------- the deployed integer model (issue 7)
# Two questions, kept apart. (1) Do the integer kernels compute what the fake-quant layers compute? Asked
# layer by layer, each layer fed the fake model's own input: in float32 every one of the 210 layers agrees
# within 1e-6 of its output's range (8e-7 measured at W8A8 and W4A8). (2) Does the deployed checkpoint, run end to
# end, give the fake model's perplexity? Here the answer can only be statistical: with activations quantized per
# token, any float difference upstream (another summation order, an int8 embedding row) flips a few rounding
# decisions, and those flips change every later layer's codes. In float32 on 16 windows of 512 tokens, int8
# embedding rows move the float model's perplexity by -0.003% +- 0.05% (KLD 0.001) but the W8A8 fake model's by
# -0.52%, with per-window NLL differences of +-9 nats: a standard error of ~0.45% for the mean. The former bound
# (0.5% at W8A8) was one standard error wide; it passed in bfloat16 and failed in float32 (-0.55%) by chance
# (2026-12-02, AVX2 VM). The test now gives the fake model the deployed model's int8 embedding rows (so only the
# kernels differ) and bounds the paired mean by its own SE.

PPL_WINDOWS, PPL_SEQ_LEN = 16, 512


@pytest.fixture(scope="module")
def wikitext_windows(smollm2):
    ids = smollm2.tokenizer(evaluation_text(find_dataset("wikitext2")), return_tensors="pt").input_ids[0]
    return window_ids(ids, PPL_SEQ_LEN)[:PPL_WINDOWS]


@pytest.fixture(scope="module", params=[8, 4], ids=lambda b: f"w{b}a8")
def fake_and_deployed(smollm2, request, tmp_path_factory):
    """RTN W{8,4}A8 (symmetric, weights per channel, activations per token) of the embedded SmolLM2 as
    the fake-quant adapter, and the same model packed and loaded back with the integer kernels."""
    import copy
    from llmc.config import load_config
    from llmc.deploy import load_deployed
    from llmc.quant.packed import save_packed_model
    adapter = copy.copy(smollm2)
    adapter.model = copy.deepcopy(smollm2.model)
    cfg = load_config(None, ["--quant.method", "RTN", "--quant.weight.bit", str(request.param),
                             "--quant.weight.symmetric", "true", "--quant.weight.granularity", "per_channel",
                             "--quant.act.bit", "8", "--quant.act.symmetric", "true",
                             "--quant.act.granularity", "per_token"])
    quantize_model(adapter, cfg, None)
    packed = tmp_path_factory.mktemp(f"packed_w{request.param}") / "packed"
    save_packed_model(adapter, cfg, packed)
    return adapter, load_deployed(packed)


def test_every_integer_layer_computes_its_fake_quant_layer_on_real_activations(fake_and_deployed, wikitext_windows):
    """Each deployed ``IntLinear`` (int8 GEMM, exact integer accumulation, one rescale) fed the input its
    fake-quant layer sees in the real model gives that layer's output up to the dtype's rounding: the
    activation codes are the same and the integer products exact (``llmc.quant.int_linear``'s claim,
    checked on SmolLM2's real activations, massive outliers included). Float32: 8e-7 of the output's range
    measured; bfloat16 (the fake layer rounds ``s * q`` and its result to bfloat16): 7.7e-3 measured at W8A8,
    2e-2 allowed."""
    from llmc.deploy import deployment_summary
    from llmc.quant.fake_linear import FakeQuantLinear
    adapter, deployed = fake_and_deployed
    summary = deployment_summary(deployed)
    assert summary["fake_layers"] == 0 and summary["int_layers"] == 30 * 7
    integer_layers = dict(deployed.named_modules())
    errors, handles = {}, []

    def compare(name):
        def hook(module, args, out):
            with torch.no_grad():
                y = integer_layers[name](args[0]).float()
            errors[name] = ((y - out.float()).abs().max() / out.float().abs().max()).item()
        return hook

    for name, module in adapter.model.named_modules():
        if isinstance(module, FakeQuantLinear):
            assert type(integer_layers[name]).__name__ == "IntLinear", name
            handles.append(module.register_forward_hook(compare(name)))
    try:
        with torch.no_grad():
            adapter.model(input_ids=wikitext_windows[:1])
    finally:
        for h in handles:
            h.remove()
    worst = max(errors, key=errors.get)
    print(f"worst layer {worst}: {errors[worst]:.2e} of its output range ({len(errors)} layers)")
    assert len(errors) == 30 * 7
    assert errors[worst] <= (1e-5 if adapter.model.dtype == torch.float32 else 2e-2), (worst, errors[worst])


def test_deployed_integer_model_matches_fake_quant_perplexity(fake_and_deployed, wikitext_windows):
    """The packed checkpoint deployed with integer kernels (int8 GEMMs, fused per-token kernels, int8
    embedding rows) against the fake-quant model given the same int8 embedding rows, on the same 16
    windows: the paired mean of the per-token log-perplexity difference lies within 4 of its standard
    errors of zero (a bias would show as a mean many SEs away), and the SE stays below 0.01 nats per token
    (so a 4% shift could not pass). Measured on 16 x 512 tokens, delta ln ppl +- SE: float32 W8A8
    -0.0004 +- 0.0026, W4A8 -0.0027 +- 0.0034; bfloat16 W8A8 +0.0074 +- 0.0045, W4A8 -0.0005 +- 0.0032.
    The kernels' precision is the layer test's job; this one checks the checkpoint end to end (every
    layer deployed, embeddings and the tied head)."""
    import copy
    from llmc_slm.paired import window_log_ppl_delta
    adapter, deployed = fake_and_deployed
    fake_model = copy.deepcopy(adapter.model)
    with torch.no_grad():
        for get in ("get_input_embeddings", "get_output_embeddings"):
            getattr(fake_model, get)().weight.copy_(getattr(deployed, get)().weight)
    fake = perplexity(fake_model, wikitext_windows, progress=False)
    real = perplexity(deployed, wikitext_windows, progress=False)
    tokens = fake["per_item"]["window_tokens"]
    d = window_log_ppl_delta(fake["per_item"]["window_nll"], real["per_item"]["window_nll"], tokens)
    print(f"fake {fake['ppl']:.3f} deployed {real['ppl']:.3f}: delta ln ppl {d.delta:+.4f} +- {d.stderr:.4f}")
    assert real["ppl"] != fake["ppl"]            # really another computation, not the same model
    assert d.stderr < 0.01, d
    assert abs(d.delta) <= 4 * d.stderr, d


def test_int8_embedding_rows_barely_move_the_float_model(smollm2_fp32, wikitext_windows):
    """The packed checkpoint's int8 embedding rows (symmetric, one scale per row, ``quantize_rows``) on
    their own, in the float32 model (no activation rounding, no bfloat16 compute noise to amplify them),
    scored against that model on 4 WikiText-2 windows of 512 tokens. Measured: KLD 0.0011 +- 0.0001 nats
    (0.0010 on 16 windows), a tenth of what RTN W8A8 costs this model in float32 (0.028,
    ``results/reference/issue21_gemma/dtype_control``); the paired log-perplexity change -0.0001 +- 0.0010,
    no change at all within its error. (A bare bound on the perplexity ratio, as before, was decided by
    the windows' noise: one 512-token window moves by +0.22%.) In bfloat16 the same rows give KLD 0.0028,
    most of it the bfloat16 rounding of the perturbed activations. Issue 21 item 4: for Gemma-3 these rows
    are most of the stored bytes."""
    import copy
    from llmc.quant.packed import dequantize_rows, quantize_rows
    model = copy.deepcopy(smollm2_fp32.model)
    embed = model.get_input_embeddings()
    assert model.get_output_embeddings().weight is embed.weight         # tied: one table, both ends
    with torch.no_grad():
        embed.weight.copy_(dequantize_rows(*quantize_rows(embed.weight), embed.weight.dtype))
    vs = perplexity(model, wikitext_windows[:4], progress=False, reference=smollm2_fp32.model)["vs_float"]
    print(f"int8 embedding rows: KLD {vs['kld']:.5f} +- {vs['kld_stderr']:.5f}, delta ln ppl "
          f"{vs['delta_log_ppl']:+.5f} +- {vs['delta_log_ppl_stderr']:.5f}, top-1 {vs['top1_agreement']:.4f}")
    assert 0 < vs["kld"] < 0.003                    # another model, but a tenth of W8A8's 0.028 at most
    assert vs["delta_log_ppl_stderr"] < 0.002
    assert abs(vs["delta_log_ppl"]) <= 4 * vs["delta_log_ppl_stderr"]
