"""The integer KV cache: the deployed form of ``quant.kvcache`` gives the fake-quant model's logits (8 and 4
bits, symmetric and asymmetric, per token and per group, with R3's key rotation), decoding token by token
equals one prefill, its bytes are the codes and ranges, and settings it cannot store are refused."""

import pytest
import torch

from conftest import calib_ids, logits, rel_diff, tiny_adapter
from llmc.config import QuantizerConfig
from llmc.errors import ConfigError
from llmc.quant.int_kv_cache import IntKVCache, enable_int_kv_cache
from llmc.utils import cache_kwarg
from llmc.quant.kvcache import enable_kv_quant
from llmc.quant.quantizer import Quantizer
from llmc.quant.transforms import OnlineHadamard

SHAPE = dict(hidden_size=48, intermediate_size=80, num_attention_heads=4, num_key_value_heads=2, head_dim=12)


def kv_quantizer(bit=4, symmetric=False, granularity="per_token", group_size=-1):
    return Quantizer(QuantizerConfig(bit=bit, symmetric=symmetric, granularity=granularity, group_size=group_size))


def attns(adapter):
    return [b.get_submodule(adapter.layout.attn) for b in adapter.blocks]


@pytest.mark.parametrize("bit, symmetric, granularity, group", [
    (8, True, "per_token", -1), (4, False, "per_token", -1), (4, True, "per_group", 6), (8, False, "per_group", 4)])
@pytest.mark.parametrize("r3", [False, True])
def test_the_integer_cache_gives_the_fake_quant_logits(bit, symmetric, granularity, group, r3):
    ids = calib_ids(seed=3).input_ids
    q = kv_quantizer(bit, symmetric, granularity, group)
    transform = OnlineHadamard(12) if r3 else None
    fake = tiny_adapter("llama", **SHAPE)
    float_logits = logits(fake, ids)
    enable_kv_quant(fake, q, q, transform)
    expected = logits(fake, ids)
    assert rel_diff(float_logits, expected) > 1e-4                   # the KV quantization is visible
    deployed = tiny_adapter("llama", **SHAPE)
    enable_int_kv_cache(deployed.model, q, attns(deployed), transform)
    assert rel_diff(expected, logits(deployed, ids)) < 1e-5


def test_decoding_token_by_token_equals_the_prefill():
    ids = calib_ids(n=1, seq=20, seed=4).input_ids
    adapter = tiny_adapter("qwen2", **SHAPE)
    enable_int_kv_cache(adapter.model, kv_quantizer(4), attns(adapter), OnlineHadamard(12))
    with torch.no_grad():
        full = adapter.model(input_ids=ids).logits
        out = adapter.model(input_ids=ids[:, :12], use_cache=True)
        cache = out.past_key_values
        assert isinstance(cache, IntKVCache)
        steps = [out.logits[:, -1]]
        for t in range(12, 20):
            out = adapter.model(input_ids=ids[:, t:t + 1], use_cache=True, **{cache_kwarg(adapter.model): cache})
            steps.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(steps[:-1], 1), full[:, 11:19], atol=1e-4, rtol=1e-4)
    assert cache.get_seq_length() == 20


@pytest.mark.parametrize("bit, symmetric, per_token_head", [(8, True, 12 + 4), (4, True, 6 + 4), (4, False, 6 + 4 + 1)])
def test_the_cache_holds_codes_and_ranges(bit, symmetric, per_token_head):
    """Bytes per token and kv head: head_dim codes at 8 bits (half at 4), a float32 scale, a uint8 zero."""
    adapter = tiny_adapter("llama", **SHAPE)
    enable_int_kv_cache(adapter.model, kv_quantizer(bit, symmetric), attns(adapter))
    ids = calib_ids(n=1, seq=10).input_ids
    with torch.no_grad():
        cache = adapter.model(input_ids=ids, use_cache=True).past_key_values
    layers, kv_heads = len(adapter.blocks), 2
    assert cache.nbytes() == 2 * layers * kv_heads * 10 * per_token_head


def test_settings_an_integer_cache_cannot_store_are_refused():
    adapter = tiny_adapter("llama", **SHAPE)
    with pytest.raises(ConfigError, match="quant.kvcache: an integer KV cache needs a dynamic range per token"):
        enable_int_kv_cache(adapter.model, kv_quantizer(8, True, "per_tensor"), attns(adapter))
    with pytest.raises(ConfigError, match="quant.kvcache.bit"):
        enable_int_kv_cache(adapter.model, kv_quantizer(6), attns(adapter))


@pytest.mark.parametrize("method", ["QuaRot", "SpinQuant"])
def test_a_packed_checkpoint_deploys_the_cache_with_r3(method, tmp_path):
    """A rotation run with a 4-bit KV cache (R3 on by default): the packed checkpoint's loader installs the
    integer cache with the key rotation, and gives the fake-quant model's logits."""
    from llmc.pipeline import quantize_model
    from llmc.quant.int_kv_cache import IntKVLayer
    from llmc.quant.packed import load_packed_model, save_packed_model
    from test_algorithms import make_cfg
    adapter = tiny_adapter("llama", **SHAPE)
    ids = calib_ids(seed=3).input_ids
    extra = ["--quant.special.learn_rotations", "false"] if method == "SpinQuant" else []
    cfg = make_cfg(method, "--quant.special.weight_algo", "rtn", "--quant.kvcache.bit", "4",
                   "--quant.kvcache.symmetric", "false", "--quant.kvcache.granularity", "per_token",
                   "--save.real_embed_bit", "null", "--save.save_real", "true", *extra)
    algo = quantize_model(adapter, cfg, calib_ids()).algorithm
    assert algo.r3
    fake = logits(adapter, ids)
    save_packed_model(adapter, algo.cfg, tmp_path / "p")
    model = load_packed_model(tmp_path / "p")
    assert isinstance(model.model.layers[0].self_attn.query_transform, OnlineHadamard)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    assert isinstance(out.past_key_values.layers[0], IntKVLayer)
    torch.testing.assert_close(out.logits, fake, atol=1e-4, rtol=1e-4)


def test_save_real_refuses_a_kv_cache_it_cannot_store():
    from test_algorithms import make_cfg
    with pytest.raises(ConfigError, match="quant.kvcache: save.save_real deploys an integer KV cache"):
        make_cfg("RTN", "--quant.kvcache.bit", "8", "--quant.kvcache.granularity", "per_tensor",
                 "--save.save_real", "true")


@pytest.mark.parametrize("int_cache", [False, True])
def test_track2_reports_the_cache_footprint(int_cache):
    from llmc_slm.tracks.inference import measure_model
    adapter = tiny_adapter("llama", **SHAPE)
    if int_cache:
        enable_int_kv_cache(adapter.model, kv_quantizer(4, False), attns(adapter))
    ids = calib_ids(n=1, seq=16).input_ids
    result = measure_model(adapter.model, ids, warmup=0, runs=1, decode_tokens=4, decode_runs=1, last_logit_runs=0,
                           macs=False, long_context=40)
    out, long = result["kv_cache"], result["long_context"]
    assert long["context"] == 40 and long["peak_mem"] > 0 and long["decode_tps"] > 0
    assert long["kv_cache"]["bytes"] == long["kv_cache"]["bytes_per_token"] * (40 + 8)   # the prompt + 8 steps
    layers, kv_heads = len(adapter.blocks), 2
    per_head = (6 + 4 + 1) if int_cache else 12 * 4           # int4 codes + scale + zero, or float32 values
    assert out["kind"] == ("int4" if int_cache else "float32")
    assert out["bytes_per_token"] == 2 * layers * kv_heads * per_head
    assert out["bytes"] == out["bytes_per_token"] * 20               # 16 prefilled + 4 decode steps cached
    assert out["bytes_at_8192"] == 8192 * out["bytes_per_token"]


def test_sliding_window_layers_are_refused_for_the_integer_cache():
    adapter = tiny_adapter("gemma3_text")
    with pytest.raises(ConfigError, match="sliding-window layers"):
        enable_int_kv_cache(adapter.model, kv_quantizer(8), attns(adapter))


@pytest.mark.parametrize("gran", ["per_head", "per_channel"])
def test_kv_granularities_that_would_mislead_are_refused_in_one_line(gran):
    from test_algorithms import make_cfg
    with pytest.raises(ConfigError) as e:
        make_cfg("RTN", "--quant.kvcache.bit", "8", "--quant.kvcache.granularity", gran)
    assert str(e.value).startswith(f"quant.kvcache.granularity: '{gran}'") and "\n" not in str(e.value)
