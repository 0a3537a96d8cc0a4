"""Adapters on tiny random Llama, Qwen2 and SmolLM3 models: parts, subsets and facts, all from data."""

import pytest
import torch

from conftest import tiny_adapter, tiny_hf_model
from llmc.models.families import adapter_for_hf_type
from llmc import catalog
from llmc.registry import MODEL_REGISTRY


def test_registry_names_follow_llmc():
    catalog.load()
    for name in ("Llama", "SmolLM", "Qwen2", "SmolLM3"):
        assert name in MODEL_REGISTRY
    assert adapter_for_hf_type("qwen2") == "Qwen2" and adapter_for_hf_type("smollm3") == "SmolLM3"
    assert adapter_for_hf_type("gpt2") is None


def test_parts_and_subsets(any_family):
    a = tiny_adapter(any_family)
    assert len(a.blocks) == 2
    assert a.embed.weight.shape == (256, 64)
    assert a.lm_head.out_features == 256
    block = a.blocks[0]
    subsets = a.subsets(block)
    assert [s.name for s in subsets] == ["attn_in", "attn_out", "mlp_in", "mlp_out"]
    attn_in, attn_out, mlp_in, mlp_out = subsets
    assert attn_in.prev_op is block.input_layernorm
    assert list(attn_in.layers) == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    assert attn_in.inspect is block.self_attn
    assert attn_out.prev_op is block.self_attn.v_proj and list(attn_out.layers) == ["self_attn.o_proj"]
    assert mlp_in.prev_op is block.post_attention_layernorm
    assert list(mlp_in.layers) == ["mlp.gate_proj", "mlp.up_proj"]
    assert mlp_out.prev_op is block.mlp.up_proj and mlp_out.input_name == "mlp.down_proj"
    # every linear of the block appears exactly once, and every subset's layers share one input width
    linears = a.block_linears(block)
    assert len(linears) == 7
    for s in subsets:
        assert len({lin.in_features for lin in s.layers.values()}) == 1


def test_subset_inputs_really_feed_the_layers(any_family):
    """prev_op's output is the input of the subset's layers (checked with hooks on a real forward)."""
    a = tiny_adapter(any_family)
    block = a.blocks[1]
    seen = {}
    hooks = []
    for s in a.subsets(block):
        if s.prev_op is None:
            continue
        hooks.append(s.prev_op.register_forward_hook(
            lambda m, i, o, n=s.name: seen.__setitem__(("prev", n), o.detach().clone())))
        first = next(iter(s.layers.values()))
        hooks.append(first.register_forward_pre_hook(
            lambda m, i, n=s.name: seen.__setitem__(("in", n), i[0].detach().clone())))
    a.model(torch.randint(0, 256, (1, 12)))
    for h in hooks:
        h.remove()
    for name in ("attn_in", "mlp_in"):
        torch.testing.assert_close(seen[("prev", name)], seen[("in", name)])
    # v_proj output feeds o_proj through attention (a mix over positions and heads): shapes only
    assert seen[("prev", "attn_out")].shape[-1] == a.num_kv_heads * a.head_dim
    assert seen[("in", "attn_out")].shape[-1] == a.num_heads * a.head_dim


def test_arch_facts(any_family):
    a = tiny_adapter(any_family)
    facts = a.arch_facts()
    assert facts["layers"] == 2 and facts["hidden_size"] == 64 and facts["heads"] == 4
    assert facts["kv_heads"] == 2 and facts["head_dim"] == 16 and facts["vocab_size"] == 256
    assert facts["attention_bias"] == (any_family == "qwen2")  # Qwen2 has q/k/v biases
    assert facts["parameters"] == sum(p.numel() for p in a.model.parameters())


def test_rope_layers_come_from_config():
    a = tiny_adapter("smollm3", num_hidden_layers=4, no_rope_layers=[1, 1, 1, 0])
    assert a.rope_layers() == [True, True, True, False]
    assert tiny_adapter("llama").rope_layers() == [True, True]


def test_tied_embeddings_detected():
    assert tiny_adapter("llama", tie_word_embeddings=True).tied_embeddings
    assert not tiny_adapter("llama", tie_word_embeddings=False).tied_embeddings


@pytest.mark.parametrize("config_file, params", [("smollm2-135m.json", 134_515_008),
                                                 ("qwen2.5-0.5b.json", 494_032_768)])
def test_random_architectures_match_published_parameter_counts(config_file, params):
    """The kept configs reproduce the parameter counts the paper prints (Table 3: 134.52M, 494.03M)."""
    import json
    from transformers import AutoConfig, AutoModelForCausalLM
    from llmc_slm.zoo import CONFIG_DIR
    raw = {k: v for k, v in json.loads((CONFIG_DIR / config_file).read_text()).items() if not k.startswith("_")}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**raw))
    assert sum(p.numel() for p in model.parameters()) == params
