"""The supported decoder families, as data (torch-free). A new Llama-like family is one ``Layout`` and one
line; a family whose norms compute differently declares it in its layout (``norm_offset``, ``post_norms``).

All of these share Hugging Face's Llama module tree (``model.layers[i].self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj``); differences such as Qwen2's q/k/v biases, tied embeddings or grouped-query
attention are read from the loaded model, not from the family name. Gemma-3 differs in its norms, which
its layout declares: four per block, stored as ``1 + w`` (``Gemma3RMSNorm``), the MLP's pre-norm named
``pre_feedforward_layernorm``, norms on both sub-blocks' outputs (``post_attention_layernorm``,
``post_feedforward_layernorm``) and per-head q/k norms. Its other traits (GeGLU, sliding-window layers,
embeddings scaled by sqrt(hidden), one KV head of 256) live in the Hugging Face modules and change no
method's algebra.
"""

from ..registry import MODEL_REGISTRY
from .layout import Layout

LLAMA = Layout(hf_model_types=("llama",))
QWEN2 = Layout(hf_model_types=("qwen2",))
# SmolLM3 skips RoPE in every fourth layer ("NoPE"); its config lists the layers that use it.
SMOLLM3 = Layout(hf_model_types=("smollm3",), rope_layers_key="no_rope_layers")
MISTRAL = Layout(hf_model_types=("mistral",))
GEMMA3 = Layout(hf_model_types=("gemma3_text",), mlp_norm="pre_feedforward_layernorm", norm_offset=1.0,
                post_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
                qk_norms=("self_attn.q_norm", "self_attn.k_norm"))

for _names, _layout in ((("Llama", "SmolLM"), LLAMA), (("Qwen2",), QWEN2), (("SmolLM3",), SMOLLM3),
                        (("Mistral",), MISTRAL), (("Gemma3",), GEMMA3)):
    for _name in _names:
        MODEL_REGISTRY[_name] = _layout


def layout_of(name: str) -> Layout:
    """The layout registered as ``model.type`` ``name`` (an adapter class's ``layout`` for a plug-in)."""
    entry = MODEL_REGISTRY[name]
    return entry if isinstance(entry, Layout) else entry.layout


def adapter_for_hf_type(model_type: str) -> str | None:
    """The registered adapter name whose layout declares this Hugging Face ``model_type``."""
    for name in MODEL_REGISTRY:
        if model_type in layout_of(name).hf_model_types:
            return name
    return None
