"""The GGUF exporter (llama.cpp): block layouts against gguf-py's own dequantizers, a tiny quantized Llama
and Qwen2 read back equal to our codes times the fp16-rounded scales, the refusals, the tokenizer copy.
The tests that run the file in llama.cpp are in tests/test_llamacpp.py (skipped without llama-cpp-python)."""

import json

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from conftest import tiny_adapter  # noqa: E402
from llmc.config import load_config  # noqa: E402
from llmc.errors import UserError  # noqa: E402
from llmc.export.gguf import (GGUF_FILE, SIDECAR, GGUFExporter, grid_refusal, pack_blocks, permute_rows,  # noqa: E402
                              read_gguf_weights, refusal, unpermute_rows, write_float_gguf, write_gguf)
from llmc.pipeline import check_writable, quantize_model  # noqa: E402
from llmc.quant.fake_linear import FakeQuantLinear  # noqa: E402
from llmc.quant.transforms import OnlineHadamard  # noqa: E402


def f16(x):
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("qtype, signed, lo, hi", [("Q8_0", True, -128, 128), ("Q4_0", True, -8, 8),
                                                   ("Q5_0", True, -16, 16), ("Q4_1", False, 0, 16),
                                                   ("Q5_1", False, 0, 32)])
def test_blocks_dequantize_with_gguf_py_to_our_values(qtype, signed, lo, hi):
    rng = np.random.default_rng(0)
    rows, cols = 6, 96
    codes = rng.integers(lo, hi, (rows, cols)).astype(np.int8 if signed else np.uint8)
    scale = rng.uniform(1e-4, 2e-2, (rows, cols // 32)).astype(np.float32)
    zero = None if signed else rng.integers(0, hi, (rows, cols // 32)).astype(np.float32)
    blocks = pack_blocks(codes, scale, zero, qtype)
    kind = gguf.GGMLQuantizationType[qtype]
    assert blocks.shape == gguf.quant_shape_to_byte_shape((rows, cols), kind)
    got = gguf.quants.dequantize(blocks, kind)
    d = np.repeat(f16(scale), 32, axis=1)
    if signed:
        expected = codes.astype(np.float32) * d
    else:
        m = np.repeat(f16(-scale * zero), 32, axis=1)
        expected = d * codes.astype(np.float32) + m
    np.testing.assert_array_equal(got, expected)


def test_q8_0_of_gguf_py_reads_back_through_our_layout():
    """The other direction: ggml's own Q8_0 of a row (gguf-py's bit-exact port) has the layout we write."""
    x = np.random.default_rng(1).normal(size=(2, 64)).astype(np.float32)
    theirs = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0).reshape(2, 2, 34)
    d = theirs[..., :2].copy().view(np.float16).astype(np.float32)[..., 0]
    codes = theirs[..., 2:].copy().view(np.int8).reshape(2, 64)
    np.testing.assert_array_equal(pack_blocks(codes, d, None, "Q8_0"), theirs.reshape(2, -1))


def test_qk_permutation_goes_from_rotate_half_to_interleaved_and_back():
    # one head of dim 4: Hugging Face rotates the pairs (0, 2) and (1, 3); llama.cpp wants them adjacent
    np.testing.assert_array_equal(permute_rows(np.arange(4), 1), [0, 2, 1, 3])
    np.testing.assert_array_equal(permute_rows(np.arange(8), 2), [0, 2, 1, 3, 4, 6, 5, 7])
    x = np.arange(4 * 16 * 3).reshape(4 * 16, 3)
    assert not np.array_equal(permute_rows(x, 4), x)
    np.testing.assert_array_equal(unpermute_rows(permute_rows(x, 4), 4), x)


def _quantized(family, overrides, **model):
    adapter = tiny_adapter(family, **model)
    cfg = load_config(None, ["--quant.method", "RTN", "--quant.act.bit", "8", "--quant.act.granularity", "per_token",
                             "--save.real_embed_bit", "null", *overrides])
    quantize_model(adapter, cfg, None)                 # RTN: no calibration
    return adapter, cfg


W8 = ["--quant.weight.bit", "8", "--quant.weight.granularity", "per_channel"]
W4_SYM = ["--quant.weight.bit", "4", "--quant.weight.granularity", "per_channel"]
W4_ASYM_G32 = ["--quant.weight.bit", "4", "--quant.weight.symmetric", "false",
               "--quant.weight.granularity", "per_group", "--quant.weight.group_size", "32"]
W4_ASYM_G64 = ["--quant.weight.bit", "4", "--quant.weight.symmetric", "false",
               "--quant.weight.granularity", "per_group", "--quant.weight.group_size", "64"]


@pytest.mark.parametrize("family, model", [("llama", {}), ("qwen2", {}), ("llama", {"attention_bias": True})],
                         ids=["llama", "qwen2", "llama-biases"])
@pytest.mark.parametrize("overrides, qtype", [(W8, "Q8_0"), (W4_SYM, "Q4_0"), (W4_ASYM_G32, "Q4_1"),
                                              (W4_ASYM_G64, "Q4_1")])
def test_read_back_equals_the_fake_quant_weights(tmp_path, family, model, overrides, qtype):
    adapter, cfg = _quantized(family, overrides, **model)
    report = write_gguf(adapter.model, tmp_path / GGUF_FILE, embed_type="F32", float_type="F32")
    weights = read_gguf_weights(tmp_path / GGUF_FILE)
    config = adapter.model.config
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    checked = 0
    for i, block in enumerate(adapter.blocks):
        for hf, gname in (("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
                          ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"),
                          ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")):
            module = block.get_submodule(hf)
            assert isinstance(module, FakeQuantLinear)
            got, kind = weights[f"blk.{i}.{gname}.weight"]
            assert kind == qtype
            if family == "llama" and gname in ("attn_q", "attn_k"):
                got = unpermute_rows(got, heads if gname == "attn_q" else kv)
            wq = module.weight_quantizer
            codes, scale, zero = module.export_int()
            # our dequantization with the scale (and -s z) rounded to fp16, as llama.cpp computes it
            view = wq.group_view(codes.float())
            s = torch.from_numpy(f16(scale.numpy()))
            expected = view * s if wq.symmetric else view * s + torch.from_numpy(f16((-scale * zero).numpy()))
            np.testing.assert_array_equal(got, expected.reshape(codes.shape).numpy())
            w = module.weight.detach().float().numpy()          # the fake-quant model's weight
            np.testing.assert_allclose(got, w, rtol=0, atol=float(np.abs(w).max()) * 2e-3)
            if module.bias is not None:
                b, _ = weights[f"blk.{i}.{gname}.bias"]
                b = unpermute_rows(b, heads if gname == "attn_q" else kv) if (
                    family == "llama" and gname in ("attn_q", "attn_k")) else b
                np.testing.assert_array_equal(b, module.bias.detach().float().numpy())
            checked += 1
    assert checked == 7 * len(adapter.blocks)
    assert report["arch"] == {"llama": "llama", "qwen2": "qwen2"}[family]
    assert report["scale_fp16_max_rel_rounding"] < 2 ** -10
    if family == "qwen2" or model.get("attention_bias"):
        assert "blk.0.attn_q.bias" in weights      # q/k/v biases travel, in F32 (Llama's permuted as its weights)
    emb, kind = weights["token_embd.weight"]
    assert kind == "F32"
    np.testing.assert_array_equal(emb, adapter.model.get_input_embeddings().weight.detach().numpy())


def test_exporter_writes_the_file_and_what_it_does_not_carry(tmp_path):
    adapter, cfg = _quantized("llama", W8 + ["--save.save_path", str(tmp_path), "--save.formats", "[gguf]",
                                             "--save.real_embed_bit", "8"])
    out = GGUFExporter().export(adapter, None, cfg, "fake_quant")
    side = json.loads((out / SIDECAR).read_text())
    tied = adapter.model.config.tie_word_embeddings
    assert side["tensor_types"]["Q8_0"] == 7 * 2 + (1 if tied else 2)    # the linears, embedding and lm_head
    assert side["types"]["token_embd.weight"] == "Q8_0"
    assert side["tokenizer"].startswith("no_vocab")            # the tiny model has no GGUF tokenizer
    assert any("per block of 32" in n for n in side["not_carried"])
    reader = gguf.GGUFReader(str(out / GGUF_FILE))
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.attention.head_count_kv"].contents() == 2
    assert reader.fields["tokenizer.ggml.model"].contents() == "no_vocab"


@pytest.mark.parametrize("args, words", [
    ((8, False, "per_channel", -1), "asymmetric 8-bit"),
    ((4, True, "per_group", 16), "multiple of 32"),
    ((4, True, "per_channel", -1, 48), "input width of 48"),
])
def test_grids_without_a_gguf_type_are_refused(args, words):
    assert words in grid_refusal(*args)


def test_supported_grids_are_not_refused():
    assert grid_refusal(8, True, "per_channel", -1, 576) is None
    assert grid_refusal(4, False, "per_group", 64, 1536) is None


def test_online_hadamard_is_refused_at_export(tmp_path):
    adapter, cfg = _quantized("llama", W8)
    adapter.blocks[0].mlp.down_proj.input_transform = OnlineHadamard(128)
    with pytest.raises(UserError, match="online input transform"):
        write_gguf(adapter.model, tmp_path / GGUF_FILE)


def test_spinquant_r4_is_refused_before_the_model_loads(tmp_path):
    spin = ["--quant.method", "SpinQuant", "--quant.weight.bit", "4", "--calib.name", "wikitext2",
            "--save.formats", "[gguf]", "--save.save_path", str(tmp_path)]
    cfg = load_config(None, spin)
    assert "R4" in refusal(cfg)
    with pytest.raises(UserError, match=r"save.formats \(gguf\): SpinQuant R4"):
        check_writable(cfg)
    cfg = load_config(None, spin + ["--quant.special.r4", "false"])
    assert refusal(cfg) is None
    check_writable(cfg)


def test_float_baseline_and_rtn_peer(tmp_path):
    adapter = tiny_adapter("llama")
    f = write_float_gguf(adapter.model, tmp_path / "f16.gguf", dtype="F16")
    assert set(f["tensor_types"]) == {"F16", "F32"}
    peer = write_float_gguf(adapter.model, tmp_path / "q4.gguf", rtn="Q4_0")
    assert peer["types"]["blk.0.ffn_up.weight"] == "Q4_0" and peer["types"]["token_embd.weight"] == "Q8_0"
    w = read_gguf_weights(tmp_path / "q4.gguf")["blk.0.ffn_up.weight"][0]
    ref = adapter.blocks[0].mlp.up_proj.weight.detach().numpy()
    assert np.abs(w - ref).max() < np.abs(ref).max() / 4          # a 4-bit round-to-nearest of it
    bf = write_float_gguf(adapter.model, tmp_path / "bf16.gguf", dtype="BF16")
    got = read_gguf_weights(tmp_path / "bf16.gguf")["blk.0.ffn_up.weight"]
    assert got[1] == "BF16"
    np.testing.assert_array_equal(got[0], adapter.blocks[0].mlp.up_proj.weight.detach().to(torch.bfloat16).float().numpy())


def test_tokenizer_is_copied_from_the_source_gguf_and_padded(tmp_path, smollm2_source):
    adapter = tiny_adapter("qwen2", vocab_size=49152 + 64, hidden_size=32, intermediate_size=64)
    report = write_float_gguf(adapter.model, tmp_path / "t.gguf", source=smollm2_source, dtype="F16")
    assert "padded with 64" in report["tokenizer"]
    reader = gguf.GGUFReader(str(tmp_path / "t.gguf"))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == 49152 + 64
    assert tokens.contents(49152 + 63) == "[PAD49215]"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert len(reader.fields["tokenizer.ggml.token_type"].data) == 49152 + 64
