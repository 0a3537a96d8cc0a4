"""OmniQuant (LWC + LET, blockwise training) on tiny random models of every family."""

import math
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from conftest import calib_ids, logits, rel_diff, tiny_adapter
from llmc.algos.base import _block_output, capture_block0_inputs, run_block
from llmc.algos.omniquant import OmniBlockState, OmniQuant
from llmc.config import load_config
from llmc.errors import ConfigError
from llmc.registry import METHODS
from llmc.quant.fake_linear import FakeQuantLinear
from llmc.pipeline import quantize_model, quantize_stages

ROOT = Path(__file__).resolve().parents[1]


def make_cfg(*extra, wbit=4, n=4, seq=16, bs=2):
    return load_config(None, ["--quant.method", "OmniQuant", "--quant.weight.bit", str(wbit),
                              "--quant.weight.symmetric", "false", "--quant.weight.granularity", "per_channel",
                              "--quant.act.bit", "8", "--quant.act.granularity", "per_token",
                              "--calib.n_samples", str(n), "--calib.seq_len", str(seq), "--calib.bs", str(bs),
                              *extra])


def outlier_adapter(family="llama", **overrides):
    """Tiny model with LLM-like scales: larger weights (losses well above Adam's eps) and a few outlier
    channels in the norms (what LET is for)."""
    adapter = tiny_adapter(family, initializer_range=0.1, **overrides)
    with torch.no_grad():
        for b in adapter.blocks:
            b.input_layernorm.weight[:4] *= 10
            b.post_attention_layernorm.weight[4:8] *= 10
    return adapter


def block_states(adapter, algo, perturb):
    """A state per block with LET initialised from the block's float inputs (and optionally perturbed)."""
    inputs = capture_block0_inputs(adapter, calib_ids().input_ids, 2)
    g = torch.Generator().manual_seed(1)
    states = []
    for block in adapter.blocks:
        state = algo.make_state(block)
        _, act_max = algo._float_targets(block, state, inputs.hidden, inputs.batch_kwargs())
        state.init_let(act_max, 0.5)
        if perturb:
            with torch.no_grad():
                for p in state.let_scales.values():
                    p.mul_(torch.exp(0.5 * torch.randn(p.shape, generator=g)))
        states.append((state, inputs))
        inputs = type(inputs)(run_block(block, inputs), inputs.kwargs)
    return states


# ---------------------------------------------------------------------------------------------- LET
@pytest.mark.parametrize("perturb", [False, True])
def test_let_fold_is_an_exact_equivalence(any_family, perturb):
    adapter = tiny_adapter(any_family)
    ids = calib_ids(n=2, seq=24, seed=5).input_ids
    before = logits(adapter, ids)
    algo = OmniQuant(adapter, make_cfg())
    states = block_states(adapter, algo, perturb)
    for block, (state, inputs) in zip(adapter.blocks, states):
        assert not torch.allclose(state.let_scales["input_layernorm"], torch.ones(1))
        # the training-time transform (temporary weights) is already an equivalence ...
        params, _ = state.call_params(quantize=False)
        with torch.no_grad():
            ref = run_block(block, inputs)
            tmp = [_block_output(functional_call(block, params, (h,), inputs.kwargs)) for h in inputs.hidden]
        assert max(rel_diff(a, b) for a, b in zip(ref, tmp)) <= 1e-5
    q0 = adapter.blocks[0].self_attn.q_proj.weight.clone()
    n0 = adapter.blocks[0].input_layernorm.weight.clone()
    for state, _ in states:
        state.fold(quantize=False)           # ... and so is the folded model
    assert not torch.allclose(q0, adapter.blocks[0].self_attn.q_proj.weight)
    assert not torch.allclose(n0, adapter.blocks[0].input_layernorm.weight)
    assert rel_diff(before, logits(adapter, ids)) <= 1e-5


def test_qk_scale_must_be_shared_by_rotary_pairs():
    """Why the q/k scale has one value per rotary pair: an independent per-channel scale (the official
    code's) on the projections before RoPE is not an equivalence; the pair-shared one is."""
    adapter = tiny_adapter("llama")
    ids = calib_ids(n=2, seq=24, seed=5).input_ids
    before = logits(adapter, ids)
    attn = adapter.blocks[0].self_attn
    s = torch.exp(0.5 * torch.randn(attn.k_proj.out_features, generator=torch.Generator().manual_seed(2)))
    s_q = s.view(2, 1, 16).expand(2, 2, 16).reshape(-1)   # GQA: kv head h serves query heads 2h, 2h+1
    with torch.no_grad():
        attn.q_proj.weight.div_(s_q.view(-1, 1))
        attn.k_proj.weight.mul_(s.view(-1, 1))
    assert rel_diff(before, logits(adapter, ids)) > 1e-3     # the equivalence test above would catch it


def test_let_init_follows_the_official_formula():
    """s = act^0.5 / max|W|^0.5 (the official code since ae39458); signed_max: the first release's max W."""
    adapter = tiny_adapter("qwen2")
    algo = OmniQuant(adapter, make_cfg())
    block = adapter.blocks[0]
    inputs = capture_block0_inputs(adapter, calib_ids().input_ids, 2)
    state = algo.make_state(block)
    _, act_max = algo._float_targets(block, state, inputs.hidden, inputs.batch_kwargs())
    normed = block.input_layernorm(torch.cat(inputs.hidden, dim=0))
    act = normed.abs().amax(dim=(0, 1)).clamp(min=1e-5)
    w = block.self_attn.q_proj.weight
    for mode, wmax in (("absmax", w.abs().max(dim=0).values), ("signed_max", w.max(dim=0).values)):
        state.init_let(act_max, 0.5, mode)
        expected = (act.sqrt() / wmax.clamp(min=1e-5).sqrt()).clamp(min=1e-5)
        torch.testing.assert_close(state.let_scales["input_layernorm"], expected)
    assert algo.special.let_init == "absmax"
    assert state.let_scales["attn_out"].shape == (block.self_attn.v_proj.out_features,)   # GQA: v channels
    assert torch.equal(state.let_scales["qk"], torch.ones(2, 8))                           # 2 kv heads, d/2


# ------------------------------------------------------------------------------------------ training
def test_training_lowers_every_block_loss():
    adapter = outlier_adapter("llama")
    algo = OmniQuant(adapter, make_cfg("--quant.special.epochs", "10", n=8, seq=32, bs=1))
    algo.quantize(calib_ids(n=8, seq=32))
    for info in algo.block_log:
        assert not info["diverged"]
        assert info["loss_final"] < info["loss_init"], info
        assert len(info["loss_epochs"]) == 10 and info["train_seconds"] > 0


def test_lwc_factors_stay_in_unit_interval_and_receive_gradients():
    adapter = outlier_adapter("qwen2")
    algo = OmniQuant(adapter, make_cfg("--quant.special.epochs", "3"))
    block = adapter.blocks[0]
    inputs = capture_block0_inputs(adapter, calib_ids().input_ids, 2)
    state = algo.make_state(block)
    targets, act_max = algo._float_targets(block, state, inputs.hidden, inputs.batch_kwargs())
    state.init_let(act_max, 0.5)
    with algo._quantized_forward(block, state):
        algo._loss(block, state, inputs.hidden[0], inputs.kwargs, targets[0], None).backward()
    assert set(state.lwc_up) == set(adapter.block_linears(block))
    for p in state.lwc_parameters() + [state.let_scales["input_layernorm"], state.let_scales["attn_out"]]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    init = torch.sigmoid(torch.tensor(4.0))
    algo.quantize(calib_ids())
    moved = 0
    for gamma, beta in algo.clip_factors.values():
        assert ((gamma > 0) & (gamma < 1) & (beta > 0) & (beta < 1)).all()
        moved += int((gamma - init).abs().max() > 1e-4) + int((beta - init).abs().max() > 1e-4)
    assert moved >= len(algo.clip_factors)


def test_aug_loss_adds_the_float_block_on_the_quantized_input():
    """Block 0: both chains have the same input, so aug_loss doubles the loss; block 1 (quant_out): the
    second target is the float block on the quantized chain's input, a different term."""
    loss = {}
    for aug in ("false", "true"):
        algo = OmniQuant(outlier_adapter("llama"), make_cfg("--quant.special.epochs", "0", "--quant.quant_out",
                                                            "true", "--quant.special.aug_loss", aug))
        algo.quantize(calib_ids())
        loss[aug] = [b["loss_init"] for b in algo.block_log]
    assert loss["true"][0] == pytest.approx(2 * loss["false"][0], rel=1e-6)
    assert loss["true"][1] != pytest.approx(2 * loss["false"][1], rel=1e-3)


def test_kvcache_quantization_trains_the_qk_scale():
    adapter = outlier_adapter("llama")
    impl = adapter.model.config._attn_implementation
    algo = OmniQuant(adapter, make_cfg("--quant.kvcache.bit", "4", "--quant.kvcache.granularity", "per_token",
                                       "--quant.special.epochs", "3"))
    algo.quantize(calib_ids())
    assert adapter.model.config._attn_implementation == impl
    assert not hasattr(adapter.blocks[0].self_attn, "k_quantizer")
    assert not torch.allclose(algo.let_scales["blocks.0.qk"], torch.ones(1))


# -------------------------------------------------------------------------------------- divergence
def test_nan_loss_is_recorded_and_the_run_goes_on(monkeypatch):
    """The official procedure (the default): a NaN loss stops the block's training before that step; the
    block keeps the parameters it reached (no reset), is recorded as diverged, and the run goes on."""
    adapter = outlier_adapter("llama")
    cfg = make_cfg("--quant.special.epochs", "3")
    assert not cfg.quant.special.keep_best
    real_loss = OmniQuant._loss
    calls = {"n": 0}

    def nan_in_block_1(self, block, *args):
        loss = real_loss(self, block, *args)
        if block is adapter.blocks[1] and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 6:            # two batches an epoch: the last batch of the third epoch
                return loss * float("nan")
        return loss
    monkeypatch.setattr(OmniQuant, "_loss", nan_in_block_1)
    evaluated = []
    algo = quantize_stages(adapter, cfg, calib_ids(), evaluate=evaluated.append).algorithm
    assert evaluated == ["transformed", "fake_quant"]
    assert not algo.block_log[0]["diverged"]
    info = algo.block_log[1]
    assert info["diverged"] and info["reason"] == "non-finite loss at epoch 2, batch 1" and info["epochs_done"] == 2
    assert info["chosen"] == "end of training"
    assert not torch.allclose(algo.let_scales["blocks.1.input_layernorm"], torch.ones(1))   # trained, kept
    assert torch.isfinite(logits(adapter, calib_ids().input_ids)).all()


def test_exploding_loss_is_recorded_not_raised():
    adapter = outlier_adapter("qwen2")
    algo = OmniQuant(adapter, make_cfg("--quant.special.epochs", "5", "--quant.special.let_lr", "1e4",
                                       "--quant.special.lwc_lr", "1e4", "--quant.special.keep_best", "true"))
    algo.quantize(calib_ids())
    info = algo.block_log[0]
    assert info["diverged"] and "exploded" in info["reason"]
    # keep-best: three attempts (lr x1, x0.5, x0.25) all explode; the block keeps its initial parameters
    assert [a["lr_scale"] for a in info["attempts"]] == [1.0, 0.5, 0.25]
    assert all("exploded" in a["reason"] for a in info["attempts"])
    assert info["chosen"] == "init" and info["loss_final"] == pytest.approx(info["loss_init"], rel=1e-6)
    assert all(torch.isfinite(p).all() for p in adapter.model.parameters())


def test_nan_in_one_attempt_is_retried_with_keep_best(monkeypatch):
    adapter = outlier_adapter("llama")
    algo = OmniQuant(adapter, make_cfg("--quant.special.epochs", "3", "--quant.special.keep_best", "true"))
    real_loss = OmniQuant._loss
    calls = {"n": 0}

    def nan_once_in_block_1(self, block, *args):
        loss = real_loss(self, block, *args)
        if block is adapter.blocks[1] and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 3:
                return loss * float("nan")
        return loss
    monkeypatch.setattr(OmniQuant, "_loss", nan_once_in_block_1)
    algo.quantize(calib_ids())
    info = algo.block_log[1]
    assert "non-finite" in info["attempts"][0]["reason"] and info["attempts"][1]["lr_scale"] == 0.5
    assert not info["diverged"] and info["chosen"].startswith("attempt 2")
    assert info["loss_final"] < info["loss_init"]


def test_exploding_loss_does_not_stop_the_official_procedure():
    """The official code has no divergence guard: a finite but exploding loss trains on to the end, and the
    block keeps what it ends with (recorded as ended_worse, not diverged)."""
    adapter = outlier_adapter("qwen2")
    algo = OmniQuant(adapter, make_cfg("--quant.special.epochs", "3", "--quant.special.let_lr", "1e2",
                                       "--quant.special.lwc_lr", "1e2"))
    algo.quantize(calib_ids())
    for info in algo.block_log:
        assert info["epochs_done"] == 3 and info["chosen"] == "end of training"
        assert info["ended_worse"] == (info["loss_final"] > info["loss_init"])
    assert any(info["ended_worse"] for info in algo.block_log)


def test_keep_best_never_ends_above_init_and_official_mode_can(monkeypatch):
    """A learning rate that makes training worse without exploding: keep-best keeps the initial parameters
    (after two retries at halved rates), the official procedure keeps the worse end of training: the
    folded weights are the ones the end-of-training parameters give, and its loss is above the initial."""
    def make(keep):
        adapter = outlier_adapter("llama")
        algo = OmniQuant(adapter, make_cfg("--quant.special.epochs", "2", "--quant.special.let_lr", "0.3",
                                           "--quant.special.lwc_lr", "3", "--quant.special.diverge_factor", "1e9",
                                           "--quant.special.keep_best", keep))
        algo.record_trained_weights = True
        ends = {}
        real_fold = OmniBlockState.fold

        def fold(state, quantize=True):       # the parameters at the end of training, before folding
            ends[id(state.block)] = [p.detach().clone() for p in state.let_parameters() + state.lwc_parameters()]
            return real_fold(state, quantize)
        monkeypatch.setattr(OmniBlockState, "fold", fold)
        algo.quantize(calib_ids())
        monkeypatch.setattr(OmniBlockState, "fold", real_fold)
        return algo, ends, adapter
    (official, ends, adapter), (kept, _, _) = make("false"), make("true")
    worse = [i for i, b in enumerate(official.block_log) if b["loss_final"] > b["loss_init"]]
    assert worse                                                            # training can make a block worse
    for i in worse:
        b = official.block_log[i]
        assert b["chosen"] == "end of training" and b["ended_worse"] and not b["diverged"]
        assert len(b["loss_epochs"]) == 2                                   # trained to the end, kept
        end_params = ends[id(adapter.blocks[i])]
        assert not all(torch.equal(p, torch.full_like(p, 4.0)) for p in end_params[-2:])   # LWC moved
    for b in kept.block_log:
        assert b["loss_final"] <= b["loss_init"] * (1 + 1e-6)
        if b["chosen"] == "init":
            assert len(b["attempts"]) == 3
    assert METHODS["OmniQuant"].label_for(official.cfg) == "OmniQuant"
    assert METHODS["OmniQuant"].label_for(kept.cfg) == "OmniQuant+KB"


def test_partial_last_calibration_batch_with_eager_attention():
    """n_samples not a multiple of bs: the last, smaller batch gets its own attention mask (eager)."""
    adapter = tiny_adapter("llama")
    adapter.model.set_attn_implementation("eager")
    algo = OmniQuant(adapter, make_cfg("--quant.special.epochs", "1", n=5, seq=16, bs=2))
    algo.quantize(calib_ids(n=5, seq=16))
    assert len(algo.block_log) == len(adapter.blocks)
    assert all(math.isfinite(b["loss_final"]) for b in algo.block_log)


# -------------------------------------------------------------------------------------- deployment
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deployment_reproduces_the_trained_quantized_weights(dtype):
    adapter = outlier_adapter("qwen2")
    adapter.model.to(dtype)
    algo = OmniQuant(adapter, make_cfg("--quant.special.epochs", "2"))
    algo.record_trained_weights = True
    algo.quantize(calib_ids())
    assert all(w.dtype == torch.float32 for w in algo.trained_weights.values())
    algo.deploy_fake()
    n = 0
    for i, block in enumerate(adapter.blocks):
        for name, layer in adapter.block_linears(block).items():
            assert isinstance(layer, FakeQuantLinear) and layer.weight.dtype == dtype
            trained = algo.trained_weights[f"blocks.{i}.{name}"]
            assert torch.equal(layer.weight, trained.to(dtype)), name
            scale, zero = algo.weight_params[f"blocks.{i}.{name}"]
            assert torch.equal(layer.w_scale, scale) and torch.equal(layer.w_zero, zero)
            n += 1
    assert n == 7 * len(adapter.blocks)


def test_pipeline_end_to_end_qwen2():
    adapter = tiny_adapter("qwen2")
    ids = calib_ids(seed=3).input_ids
    before = logits(adapter, ids)
    evaluated = []
    algo = quantize_stages(adapter, make_cfg("--quant.special.epochs", "2", "--quant.quant_out", "true"), calib_ids(),
                           evaluate=evaluated.append).algorithm
    assert evaluated == ["transformed", "fake_quant"]
    assert len([m for m in adapter.model.modules() if isinstance(m, FakeQuantLinear)]) == 7 * len(adapter.blocks)
    after = logits(adapter, ids)
    assert torch.isfinite(after).all() and 0 < rel_diff(before, after) < 0.5
    for info in algo.block_log:
        assert {"loss_init", "loss_final", "train_seconds", "seconds", "diverged"} <= set(info)


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("extra, message", [
    (["--quant.special.let_shift", "true"], "let_shift"),
    (["--quant.act.granularity", "per_tensor", "--quant.act.static", "true"], "quant.act.static"),
    (["--quant.weight.calib_algo", "mse"], "calib_algo"),
    (["--quant.special.lwc", "false", "--quant.special.let", "false"], "nothing to train"),
    (["--quant.special.epochs", "-1"], "epochs"),
])
def test_unsupported_settings_are_config_errors(extra, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(*extra)


@pytest.mark.parametrize("path", ["configs/smollm/omni_w8a8.yml", "configs/smollm/omni_w4a8.yml",
                                  "configs/qwen/omni_w8a8.yml", "configs/qwen/omni_w4a8.yml",
                                  "configs/smollm/omni_kb_w8a8.yml", "configs/smollm/omni_kb_w4a8.yml",
                                  "configs/qwen/omni_kb_w8a8.yml", "configs/qwen/omni_kb_w4a8.yml"])
def test_shipped_configs(path):
    cfg = load_config(ROOT / path)
    q, sp = cfg.quant, cfg.quant.special
    # omni_*: the official procedure; omni_kb_*: our keep-best variant, labelled OmniQuant+KB
    assert sp.keep_best == ("omni_kb_" in path) and sp.let_init == "absmax"
    assert METHODS["OmniQuant"].label_for(cfg) == ("OmniQuant+KB" if sp.keep_best else "OmniQuant")
    assert q.method == "OmniQuant" and not q.weight.symmetric and q.weight.granularity == "per_channel"
    assert q.act.symmetric and q.act.granularity == "per_token" and not q.act.static and q.quant_out
    assert (cfg.calib.n_samples, cfg.calib.seq_len, cfg.calib.bs, sp.epochs) == (128, 2048, 1, 20)
    assert (sp.lwc, sp.let, sp.let_shift, sp.lwc_lr, sp.let_lr, sp.wd, sp.lwc_init) == (True, True, False, 1e-2, 5e-3,
                                                                                          0.0, 4.0)
    cpu = load_config(ROOT / path, profile="cpu")
    assert (cpu.calib.n_samples, cpu.calib.seq_len, cpu.calib.bs, cpu.quant.special.epochs) == (32, 512, 1, 5)
