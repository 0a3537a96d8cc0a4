"""The packed real-quant checkpoint: nibble packing, and a save/reload that reproduces the fake-quant model."""

import pytest
import torch

from conftest import tiny_adapter
from llmc.config import load_config
from llmc.data.calib import CalibData
from llmc.quant.packed import (dequantize_rows, load_packed_model, pack_codes, quantize_rows, read_packed,
                               save_packed_model, unpack_codes)
from llmc.quant.transforms import OnlineHadamard
from llmc.registry import ALGO_REGISTRY
from llmc.pipeline import quantize_model, quantize_stages


@pytest.mark.parametrize("bit, signed", [(2, True), (3, False), (4, True), (4, False), (8, True), (8, False),
                                         (6, True)])
def test_pack_unpack_roundtrip(bit, signed):
    g = torch.Generator().manual_seed(bit)
    lo, hi = (-(2 ** (bit - 1)), 2 ** (bit - 1)) if signed else (0, 2 ** bit)
    codes = torch.randint(lo, hi, (5, 12), generator=g).to(torch.int8 if signed else torch.uint8)
    packed = pack_codes(codes, bit)
    assert packed.dtype == torch.uint8
    assert packed.shape == ((5, 6) if bit <= 4 else (5, 12))
    assert torch.equal(unpack_codes(packed, bit, signed, 12), codes)


def test_nibble_order_is_documented():
    packed = pack_codes(torch.tensor([[1, 2, 3, 4]], dtype=torch.uint8), 4)
    assert packed.tolist() == [[0x21, 0x43]]  # even column in the low nibble
    assert pack_codes(torch.tensor([[-1, 7]], dtype=torch.int8), 4).tolist() == [[0x7F]]


@pytest.mark.parametrize("method, overrides", [
    ("RTN", ["--quant.weight.bit", "4", "--quant.weight.symmetric", "false",
             "--quant.weight.granularity", "per_group", "--quant.weight.group_size", "16"]),
    ("GPTQ", ["--quant.weight.bit", "8"]),
    ("RTN", ["--quant.weight.bit", "4", "--quant.act.granularity", "per_tensor", "--quant.act.static", "true"]),
])
def test_save_and_reload_gives_the_fake_quant_outputs(tmp_path, any_family, method, overrides):
    adapter = tiny_adapter(any_family)
    cfg = load_config(None, ["--quant.method", method, "--quant.weight.granularity", "per_channel",
                             "--quant.act.bit", "8", "--quant.act.granularity", "per_token",
                             "--calib.n_samples", "4", "--calib.seq_len", "16", "--save.real_embed_bit", "null",
                             *overrides])
    calib = CalibData(torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0)), {})
    quantize_model(adapter, cfg, calib)
    # an online transform travels with the checkpoint
    adapter.blocks[0].mlp.down_proj.input_transform = OnlineHadamard(128)
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = adapter.model(input_ids=ids).logits
    save_packed_model(adapter, cfg, tmp_path / "packed")
    model = load_packed_model(tmp_path / "packed")
    with torch.no_grad():
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_packed_file_is_smaller_than_float(tmp_path):
    adapter = tiny_adapter("llama", hidden_size=128, intermediate_size=512, vocab_size=64)
    cfg = load_config(None, ["--quant.method", "RTN", "--quant.weight.bit", "4"])
    quantize_model(adapter, cfg, None)
    save_packed_model(adapter, cfg, tmp_path / "p")
    linear_params = sum(m.in_features * m.out_features for b in adapter.blocks
                        for m in adapter.block_linears(b).values())
    size = (tmp_path / "p" / "model.safetensors").stat().st_size
    float_size = sum(p.numel() * 4 for p in adapter.model.parameters())
    # 4-bit linears take half a byte per weight (plus scales); the rest stays float32 here
    assert size < float_size - linear_params * 4 * 0.8


def test_quantize_rows_against_a_loop():
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    w[2] = 0.0
    codes, scale = quantize_rows(w)
    for r in range(6):
        s = w[r].abs().max().item() / 127 or 1.0
        assert scale[r, 0].item() == pytest.approx(s, rel=1e-6)
        want = [max(-127, min(127, round(v / s))) for v in w[r].tolist()]
        assert codes[r].tolist() == want
    assert (dequantize_rows(codes, scale, torch.float32) - w).abs().max() <= scale.max() / 2 + 1e-7


@pytest.mark.parametrize("family, tied", [("llama", True), ("qwen2", False)])
def test_int8_embeddings_and_lm_head(tmp_path, family, tied):
    adapter = tiny_adapter(family, tie_word_embeddings=tied)
    assert adapter.model.config.tie_word_embeddings == tied
    assert (adapter.model.lm_head.weight is adapter.model.model.embed_tokens.weight) == tied
    cfg = load_config(None, ["--quant.method", "RTN", "--quant.weight.bit", "4"])   # real_embed_bit: 8 (default)
    quantize_model(adapter, cfg, None)
    save_packed_model(adapter, cfg, tmp_path / "p")
    tensors, meta = read_packed(tmp_path / "p")
    emb_keys = sorted(k[: -len(".int8")] for k in tensors if k.endswith(".int8"))
    assert emb_keys == (["model.embed_tokens.weight"] if tied else ["lm_head.weight", "model.embed_tokens.weight"])
    assert not any(k in tensors for k in ("model.embed_tokens.weight", "lm_head.weight"))
    # reference: the fake-quant model whose embedding and lm_head rows were rounded to int8
    with torch.no_grad():
        for module in {id(m): m for m in (adapter.model.get_input_embeddings(),
                                          adapter.model.get_output_embeddings())}.values():
            module.weight.copy_(dequantize_rows(*quantize_rows(module.weight), module.weight.dtype))
        ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(5))
        expected = adapter.model(input_ids=ids).logits
        model = load_packed_model(tmp_path / "p")
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
