"""The model adapter: where a decoder's parts live, as data, so algorithms never test model types.

An adapter wraps a loaded Hugging Face causal LM and answers the questions every method asks: the list
of blocks, the embeddings, the final norm and lm_head, and per block the *subsets* that smoothing and
rotation act on (LLMC's vocabulary):

- ``prev_op``: the operator whose output feeds the subset (a norm, or a linear such as v_proj), so a
  per-channel scale can be folded into it;
- ``layers``: the linears that read that same input;
- ``inspect``: the module to run to see the subset's effect on the block's output.

Families differ only in their ``Layout`` (module paths, the config keys that name head counts, which
layers skip RoPE); see ``llmc.models.families``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn


@dataclass(frozen=True)
class SubsetSpec:
    name: str
    prev_op: Optional[str]
    layers: tuple[str, ...]
    inspect: str


@dataclass
class Subset:
    """A subset resolved against one block: module objects, keyed by their path inside the block."""
    name: str
    prev_op: Optional[nn.Module]
    prev_op_name: Optional[str]
    layers: dict[str, nn.Linear]
    inspect: nn.Module

    @property
    def input_name(self) -> str:
        return next(iter(self.layers))


LLAMA_STYLE_SUBSETS = (
    SubsetSpec("attn_in", "input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
               "self_attn"),
    SubsetSpec("attn_out", "self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
    SubsetSpec("mlp_in", "post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    SubsetSpec("mlp_out", "mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
)


@dataclass(frozen=True)
class Layout:
    """Where things are in one family of decoder-only models (module paths relative to the model)."""
    hf_model_types: tuple[str, ...]
    blocks: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    rotary: str = "model.rotary_emb"
    attn: str = "self_attn"
    q_proj: str = "self_attn.q_proj"
    k_proj: str = "self_attn.k_proj"
    v_proj: str = "self_attn.v_proj"
    o_proj: str = "self_attn.o_proj"
    gate_proj: str = "mlp.gate_proj"
    up_proj: str = "mlp.up_proj"
    down_proj: str = "mlp.down_proj"
    attn_norm: str = "input_layernorm"
    mlp_norm: str = "post_attention_layernorm"
    subsets: tuple[SubsetSpec, ...] = LLAMA_STYLE_SUBSETS
    # config key listing, per layer, whether RoPE is used (SmolLM3's NoPE layers); None: RoPE everywhere
    rope_layers_key: Optional[str] = None
    notes: dict = field(default_factory=dict)


def get_module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


class DecoderModel:
    """Adapter over a Hugging Face decoder-only causal LM; subclasses only set ``layout``."""

    layout: Layout

    def __init__(self, model: nn.Module, tokenizer=None, source=None):
        self.model = model
        self.tokenizer = tokenizer
        self.source = source

    # -- parts ------------------------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def blocks(self) -> nn.ModuleList:
        return get_module(self.model, self.layout.blocks)

    @property
    def embed(self) -> nn.Embedding:
        return get_module(self.model, self.layout.embed)

    @property
    def final_norm(self) -> nn.Module:
        return get_module(self.model, self.layout.final_norm)

    @property
    def lm_head(self) -> nn.Linear:
        return get_module(self.model, self.layout.lm_head)

    def subsets(self, block: nn.Module) -> list[Subset]:
        out = []
        for spec in self.layout.subsets:
            out.append(Subset(
                name=spec.name,
                prev_op=get_module(block, spec.prev_op) if spec.prev_op else None,
                prev_op_name=spec.prev_op,
                layers={name: get_module(block, name) for name in spec.layers},
                inspect=get_module(block, spec.inspect),
            ))
        return out

    def block_linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        """Every linear of a block, by path inside the block, in execution order."""
        return {name: lin for s in self.subsets(block) for name, lin in s.layers.items()}

    # -- facts ------------------------------------------------------------------------------------
    @property
    def num_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.num_heads

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.config.hidden_size // self.num_heads

    @property
    def tied_embeddings(self) -> bool:
        return self.lm_head.weight is self.embed.weight or \
            self.lm_head.weight.data_ptr() == self.embed.weight.data_ptr()

    def rope_layers(self) -> list[bool]:
        """Per layer, whether RoPE is applied to Q and K."""
        n = self.config.num_hidden_layers
        key = self.layout.rope_layers_key
        flags = getattr(self.config, key, None) if key else None
        return [bool(f) for f in flags] if flags is not None else [True] * n

    def arch_facts(self) -> dict:
        c = self.config
        rope = getattr(c, "rope_parameters", None) or {}
        theta = rope.get("rope_theta") if isinstance(rope, dict) else None
        if theta is None:
            theta = getattr(c, "rope_theta", None)
        return {
            "model_type": c.model_type,
            "adapter": type(self).__name__,
            "layers": c.num_hidden_layers,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "heads": self.num_heads,
            "kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": c.vocab_size,
            "rope_theta": theta,
            "rope_layers": sum(self.rope_layers()),
            "tied_embeddings": self.tied_embeddings,
            "attention_bias": bool(getattr(self.blocks[0].get_submodule(self.layout.q_proj), "bias", None)
                                   is not None),
            "norm": type(self.final_norm).__name__,
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype
