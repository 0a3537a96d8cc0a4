"""The supported decoder families, as data. A new Llama-like family is one ``Layout`` and one line.

All of them share Hugging Face's Llama module tree (``model.layers[i].self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj``, two RMSNorms per block); differences such as Qwen2's q/k/v biases, tied
embeddings or grouped-query attention are read from the loaded model, not from the family name.
"""

from ..registry import register_model
from .base import DecoderModel, Layout


@register_model("Llama", "SmolLM")
class Llama(DecoderModel):
    layout = Layout(hf_model_types=("llama",))


@register_model("Qwen2")
class Qwen2(DecoderModel):
    layout = Layout(hf_model_types=("qwen2",))


@register_model("SmolLM3")
class SmolLM3(DecoderModel):
    # SmolLM3 skips RoPE in every fourth layer ("NoPE"); its config lists the layers that use it.
    layout = Layout(hf_model_types=("smollm3",), rope_layers_key="no_rope_layers")


@register_model("Mistral")
class Mistral(DecoderModel):
    layout = Layout(hf_model_types=("mistral",))


def adapter_for_hf_type(model_type: str) -> str | None:
    """The registered adapter name whose layout declares this Hugging Face ``model_type``."""
    from ..registry import MODEL_REGISTRY
    for name, cls in MODEL_REGISTRY.items():
        if model_type in cls.layout.hf_model_types:
            return name
    return None
