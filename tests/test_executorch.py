"""The ExecuTorch exporter (``llmc.export.executorch``) and its Track 2 child
(``llmc_slm.tracks.runtimes.executorch``) on tiny random Llama models.

Tolerances. The program computes what the fake-quant model computes except for the activations: XNNPACK
quantizes each token asymmetrically (min/max range, zero point) while the protocol here is symmetric
(absmax), so the two differ by about one int8 activation rounding per linear (a step of at most
2 max|x| / 255 per element), plus, for asymmetric weights, the zero-point term computed on the float input.
The bounds (8% of the largest logit, 80% top-1 agreement on 24 positions of a 2-layer model) are set
well above that; the program against the same graph run eagerly (torchao's asymmetric per-token rounding,
XNNPACK's own grid) differs only by float rounding and rare rounding ties (bound 1e-3; 1e-2 for
per-group int4, whose scales XNNPACK rounds to bfloat16). Single linears
lowered alone measured 1.7e-7 (8da8w), 1.4e-7 (8da4w per channel) and 2.1e-3 (8da4w per group: XNNPACK
stores blockwise scales in bfloat16) against eager; the whole tiny float model 3.2e-7.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("executorch.runtime", reason="executorch is not installed (pip install -e '.[dev]')")

from conftest import tiny_adapter  # noqa: E402
from llmc.config import load_config  # noqa: E402
from llmc.data.calib import CalibData  # noqa: E402
from llmc.errors import UserError  # noqa: E402
from llmc.export import executorch as et  # noqa: E402
from llmc.pipeline import check_writable, quantize_model  # noqa: E402
from llmc.quant.transforms import OnlineHadamard  # noqa: E402

MAX_SEQ = 32


def _quantized(*overrides, hadamard=False):
    adapter = tiny_adapter("llama")
    cfg = load_config(None, ["--quant.method", "RTN", "--quant.weight.granularity", "per_channel",
                             "--quant.act.bit", "8", "--quant.act.granularity", "per_token",
                             "--calib.n_samples", "4", "--calib.seq_len", "16", *overrides])
    calib = CalibData(torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0)), {})
    quantize_model(adapter, cfg, calib)
    if hadamard:   # an online transform as SpinQuant's R4 leaves it (the weight is not refolded: any H will do)
        adapter.blocks[0].mlp.down_proj.input_transform = OnlineHadamard(128)
    return adapter, cfg


CASES = {
    "8da8w": ["--quant.weight.bit", "8"],
    "8da4w": ["--quant.weight.bit", "4"],
    "8da4w-asym-group32": ["--quant.weight.bit", "4", "--quant.weight.symmetric", "false",
                           "--quant.weight.granularity", "per_group", "--quant.weight.group_size", "32",
                           "--quant.act.symmetric", "false"],
    "8da4w-asym-hadamard": ["--quant.weight.bit", "4", "--quant.weight.symmetric", "false",
                            "--quant.act.symmetric", "false"],
}


@pytest.fixture(scope="module", params=list(CASES))
def lowered(request):
    adapter, cfg = _quantized(*CASES[request.param], hadamard="hadamard" in request.param)
    model = et.program_model(adapter.model)
    pte = et.lower(model, MAX_SEQ)
    return request.param, adapter, model, pte


def test_program_holds_our_integer_weights(lowered):
    from llmc.quant.fake_linear import FakeQuantLinear
    _, adapter, model, _ = lowered
    fq = {n: m for n, m in adapter.model.named_modules() if isinstance(m, FakeQuantLinear)}
    xl = {n: m for n, m in model.named_modules() if isinstance(m, et.XnnpackLinear)}
    assert set(fq) == set(xl) and len(xl) == 14
    for name, layer in xl.items():   # scale * codes (- the folded zero) is the fake-quant weight
        torch.testing.assert_close(layer.weight(), fq[name].weight.float(), atol=1e-6, rtol=1e-5)


def test_program_logits_match_the_fake_quant_model(lowered):
    name, adapter, model, pte = lowered
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = adapter.model(input_ids=ids).logits
        eager = model(input_ids=ids).logits
    got = et.run_program(pte, ids)
    scale = ref.abs().max()
    same_graph = 1e-2 if "group" in name else 1e-3    # blockwise int4 scales are bfloat16 in XNNPACK
    assert ((got - eager).abs().max() / scale).item() < same_graph, name    # the same graph, run by XNNPACK
    assert ((got - ref).abs().max() / scale).item() < 0.08, name            # asymmetric vs symmetric rounding
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean().item() >= 0.8, name


def test_the_kv_cache_decodes_like_a_full_pass(lowered):
    _, _, _, pte = lowered
    from executorch.runtime import Runtime
    method = Runtime.get().load_program(pte).load_method("forward")
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(2))
    full = method.execute((ids, torch.arange(12)))[0]
    method.execute((ids[:, :8], torch.arange(8)))
    steps = [method.execute((ids[:, i:i + 1], torch.tensor([i])))[0] for i in range(8, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 8:], atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("overrides, reason", [
    (["--quant.act", "null"], "weight-only"),
    (["--quant.act.static", "true", "--quant.act.granularity", "per_tensor", "--calib.n_samples", "4",
      "--calib.seq_len", "16"], "static activation ranges"),
    (["--quant.act.bit", "4"], "int8 only"),
    (["--quant.weight.bit", "3"], "int8 or int4"),
    (["--quant.weight.bit", "8", "--quant.weight.granularity", "per_group", "--quant.weight.group_size", "32"],
     "int4 only"),
    (["--quant.weight.granularity", "per_group", "--quant.weight.group_size", "48"], "multiple of 32"),
    (["--quant.kvcache.bit", "8"], "KV cache"),
])
def test_what_xnnpack_cannot_run_is_refused_in_one_line_before_the_model_loads(overrides, reason, tmp_path):
    cfg = load_config(None, ["--quant.method", "RTN", "--quant.weight.bit", "4", "--quant.act.bit", "8",
                             "--quant.act.granularity", "per_token", "--save.formats", "[executorch]",
                             "--save.save_path", str(tmp_path), *overrides])
    with pytest.raises(UserError) as e:
        check_writable(cfg)      # the run's check before any work (llmc.pipeline)
    msg = str(e.value)
    assert "\n" not in msg and reason in msg and msg.startswith("save.formats (executorch)")


def test_an_unknown_online_transform_is_refused():
    with pytest.raises(UserError, match="only the Hadamard"):
        et.exportable_transform(torch.nn.Identity())


def test_exportable_hadamard_is_the_online_hadamard():
    from llmc.quant.hadamard import apply_hadamard
    x = torch.randn(3, 5, 1536)
    torch.testing.assert_close(et.ExportableHadamard(1536)(x), apply_hadamard(x), atol=1e-5, rtol=1e-5)


def test_runtime_child_returns_every_contract_key(tmp_path):
    from conftest import tiny_hf_model
    from llmc_slm.tracks.runtimes import CONTRACT_KEYS, measure_in_child
    from llmc_slm.tracks.runtimes import executorch as rt
    model = tiny_hf_model("llama")
    out = et.write_program(model, None, tmp_path / "fp32", max_seq_len=MAX_SEQ, info={"quant": None})
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 256, (1, 16), generator=g)
    windows = torch.randint(0, 256, (2, MAX_SEQ), generator=g)
    result = measure_in_child("executorch", out, threads=1, prefill_ids=ids, decode_tokens=4,
                              ppl_windows=windows.tolist(), options={"runs": 3, "warmup": 1, "decode_runs": 1},
                              timeout=600)
    assert "skipped" not in result, result.get("skipped")
    for key in CONTRACT_KEYS:
        assert key in result, key
    assert result["runtime"] == "executorch" and result["threads"] == 1 and result["ppl_windows"] == 2
    assert result["stored_bytes"] == (out / "model.pte").stat().st_size
    assert result["peak_above_idle_bytes"] > 0 and result["prefill_tokens_per_s"] > 0
    assert result["peak_process_bytes"] >= result["peak_rss_bytes"]      # loading is outside the inference peak
    from llmc.eval.perplexity import perplexity
    expected = perplexity(model, windows, progress=False)["ppl"]
    assert abs(result["wikitext2_ppl"] - expected) / expected < 1e-4
    # a measurement longer than the program's cache is refused before loading, naming the limit
    with pytest.raises(ValueError, match=f"max_seq_len is {MAX_SEQ}"):
        rt.measure(out, threads=1, prefill_ids=ids, decode_tokens=MAX_SEQ, runs=1, warmup=0, decode_runs=1)


def test_a_packed_spinquant_model_with_a_rotated_tied_head_lowers_to_logits(tmp_path):
    """SmolLM2 ties its embeddings; SpinQuant's R1 unties them (``lm_head = E M``) and the packed checkpoint
    re-ties them with ``h -> h M^T`` before the head. The program folds ``M`` into the head and returns
    logits that match the packed checkpoint's fake-quant model (with the hook, executorch 1.5.1 returned
    the hidden state: ``[1, T, hidden]``)."""
    from test_spinquant import SHAPE, spin_cfg
    from llmc.quant.packed import load_packed_model, save_packed_model
    adapter = tiny_adapter("llama", tie_word_embeddings=True, **SHAPE)
    with torch.no_grad():   # a non-trivial final norm, so that M is not the identity
        adapter.model.model.norm.weight.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(7))
    cfg = spin_cfg("--quant.special.learn_rotations", "false", "--quant.special.weight_algo", "rtn",
                   "--quant.weight.bit", "4", "--quant.act.granularity", "per_token")
    from llmc.pipeline import quantize_model
    algo = quantize_model(adapter, cfg, None).algorithm
    save_packed_model(adapter, algo.cfg, tmp_path / "p")
    assert hasattr(load_packed_model(tmp_path / "p").lm_head, "slmquant_tied_input_transform")
    out = et.export_packed(tmp_path / "p", tmp_path / "pte", max_seq_len=MAX_SEQ)
    check = __import__("json").loads((out / et.INFO).read_text())["check_vs_fake_quant"]
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(5))
    got = et.run_program(out / et.PROGRAM, ids)
    with torch.no_grad():
        ref = load_packed_model(tmp_path / "p").float()(input_ids=ids).logits
    assert got.shape == ref.shape == (1, 24, 256)
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 0.08
    assert check["top1_agreement"] >= 0.8 and check["max_abs_diff_rel"] < 0.08
