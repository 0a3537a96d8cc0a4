"""QuaRot on tiny random models: its rotations (R1 random Hadamard, the exact per-head Hadamard on V / O with
the online head mixing before o_proj, R3, R4) are an exact equivalence in every family and both forms of
o_proj's online transform; the pipeline deploys with GPTQ or RTN weights and the packed checkpoint keeps
the online transforms; the configs hold the official defaults.

Widths: hidden 48 = 4 x 12 with 4 heads of 12 (a Hadamard of order 4 exists: QuaRot's own form), or
3 heads of 16 (none of order 3: the full-width form)."""

import math
from pathlib import Path

import pytest
import torch

from conftest import tiny_adapter
from llmc.config import load_config
from llmc.errors import ConfigError
from llmc.quant.fake_linear import FakeQuantLinear
from llmc.quant.hadamard import hadamard_matrix
from llmc.quant.transforms import OnlineHadamard, OnlineHeadHadamard, fold_into, transform_from_spec
from llmc.registry import ALGO_REGISTRY, METHODS
from test_algorithms import calib_ids, logits, make_cfg, rel_diff

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(hidden_size=48, intermediate_size=80, num_attention_heads=4, num_key_value_heads=2, head_dim=12)
THREE_HEADS = dict(SHAPE, num_attention_heads=3, num_key_value_heads=1, head_dim=16)


def quarot(adapter, *extra):
    return ALGO_REGISTRY["QuaRot"](adapter, make_cfg("QuaRot", *extra))


# ------------------------------------------------------------------------------ the transforms
def test_head_hadamard_mixes_heads_as_a_kronecker_factor():
    """x -> x (H_heads / sqrt(heads) (x) I_head_dim)^T, orthonormal, and folding it into a weight keeps x W^T."""
    t = OnlineHeadHadamard(4, 3)
    x = torch.randn(5, 12, dtype=torch.float64)
    q = torch.kron(hadamard_matrix(4, dtype=torch.float64) / 2, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(t(x), x @ q.t())
    torch.testing.assert_close(t(x).norm(dim=-1), x.norm(dim=-1))
    lin = torch.nn.Linear(12, 7, bias=False).double()
    before = lin(x)
    fold_into(lin, t)
    torch.testing.assert_close(lin(t(x)), before)
    assert transform_from_spec(t.spec()).spec() == {"kind": "head_hadamard", "heads": 4, "head_dim": 3}


# ------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("shape, form", [(SHAPE, "heads"), (SHAPE, "full"), (THREE_HEADS, "full")])
@pytest.mark.parametrize("tied", [False, True])
def test_rotations_leave_the_float_model_unchanged(any_family, shape, form, tied):
    adapter = tiny_adapter(any_family, tie_word_embeddings=tied, **shape)
    ids = calib_ids(seed=3).input_ids
    before = logits(adapter, ids)
    o_before = adapter.blocks[1].self_attn.o_proj.weight.detach().clone()
    algo = quarot(adapter, "--quant.special.o_proj_online", "auto" if shape is THREE_HEADS else form,
                  "--quant.special.r3", "true")
    algo.prepare(None)
    assert algo.rotation_log["o_proj_online"] == form and not algo.rotation_log["learned"]
    o = adapter.blocks[1].self_attn.o_proj
    kind = OnlineHeadHadamard if form == "heads" else OnlineHadamard
    assert isinstance(algo.input_transforms["blocks.1.self_attn.o_proj"], kind) and o._forward_pre_hooks
    assert isinstance(algo.input_transforms["blocks.1.mlp.down_proj"], OnlineHadamard)
    assert not torch.allclose(o.weight, o_before, atol=1e-3)
    assert rel_diff(before, logits(adapter, ids)) <= 1e-4
    from llmc.quant.kvcache import enable_kv_quant
    enable_kv_quant(adapter, None, None, algo.query_key_transform)        # R3 on Q and K
    assert rel_diff(before, logits(adapter, ids)) <= 1e-4


def test_r2_is_the_exact_hadamard_in_every_layer():
    """QuaRot's V / O rotation is not random: H_head_dim / sqrt(head_dim), the same in every layer."""
    adapter = tiny_adapter("llama", **SHAPE)
    r1, r2 = quarot(adapter).init_rotations()
    h = hadamard_matrix(12, dtype=torch.float64) / math.sqrt(12)
    assert len(r2) == len(adapter.blocks) and all(torch.equal(r, h) for r in r2)
    r1_other, _ = quarot(tiny_adapter("llama", **SHAPE), "--quant.special.rotation_seed", "1").init_rotations()
    assert not torch.equal(r1, r1_other)                           # R1 is a random Hadamard, seeded


def test_the_head_form_needs_a_hadamard_of_the_head_count():
    adapter = tiny_adapter("llama", **THREE_HEADS)
    with pytest.raises(ConfigError, match="no Hadamard matrix of order 3 for the number of heads"):
        quarot(adapter, "--quant.special.o_proj_online", "heads").prepare(None)


# ---------------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize("family, weight_algo", [("llama", "gptq"), ("qwen2", "rtn"), ("smollm3", "gptq")])
def test_pipeline_deploys_and_the_packed_checkpoint_reloads(family, weight_algo, tmp_path):
    from llmc.pipeline import quantize_model
    from llmc.quant.packed import load_packed_model, save_packed_model
    adapter = tiny_adapter(family, **SHAPE)
    ids = calib_ids(seed=3).input_ids
    before = logits(adapter, ids)
    cfg = make_cfg("QuaRot", "--quant.special.weight_algo", weight_algo, "--save.real_embed_bit", "null")
    algo = quantize_model(adapter, cfg, calib_ids()).algorithm
    assert bool(algo.weight_params) == (weight_algo == "gptq")
    o = adapter.blocks[0].self_attn.o_proj
    assert isinstance(o, FakeQuantLinear) and isinstance(o.input_transform, OnlineHeadHadamard)
    after = logits(adapter, ids)
    assert torch.isfinite(after).all() and 0 < rel_diff(before, after) < 0.05
    save_packed_model(adapter, algo.cfg, tmp_path / "p")
    with torch.no_grad():
        reloaded = load_packed_model(tmp_path / "p")(input_ids=ids).logits
    torch.testing.assert_close(reloaded, after, atol=1e-4, rtol=1e-4)


def test_rtn_weights_need_no_calibration_text():
    spec = METHODS["QuaRot"]
    assert not spec.calibrates(make_cfg("QuaRot", "--quant.special.weight_algo", "rtn"))
    assert spec.calibrates(make_cfg("QuaRot"))
    assert spec.label_for(make_cfg("QuaRot")) == "QuaRot"


# ------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("model", ["smollm", "qwen"])
def test_configs_hold_the_official_defaults(model):
    cfg = load_config(ROOT / f"configs/{model}/quarot_w4a8.yml")
    q, sp = cfg.quant, cfg.quant.special
    assert q.method == "QuaRot" and (cfg.calib.n_samples, cfg.calib.seq_len) == (128, 2048)
    assert q.weight.symmetric and q.act.symmetric and q.weight.calib_algo == "mse"   # --w_clip
    assert (q.weight.bit, q.act.bit, q.act.granularity) == (4, 8, "per_token")
    assert (sp.rotate_mode, sp.weight_algo, sp.percdamp, sp.act_order) == ("hadamard", "gptq", 0.01, False)
    cpu = load_config(ROOT / f"configs/{model}/quarot_w4a8.yml", profile="cpu")
    assert (cpu.calib.n_samples, cpu.calib.seq_len) == (64, 512)
