"""KV-cache quantization through the attention function (off unless ``quant.kvcache`` is set).

Transformers 5 calls attention through a registry of attention functions; we register
``llmc_kvquant``, which fake-quantizes the key and value states that would be cached (after RoPE for
keys, as they are stored) and then runs the model's usual scaled-dot-product attention. The layout there
is [batch, kv_heads, tokens, head_dim], so ``per_token`` gives one range per token per head.

An optional ``query_key_transform`` on the attention module (SpinQuant's R3: an online Hadamard on Q and
K after RoPE, which leaves Q K^T unchanged) is applied first.

This is the fake-quant form, used in calibration and evaluation. The deployed model stores the same codes
in an integer cache (``llmc.quant.int_kv_cache``, installed by the packed checkpoint's loader).
"""

from __future__ import annotations

from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "llmc_kvquant"


def kvquant_attention(module, query, key, value, attention_mask, **kwargs):
    transform = getattr(module, "query_key_transform", None)
    if transform is not None:
        query, key = transform(query), transform(key)
    kq = getattr(module, "k_quantizer", None)
    vq = getattr(module, "v_quantizer", None)
    if kq is not None:
        key = kq.fake_quant(key)
    if vq is not None:
        value = vq.fake_quant(value)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(NAME, kvquant_attention)


def enable_kv_quant(adapter, k_quantizer=None, v_quantizer=None, query_key_transform=None) -> None:
    """Install the quantizers (and an optional Q/K transform) on every attention module."""
    import copy
    for block in adapter.blocks:
        attn = block.get_submodule(adapter.layout.attn)
        attn.k_quantizer = copy.deepcopy(k_quantizer)
        attn.v_quantizer = copy.deepcopy(v_quantizer)
        attn.query_key_transform = query_key_transform
    adapter.model.set_attn_implementation(NAME)
