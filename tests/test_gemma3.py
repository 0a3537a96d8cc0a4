"""Gemma-3 (issue 21) on a tiny random ``gemma3_text`` model: four ``(1 + w)`` norms per block, norms after
both sub-blocks, per-head q/k norms, one KV head, a sliding-window layer and a global one, embeddings scaled
by sqrt(hidden), tied. Every transform a method is allowed on this layout leaves the logits unchanged; what
the layout forbids (SpinQuant's / QuaRot-style R1 through the post-norms) is refused in one line."""

from __future__ import annotations

import pytest
import torch

from conftest import calib_ids, fold_let_blockwise, logits, rel_diff, tiny_adapter
from llmc.config import load_config
from test_norm_contract import cfg_for  # noqa: F401 - the same tiny W8A8 calibration settings
from llmc.errors import ConfigError
from llmc.registry import ALGO_REGISTRY

GEMMA = "gemma3_text"


def gemma():
    a = tiny_adapter(GEMMA)
    with torch.no_grad():   # (1 + w) norms around 1, q/k norms included, so that no gain is trivial
        for name, p in a.model.named_parameters():
            if "norm" in name:
                p.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(len(name)))
    return a


def test_the_layout_is_data_and_matches_the_model():
    a = gemma()
    lay = a.layout
    assert lay.norm_offset == 1.0 and lay.mlp_norm == "pre_feedforward_layernorm"
    block = a.blocks[0]
    for path in (lay.attn_norm, lay.mlp_norm, *lay.post_norms, *lay.qk_norms):
        assert "RMSNorm" in type(block.get_submodule(path)).__name__, path
    assert [s.prev_op_name for s in a.subsets(block)] == ["input_layernorm", "self_attn.v_proj",
                                                          "pre_feedforward_layernorm", "mlp.up_proj"]
    assert a.tied_embeddings and a.num_kv_heads == 1
    assert a.model.config.layer_types == ["sliding_attention", "full_attention"]


def test_sliding_window_is_active_in_the_tiny_model():
    """The window (8) is shorter than the test sequences (16): the sliding layer really masks."""
    a = gemma()
    ids = calib_ids(seed=3).input_ids
    before = logits(a, ids)
    a.model.config.sliding_window = 64
    for layer in a.blocks:
        layer.self_attn.sliding_window = 64 if layer.self_attn.sliding_window else None
    assert rel_diff(before, logits(a, ids)) > 1e-3


@pytest.mark.parametrize("method,extra", [
    ("SmoothQuant", []),
    ("SpinQuant", ["--quant.special.learn_rotations", "false", "--quant.special.weight_algo", "rtn",
                   "--quant.special.r1", "false"]),
    ("SpinQuant", ["--quant.special.learn_rotations", "false", "--quant.special.weight_algo", "rtn",
                   "--quant.special.r1", "false", "--quant.special.rotate_mode", "random"]),
    ("QuaRot", ["--quant.special.weight_algo", "rtn", "--quant.special.r1", "false"]),
])
def test_allowed_transforms_leave_the_logits_unchanged(method, extra):
    """SmoothQuant's input_layernorm -> q/k/v and pre_feedforward_layernorm -> gate/up into (1 + w); the
    local rotations R2 (per head on v/o, one KV head) and R4 (online Hadamard before down_proj)."""
    a = gemma()
    ids = calib_ids(seed=3).input_ids
    before = logits(a, ids)
    ALGO_REGISTRY[method](a, cfg_for(method, *extra)).quantize(calib_ids())   # the transform, no fake quant
    changed = [n for n, p in a.model.named_parameters() if "proj" in n]
    assert changed
    assert rel_diff(before, logits(a, ids)) < 1e-4


def test_smoothquant_leaves_the_post_norms_alone():
    a = gemma()
    post = {n: a.blocks[0].get_submodule(n).weight.detach().clone() for n in a.layout.post_norms}
    pre = a.blocks[0].input_layernorm.weight.detach().clone()
    ALGO_REGISTRY["SmoothQuant"](a, cfg_for("SmoothQuant")).quantize(calib_ids())
    for n, w in post.items():
        assert torch.equal(a.blocks[0].get_submodule(n).weight, w), n
    assert not torch.equal(a.blocks[0].input_layernorm.weight, pre)


def test_omniquant_let_folds_exactly_without_a_qk_scale():
    """LET on the two pre-norm groups and v -> o; no q/k scale (q_norm / k_norm sit between the projections
    and Q K^T, so a row scale of q_proj would not pass)."""
    a = gemma()
    algo = ALGO_REGISTRY["OmniQuant"](a, cfg_for("OmniQuant", "--quant.weight.symmetric", "false"))
    ids = calib_ids(seed=3).input_ids
    before = logits(a, ids)

    def perturb(state):   # non-trivial scales beyond the init, so that the fold is really tested
        assert set(state.let_scales) == {"input_layernorm", "pre_feedforward_layernorm", "attn_out"}
        with torch.no_grad():
            for p in state.let_scales.values():
                p.mul_(torch.empty_like(p).uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(1)))

    fold_let_blockwise(a, algo, perturb)
    assert rel_diff(before, logits(a, ids)) < 1e-4


@pytest.mark.parametrize("extra", [[], ["--quant.special.rotate_mode", "random"]])
def test_r1_is_refused_in_one_line(extra):
    a = gemma()
    algo = ALGO_REGISTRY["SpinQuant"](a, cfg_for("SpinQuant", "--quant.special.learn_rotations", "false",
                                                 "--quant.special.weight_algo", "rtn", *extra))
    with pytest.raises(ConfigError) as e:
        algo.quantize(None)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("quant.special.r1: SpinQuant's R1")
    assert "post_attention_layernorm, post_feedforward_layernorm" in msg and "gemma3_text" in msg


def test_quarot_r1_is_refused_in_one_line():
    algo = ALGO_REGISTRY["QuaRot"](gemma(), cfg_for("QuaRot", "--quant.special.weight_algo", "rtn"))
    with pytest.raises(ConfigError) as e:
        algo.quantize(None)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("quant.special.r1: QuaRot's R1")


@pytest.mark.parametrize("method,extra", [
    ("RTN", []), ("GPTQ", []), ("SmoothQuant", []),
    ("OmniQuant", ["--quant.special.epochs", "1"]),
    ("SpinQuant", ["--quant.special.r1", "false", "--quant.special.steps", "2", "--quant.special.train_bs", "2"]),
    ("QuaRot", ["--quant.special.r1", "false"]),
])
def test_every_method_quantizes_gemma_end_to_end(method, extra, tmp_path):
    """W8A8 through the pipeline: close to the float model, with the float model's output layer untouched
    (so the paired WikiText-2 KL of a float32 run can come from the reference summary), and the packed
    checkpoint (Gemma's embedding scale and dual rotary frequencies are non-persistent buffers, rebuilt by the
    loader) reloads to the same logits."""
    import copy

    from llmc.eval.reference_summary import head_mismatch
    from llmc.pipeline import quantize_model
    from llmc.quant.packed import load_packed_model, save_packed_model
    a = gemma()
    float_model = copy.deepcopy(a.model)
    ids = calib_ids(seed=3).input_ids
    before = logits(a, ids)
    cfg = cfg_for(method, "--save.real_embed_bit", "null", *extra)
    algo = quantize_model(a, cfg, calib_ids()).algorithm
    after = logits(a, ids)
    assert torch.isfinite(after).all() and 0 < rel_diff(before, after) < 0.1, rel_diff(before, after)
    assert head_mismatch(a.model, float_model) is None
    save_packed_model(a, algo.cfg, tmp_path / "p")
    with torch.no_grad():
        reloaded = load_packed_model(tmp_path / "p")(input_ids=ids).logits
    torch.testing.assert_close(reloaded, after, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt, what", [("gguf", "no llama.cpp graph mapping"), ("executorch", "no ExecuTorch decoder")])
def test_edge_exports_refuse_gemma_in_one_line_before_loading(fmt, what, tmp_path):
    """Neither edge exporter maps Gemma-3's graph (four norms, q/k norms, sliding windows): refused by the run's
    check before any work (``llmc.pipeline.check_writable``)."""
    from llmc.errors import UserError
    from llmc.pipeline import check_writable
    if fmt == "executorch":
        pytest.importorskip("executorch", reason="the executorch exporter refuses first when it is missing")
    cfg = load_config(None, ["--model.type", "Gemma3", "--model.path", "gemma-3-270m", "--quant.method", "RTN",
                             "--quant.weight.bit", "8", "--quant.act.bit", "8", "--quant.act.granularity", "per_token",
                             "--save.formats", f"[{fmt}]", "--save.save_path", str(tmp_path)])
    with pytest.raises(UserError) as e:
        check_writable(cfg)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"save.formats ({fmt})") and what in msg and "gemma3_text" in msg


def test_the_run_estimate_probes_one_gemma_layer():
    """The estimate's probe builds a one-layer twin: per-layer lists (layer_types) are cut to that layer."""
    import json
    from llmc.estimate import probe_layer_seconds
    from llmc_slm import zoo
    cfg = json.loads((zoo.CONFIG_DIR / "gemma-3-270m.json").read_text())
    cfg.update(hidden_size=64, intermediate_size=128, head_dim=16, query_pre_attn_scalar=16)
    assert 0 < probe_layer_seconds(cfg, torch.float32, torch.device("cpu"), tokens=16) < 1


def test_a_smoothed_one_plus_norm_keeps_its_gain_in_bfloat16():
    """A gain divided by a large smoothing scale has ``w = gain / s - 1`` near -1, where bfloat16 keeps about
    2^-8 of absolute precision (up to ~40% of a gain of 0.01); the norm keeps float32 weights instead."""
    a = gemma()
    a.model.to(torch.bfloat16)
    norm = a.blocks[0].input_layernorm
    gain = a.norm_gain(norm)
    s = torch.logspace(-1, 2, 64, dtype=torch.float64)             # scales from 0.1 to 100
    a.divide_norm(norm, s)
    assert norm.weight.dtype == torch.float32
    rel = ((a.norm_gain(norm) - gain / s) / (gain / s)).abs().max().item()
    assert rel < 1e-5, rel
    with torch.no_grad():                                           # and the bf16 model still runs
        assert torch.isfinite(a.model(input_ids=calib_ids().input_ids).logits).all()


def test_the_block_loop_gives_each_layer_its_own_mask_and_rope():
    """Calibration runs block by block from block 0's inputs. Gemma-3's sliding layer gets a windowed mask
    and local RoPE, its global layer the causal mask and RoPE of another base: block by block, the float
    pass must reproduce the model's own hidden states (with block 0's arguments reused, block 1 differs)."""
    from llmc.algos.base import capture_block0_inputs, run_block
    a = tiny_adapter(GEMMA, num_hidden_layers=3, layer_types=["sliding_attention", "full_attention",
                                                             "sliding_attention"])
    ids = calib_ids(n=5, seq=16).input_ids                  # batches of 2, 2 and a smaller last one
    with torch.no_grad():
        states = a.model(input_ids=ids, output_hidden_states=True).hidden_states
    inputs = capture_block0_inputs(a, ids, 2)
    assert len(inputs.hidden) == 3 and inputs.last_kwargs is not None and len(inputs.per_block) == 3
    block = a.blocks[0]
    first = inputs.with_hidden(run_block(block, inputs.for_block(0)))
    torch.testing.assert_close(torch.cat(first.hidden), states[1], atol=1e-5, rtol=1e-5)
    got = torch.cat(run_block(a.blocks[1], first.for_block(1)))             # the global layer, its own args
    torch.testing.assert_close(got, states[2], atol=1e-5, rtol=1e-5)
    stale = torch.cat(run_block(a.blocks[1], first))                         # block 0's (sliding) args
    assert rel_diff(stale, states[2]) > 1e-3


def test_r1_is_refused_right_after_loading_before_the_float_model_is_evaluated(smollm2_tokenizer, tmp_path, capsys):
    """A run whose method the layout refuses stops at once (``pipeline.check_method_on_model``): with
    ``pretrain`` in eval.eval_pos the float model's evaluation would otherwise run first (about 15 minutes of
    WikiText-2 for the real Gemma-3) and the refusal come only at the transform."""
    import json

    from conftest import tiny_hf_model
    from llmc.__main__ import main
    model_dir = tmp_path / "tiny_gemma"
    tiny_hf_model(GEMMA, vocab_size=len(smollm2_tokenizer)).save_pretrained(model_dir)
    smollm2_tokenizer.save_pretrained(model_dir)
    cfg = tmp_path / "spin_r1.yml"
    cfg.write_text(f"model: {{type: Gemma3, path: {model_dir}, torch_dtype: float32, device: cpu}}\n"
                   "quant: {method: SpinQuant, weight: {bit: 8, granularity: per_channel}, "
                   "act: {bit: 8, granularity: per_token}, special: {r1: true, learn_rotations: false, "
                   "weight_algo: rtn}}\n"
                   "eval: {name: [wikitext2], eval_pos: [pretrain, fake_quant], limit: 1, seq_len: 32}\n"
                   f"save: {{save_path: {tmp_path / 'results'}}}\n")
    assert main(["--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: quant.special.r1: SpinQuant's R1") and "Traceback" not in "\n".join(err)
    record = json.loads(next((tmp_path / "results").glob("*.json")).read_text())
    assert record["stage"] == "load" and not record.get("metrics", {}).get("pretrain")
