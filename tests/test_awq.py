"""AWQ on tiny random models: the scale search is an equivalence before quantization (every family, Gemma's
(1 + w) norms), its grid is the official one, the clipping search is never worse than no clipping and
leaves q/k alone, v -> o is scaled only without GQA, the next block sees the float block's outputs, and on
a model with planted activation outliers AWQ beats RTN at 4-bit weights."""

import copy
from pathlib import Path

import pytest
import torch

from conftest import tiny_adapter
from llmc.algos.awq import candidate_scales, search_ratios
from llmc.algos.base import capture_block0_inputs, run_block
from llmc.config import load_config
from llmc.errors import ConfigError
from llmc.registry import ALGO_REGISTRY
from test_algorithms import calib_ids, logits, rel_diff

ROOT = Path(__file__).resolve().parents[1]


def awq_cfg(*extra, act=False):
    act_args = ["--quant.act.bit", "8", "--quant.act.granularity", "per_token"] if act else []
    return load_config(None, ["--quant.method", "AWQ", "--quant.weight.bit", "4", "--quant.weight.symmetric",
                              "false", "--quant.weight.granularity", "per_group", "--quant.weight.group_size", "16",
                              "--calib.n_samples", "4", "--calib.seq_len", "16", "--calib.bs", "2",
                              *act_args, *extra])


def awq(adapter, *extra, act=False):
    return ALGO_REGISTRY["AWQ"](adapter, awq_cfg(*extra, act=act))


@pytest.mark.parametrize("family", ["llama", "qwen2", "smollm3", "gemma3_text"])
def test_the_scales_alone_leave_the_float_model_unchanged(family):
    adapter = tiny_adapter(family)
    ids = calib_ids(seed=3).input_ids
    before = logits(adapter, ids)
    q_before = adapter.blocks[0].self_attn.q_proj.weight.detach().clone()
    algo = awq(adapter, "--quant.special.auto_clip", "false")
    algo.quantize(calib_ids())
    assert not torch.allclose(adapter.blocks[0].self_attn.q_proj.weight, q_before)     # scales were folded
    assert rel_diff(before, logits(adapter, ids)) <= 1e-4
    alphas = [algo.block_log[0][k] for k in algo.block_log[0] if k.endswith("_alpha")]
    assert alphas and all(a in search_ratios(20) for a in alphas)


def test_the_official_grid_and_normalisation():
    assert search_ratios(20)[:3] == [0.0, 0.05, 0.1] and search_ratios(20)[-1] == 0.95
    x = torch.tensor([4.0, 1.0, 0.25, 0.0])
    s = candidate_scales(x, 0.5)
    raw = torch.tensor([2.0, 1.0, 0.5, 1e-4])
    torch.testing.assert_close(s, raw / (raw.max() * raw.min()).sqrt())
    assert torch.equal(candidate_scales(x, 0.0), torch.ones(4))


def test_v_to_o_is_scaled_only_without_gqa():
    gqa = awq(tiny_adapter("llama"), "--quant.special.auto_clip", "false")
    assert gqa.adapter.num_kv_heads < gqa.adapter.num_heads
    gqa.quantize(calib_ids())
    mha = awq(tiny_adapter("llama", num_key_value_heads=4, num_attention_heads=4),
              "--quant.special.auto_clip", "false")
    mha.quantize(calib_ids())
    assert "awq_attn_out_alpha" not in gqa.block_log[0] and "awq_attn_out_alpha" in mha.block_log[0]
    assert {"awq_attn_in_alpha", "awq_mlp_in_alpha", "awq_mlp_out_alpha"} <= set(gqa.block_log[0])


def test_clipping_is_never_worse_per_group_and_skips_q_and_k():
    torch.manual_seed(0)
    algo = awq(tiny_adapter("llama"))
    w = torch.nn.Parameter(torch.randn(32, 64))
    w.data[3, 5] = 12.0             # a large weight on a channel whose activations are small: clipping pays
    x = torch.randn(300, 64)
    x[:, 5] *= 0.01
    q = algo.weight_quantizer()
    original = w.detach().clone()
    ref = (x.view(-1, 4, 16).unsqueeze(0) * original.view(32, 1, 4, 16)).sum(-1)   # the float partial products

    def group_err(weight):
        out = (x.view(-1, 4, 16).unsqueeze(0) * q.fake_quant(weight).view(32, 1, 4, 16)).sum(-1)
        return (out - ref).pow(2).mean(1)                   # [out, groups]
    before = group_err(original)
    shrink = algo.search_clip(w, x)
    after = group_err(w.detach())
    assert (after <= before + 1e-6).all() and after[3, 0] < before[3, 0]
    assert 0 < shrink < 0.5 and w[3, 5] < 12.0 and (w.detach().abs() <= original.abs() + 1e-6).all()
    full = awq(tiny_adapter("llama"))
    full.quantize(calib_ids())
    clipped = {k.split(".", 1)[1] for k in full.block_log[0] if k.startswith("awq_clip")}
    assert clipped == {"self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}


def test_the_next_block_sees_the_float_blocks_outputs():
    adapter = tiny_adapter("llama")
    algo = awq(adapter)
    inputs = capture_block0_inputs(adapter, calib_ids().input_ids, 2).for_block(0)
    block = adapter.blocks[0]
    expected = run_block(copy.deepcopy(block), inputs)
    algo.process_block(0, block, inputs)
    assert all(torch.equal(a, b) for a, b in zip(algo.next_hidden, expected))
    assert rel_diff(torch.cat(expected), torch.cat(run_block(block, inputs))) > 0    # clipping changed the block


def outlier_model():
    """Planted activation outliers: a few channels of each pre-norm scaled up 20x."""
    adapter = tiny_adapter("llama", seed=1)
    with torch.no_grad():
        for b in adapter.blocks:
            b.input_layernorm.weight[[2, 9]] *= 20
            b.post_attention_layernorm.weight[[4, 17]] *= 20
    return adapter


@pytest.mark.parametrize("act", [False, True])
def test_awq_beats_rtn_on_activation_outliers(act):
    from llmc.pipeline import quantize_model
    ids = calib_ids(seed=3, n=8, seq=24).input_ids
    errors = {}
    for method in ("RTN", "AWQ"):
        adapter = outlier_model()
        before = logits(adapter, ids)
        cfg = awq_cfg(act=act) if method == "AWQ" else load_config(None, [
            "--quant.method", "RTN", "--quant.weight.bit", "4", "--quant.weight.symmetric", "false",
            "--quant.weight.granularity", "per_group", "--quant.weight.group_size", "16",
            *(["--quant.act.bit", "8", "--quant.act.granularity", "per_token"] if act else [])])
        quantize_model(adapter, cfg, calib_ids(n=8, seq=24) if method == "AWQ" else None)
        errors[method] = rel_diff(before, logits(adapter, ids))
    assert errors["AWQ"] < 0.8 * errors["RTN"], errors


def test_settings_awq_cannot_run_are_refused():
    with pytest.raises(ConfigError, match="quant.weight.calib_algo"):
        awq_cfg("--quant.weight.calib_algo", "mse")
    with pytest.raises(ConfigError, match="quant.special.max_shrink"):
        awq_cfg("--quant.special.max_shrink", "1.5")


@pytest.mark.parametrize("model", ["smollm", "qwen", "gemma"])
@pytest.mark.parametrize("bits", ["w4a16", "w4a8"])
def test_configs_hold_the_official_defaults(model, bits):
    cfg = load_config(ROOT / f"configs/{model}/awq_{bits}.yml")
    q, sp = cfg.quant, cfg.quant.special
    assert q.method == "AWQ" and (cfg.calib.n_samples, cfg.calib.seq_len) == (128, 512)
    group = 64 if model == "smollm" else 128       # 576 = 4.5 x 128
    assert (q.weight.bit, q.weight.symmetric, q.weight.granularity, q.weight.group_size) == (4, False, "per_group", group)
    assert (sp.n_grid, sp.max_shrink, sp.clip_tokens, sp.auto_scale, sp.auto_clip) == (20, 0.5, 512, True, True)
    assert (q.act is None) == (bits == "w4a16")
    cpu = load_config(ROOT / f"configs/{model}/awq_{bits}.yml", profile="cpu")
    assert (cpu.calib.n_samples, cpu.calib.seq_len) == (32, 512)
