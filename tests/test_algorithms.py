"""The blockwise pipeline and RTN / SmoothQuant / GPTQ on tiny random models of every family."""

import pytest
import torch

from conftest import calib_ids, logits, rel_diff, tiny_adapter
from llmc.algos.gptq import gptq_quantize
from llmc.config import load_config
from llmc.quant.fake_linear import FakeQuantLinear
from llmc.quant.quantizer import Quantizer
from llmc.registry import ALGO_REGISTRY, METHODS
from llmc.pipeline import quantize_model, quantize_stages


def make_cfg(method, *extra):
    return load_config(None, ["--quant.method", method, "--quant.weight.bit", "8",
                              "--quant.weight.granularity", "per_channel", "--quant.act.bit", "8",
                              "--quant.act.granularity", "per_token", "--calib.n_samples", "4",
                              "--calib.seq_len", "16", "--calib.bs", "2", *extra])


@pytest.mark.parametrize("extra", [[], ["--quant.special.smooth_vo", "true", "--quant.special.smooth_down", "true"]])
def test_smoothquant_transform_is_an_equivalence(any_family, extra):
    adapter = tiny_adapter(any_family)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(5))
    before = logits(adapter, ids)
    norms_before = adapter.blocks[0].input_layernorm.weight.clone()
    algo = ALGO_REGISTRY["SmoothQuant"](adapter, make_cfg("SmoothQuant", *extra))
    algo.quantize(calib_ids())
    assert not torch.allclose(norms_before, adapter.blocks[0].input_layernorm.weight)  # something moved
    assert rel_diff(before, logits(adapter, ids)) <= 1e-5


def test_smoothquant_scales_follow_eq4():
    from llmc.algos.smoothquant import smoothing_scales
    act = torch.tensor([4.0, 1.0, 0.25])
    w = [torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[-0.5, 1.0, 4.0]])]
    s = smoothing_scales(act, w, alpha=0.5)
    expected = torch.tensor([4.0 ** 0.5 / 1.0 ** 0.5, 1.0 / 2.0 ** 0.5, 0.25 ** 0.5 / 4.0 ** 0.5])
    torch.testing.assert_close(s, expected)


def test_smoothquant_reduces_activation_outliers():
    """After smoothing, the per-channel activation maxima of q/k/v's input are flatter."""
    adapter = tiny_adapter("llama")
    with torch.no_grad():  # plant an outlier channel in the first norm
        adapter.blocks[0].input_layernorm.weight[3] = 40.0
    seen = {}
    h = adapter.blocks[0].self_attn.q_proj.register_forward_pre_hook(
        lambda m, a: seen.__setitem__("x", a[0].abs().amax(dim=(0, 1))))
    ids = calib_ids().input_ids
    logits(adapter, ids)
    before = seen["x"].max() / seen["x"].median()
    ALGO_REGISTRY["SmoothQuant"](adapter, make_cfg("SmoothQuant")).quantize(calib_ids())
    logits(adapter, ids)
    h.remove()
    after = seen["x"].max() / seen["x"].median()
    assert after < before / 3


def correlated_inputs(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d // 4, generator=g)
    mix = torch.randn(d // 4, d, generator=g)
    return base @ mix + 0.1 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("granularity, extra", [("per_channel", {}), ("per_group", {"group_size": 16}),
                                                ("per_group", {"group_size": 16, "act_order": True})])
def test_gptq_beats_rtn_on_the_layer_objective(granularity, extra):
    torch.manual_seed(0)
    x = correlated_inputs(512, 64)
    w = torch.randn(32, 64)
    q = Quantizer(bit=3, symmetric=False, granularity=granularity, group_size=extra.get("group_size", -1))
    H = 2 * x.t() @ x / x.shape[0]
    q_gptq, scale, zero, _ = gptq_quantize(w, H, q, act_order=extra.get("act_order", False), blocksize=16)
    q_rtn = q.fake_quant(w)
    err_gptq = (x @ (w - q_gptq).t()).pow(2).sum()
    err_rtn = (x @ (w - q_rtn).t()).pow(2).sum()
    assert err_gptq < 0.7 * err_rtn
    # GPTQ's weights lie on the grid its params define: re-quantizing them changes nothing
    torch.testing.assert_close(q.fake_quant(q_gptq, scale, zero), q_gptq, atol=1e-5, rtol=0)
    if granularity == "per_group":
        assert scale.shape == (32, 4, 1)


def test_gptq_weights_survive_fake_quant_deployment():
    adapter = tiny_adapter("qwen2")
    algo = ALGO_REGISTRY["GPTQ"](adapter, make_cfg("GPTQ", "--quant.weight.bit", "4",
                                                   "--quant.weight.symmetric", "false"))
    algo.quantize(calib_ids())
    w = adapter.blocks[1].mlp.down_proj.weight.clone()
    algo.deploy_fake()
    deployed = adapter.blocks[1].mlp.down_proj
    assert isinstance(deployed, FakeQuantLinear)
    torch.testing.assert_close(deployed.weight, w, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["RTN", "SmoothQuant", "GPTQ"])
def test_pipeline_end_to_end(any_family, method):
    adapter = tiny_adapter(any_family)
    ids = calib_ids(seed=3).input_ids
    before = logits(adapter, ids)
    evaluated = []
    quantize_stages(adapter, make_cfg(method, "--quant.weight.bit", "4"), calib_ids(), evaluate=evaluated.append)
    assert evaluated == ["transformed", "fake_quant"]
    linears = [m for m in adapter.model.modules() if isinstance(m, FakeQuantLinear)]
    assert len(linears) == 7 * len(adapter.blocks)          # every block linear, not lm_head
    after = logits(adapter, ids)
    assert torch.isfinite(after).all()
    assert 0 < rel_diff(before, after) < 0.5


def test_quant_out_feeds_quantized_outputs_forward():
    """With quant_out the next block sees the quantized block's outputs: GPTQ's Hessians change."""
    losses = {}
    for flag in ("false", "true"):
        adapter = tiny_adapter("llama")
        algo = ALGO_REGISTRY["GPTQ"](adapter, make_cfg("GPTQ", "--quant.weight.bit", "3", "--quant.quant_out", flag))
        algo.quantize(calib_ids())
        losses[flag] = algo.block_log[1]["gptq_loss.self_attn.q_proj"]
    assert losses["false"] != losses["true"]


def test_static_activation_ranges_are_calibrated():
    adapter = tiny_adapter("llama")
    cfg = make_cfg("RTN", "--quant.act.granularity", "per_tensor", "--quant.act.static", "true")
    quantize_model(adapter, cfg, calib_ids())
    q = adapter.blocks[0].self_attn.q_proj.act_quantizer
    assert q.frozen and q.static_scale.numel() == 1 and q.static_scale.item() > 0


def test_block_loop_keeps_one_block_of_activations():
    """Per block, only its input and output batches are alive: the count does not grow with depth."""
    from llmc.algos import base
    adapter = tiny_adapter("llama", num_hidden_layers=4)
    algo = ALGO_REGISTRY["GPTQ"](adapter, make_cfg("GPTQ"))
    live = []
    original = base.run_block

    def spy(block, inputs):
        out = original(block, inputs)
        live.append(len(inputs.hidden) + len(out))
        return out
    base.run_block = spy
    try:
        algo.quantize(calib_ids(n=4))
    finally:
        base.run_block = original
    # GPTQ gathers inputs once per subset (4) and computes the outputs once, per block; bs 2 -> 2 batches
    assert len(live) == 4 * 5 and set(live) == {4}


def test_rtn_runs_without_calibration():
    adapter = tiny_adapter("llama")
    cfg = make_cfg("RTN")
    assert not METHODS["RTN"].calibrates(cfg)
    quantize_model(adapter, cfg, None)
    assert isinstance(adapter.blocks[0].mlp.down_proj, FakeQuantLinear)


def test_kv_cache_quantization_hook():
    """Off by default; with quant.kvcache the keys/values are fake-quantized inside attention."""
    from llmc.quant.kvcache import kvquant_attention  # noqa: F401  (registers the attention function)
    outs = {}
    for bits in (None, "8", "2"):
        adapter = tiny_adapter("llama")
        extra = [] if bits is None else ["--quant.kvcache.bit", bits, "--quant.kvcache.granularity", "per_token"]
        cfg = load_config(None, ["--quant.method", "RTN", "--quant.act.bit", "8",
                                 "--quant.act.granularity", "per_token", *extra])
        quantize_model(adapter, cfg, None)
        seen = []
        attn = adapter.blocks[0].self_attn
        if bits is not None:
            original = attn.k_quantizer.fake_quant
            attn.k_quantizer.fake_quant = lambda x: (seen.append(x.shape), original(x))[1]
        outs[bits] = logits(adapter, calib_ids().input_ids)
        if bits is not None:
            assert seen and seen[0][1] == 2 and seen[0][-1] == 16  # [b, kv_heads, tokens, head_dim]
        else:
            assert getattr(attn, "k_quantizer", None) is None
    assert rel_diff(outs[None], outs["8"]) < rel_diff(outs[None], outs["2"])
    assert rel_diff(outs[None], outs["2"]) > 0


def test_real_quant_position_evaluates_the_integer_model():
    from llmc.quant.int_linear import IntLinear
    adapter = tiny_adapter("llama")
    cfg = make_cfg("RTN", "--eval.eval_pos", "fake_quant,real_quant")
    seen = {}
    ids = calib_ids(seed=4).input_ids
    quantize_stages(adapter, cfg, None, evaluate=lambda pos: seen.__setitem__(pos, logits(adapter, ids)))
    assert list(seen) == ["transformed", "fake_quant", "real_quant"]
    assert isinstance(adapter.blocks[0].self_attn.q_proj, IntLinear)
    assert rel_diff(seen["fake_quant"], seen["real_quant"]) < 1e-2


def test_real_quant_with_save_real_evaluates_the_packed_checkpoint(tmp_path):
    """With save.save_real the real_quant position runs the shipped checkpoint: integer linears and the
    int8-row embeddings / lm_head it stores."""
    from llmc.quant.int_linear import IntLinear
    from llmc.quant.packed import dequantize_rows, quantize_rows
    adapter = tiny_adapter("llama", tie_word_embeddings=True)
    cfg = make_cfg("RTN", "--eval.eval_pos", "fake_quant,real_quant", "--save.save_real", "true",
                   "--save.save_path", str(tmp_path))
    seen = {}
    ids = calib_ids(seed=4).input_ids
    fake_model = {}
    def evaluate(pos):
        seen[pos] = logits(adapter, ids)
        fake_model.setdefault(pos, adapter.model)
    quantize_stages(adapter, cfg, None, evaluate=evaluate)
    assert adapter.model is not fake_model["fake_quant"]               # reloaded from the packed folder
    assert isinstance(adapter.blocks[0].self_attn.q_proj, IntLinear)
    emb = fake_model["fake_quant"].model.embed_tokens.weight
    torch.testing.assert_close(adapter.model.model.embed_tokens.weight,
                               dequantize_rows(*quantize_rows(emb), emb.dtype))
    assert not torch.equal(adapter.model.model.embed_tokens.weight, emb)
    assert 0 < rel_diff(seen["fake_quant"], seen["real_quant"]) < 2e-2


@pytest.mark.parametrize("method", ["SmoothQuant", "GPTQ"])
def test_partial_last_calibration_batch_with_eager_attention(method):
    """calib.n_samples 5 with bs 2: the last batch has one sample, and its eager attention mask
    [1, 1, seq, seq] is its own, not the first batch's [2, 1, seq, seq]."""
    from llmc.algos.base import capture_block0_inputs
    adapter = tiny_adapter("llama")
    adapter.model.set_attn_implementation("eager")
    ids = calib_ids(n=5, seq=16)
    inputs = capture_block0_inputs(adapter, ids.input_ids, 2)
    assert [h.shape[0] for h in inputs.hidden] == [2, 2, 1]
    assert inputs.last_kwargs is not None and inputs.kwargs_at(2) is inputs.last_kwargs
    assert inputs.kwargs_at(0) is inputs.kwargs_at(1) is inputs.kwargs
    algo = ALGO_REGISTRY[method](adapter, make_cfg(method, "--calib.n_samples", "5"))
    algo.quantize(ids)
    assert len(algo.block_log) == len(adapter.blocks)
    algo.deploy_fake()
    assert torch.isfinite(logits(adapter, ids.input_ids)).all()
