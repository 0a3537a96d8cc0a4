"""The model adapter: where a decoder's parts live, as data, so algorithms never test model types.

An adapter wraps a loaded Hugging Face causal LM and answers the questions every method asks: the list
of blocks, the embeddings, the final norm and lm_head, and per block the *subsets* that smoothing and
rotation act on (LLMC's vocabulary):

- ``prev_op``: the operator whose output feeds the subset (a norm, or a linear such as v_proj), so a
  per-channel scale can be folded into it;
- ``layers``: the linears that read that same input;
- ``inspect``: the module to run to see the subset's effect on the block's output.

Families differ only in their ``Layout`` (module paths, how their norms compute, which layers skip
RoPE; ``llmc.models.layout``); see ``llmc.models.families``. The adapter owns the model contract: the
methods fold scales into norms and norms into linears only through its norm methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError
from .layout import Layout, SubsetSpec

__all__ = ["DecoderModel", "Subset", "Layout", "SubsetSpec", "get_module", "make_adapter"]


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

    @property
    def after_norm(self) -> bool:
        """The subset reads a norm's output (a smoothing / LET point), not a linear's."""
        return self.prev_op is not None and not isinstance(self.prev_op, nn.Linear)


def get_module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


class DecoderModel:
    """Adapter over a Hugging Face decoder-only causal LM, driven by a :class:`Layout` (given, or a
    subclass's ``layout``)."""

    layout: Layout

    def __init__(self, model: nn.Module, tokenizer=None, source=None, layout: Optional[Layout] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        if layout is not None:
            self.layout = layout

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

    # -- the norm contract ------------------------------------------------------------------------
    # Every method that moves a scale into or out of a norm goes through these, so that a family whose
    # norms compute (1 + w) * x / rms(x) (norm_offset 1) is folded correctly, and one with norms after
    # its sub-blocks (post_norms) is refused where a transform cannot pass through them.
    def check_norm(self, norm: nn.Module) -> None:
        """A foldable norm: RMS-style (``gain * x / rms(x)``), no bias."""
        if getattr(norm, "bias", None) is not None or "rmsnorm" not in type(norm).__name__.lower():
            raise NotImplementedError(f"norm folding supports RMSNorm (y = gain * x / rms(x)) only, got "
                                      f"{type(norm).__name__}")

    def norm_gain(self, norm: nn.Module) -> torch.Tensor:
        """The per-channel factor the norm applies, ``norm_offset + w`` (float64)."""
        return norm.weight.detach().to(torch.float64) + self.layout.norm_offset

    def norm_weight_for_gain(self, norm: nn.Module, gain: torch.Tensor) -> torch.Tensor:
        """The weight that makes the norm apply ``gain`` (differentiable in ``gain``)."""
        return gain - self.layout.norm_offset

    def divided_norm_weight(self, weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The norm weight whose gain is ``weight``'s gain divided by ``s`` (differentiable in both; the
        norm is unchanged): SmoothQuant's and OmniQuant's ``X / s`` folded into a norm."""
        offset = self.layout.norm_offset
        return (weight + offset) / s - offset if offset else weight / s

    @torch.no_grad()
    def set_norm_weight(self, norm: nn.Module, weight: torch.Tensor) -> None:
        """Write a norm's new weight. A ``(1 + w)`` norm (``norm_offset``) keeps it in float32 when the model's
        dtype is coarser: what the norm applies is ``1 + w``, and a gain divided by a large smoothing scale
        has ``w`` near -1, where bfloat16's spacing (2^-8) is a large part of the gain (on a tiny Gemma-3 in
        bfloat16, SmoothQuant's transform moved the logits 2.2% with bfloat16 weights). Gemma-3's norms
        compute in float32 anyway (``1 + w.float()``); a plain RMSNorm keeps the model's dtype."""
        if self.layout.norm_offset and norm.weight.dtype in (torch.bfloat16, torch.float16):
            norm.weight = nn.Parameter(weight.detach().to(torch.float32), requires_grad=norm.weight.requires_grad)
        else:
            norm.weight.copy_(weight.detach().to(norm.weight.dtype))

    @torch.no_grad()
    def divide_norm(self, norm: nn.Module, s: torch.Tensor) -> None:
        """In place: the norm's output (gain, and a bias if any) divided by ``s`` per channel."""
        if self.layout.norm_offset:
            s64 = s.detach().to(torch.float64).view(-1)
            self.set_norm_weight(norm, self.norm_weight_for_gain(norm, self.norm_gain(norm) / s64))
        else:   # gain = w: divided in the weight's own dtype (the arithmetic SmoothQuant's code uses)
            norm.weight.div_(s.view(-1).to(norm.weight.dtype))
        if getattr(norm, "bias", None) is not None:
            norm.bias.div_(s.view(-1).to(norm.bias.dtype))

    @torch.no_grad()
    def fold_norm_into(self, norm: nn.Module, linears: list) -> None:
        """The norm's gain multiplied into the input columns of ``linears`` (float64 products), and the
        norm set to gain 1: the function is unchanged (rotations need a norm without weight)."""
        self.check_norm(norm)
        gain = self.norm_gain(norm)
        for lin in linears:
            lin.weight.data.copy_((lin.weight.detach().to(torch.float64) * gain.unsqueeze(0)).to(lin.weight.dtype))
        norm.weight.data.fill_(1.0 - self.layout.norm_offset)

    def refuse_post_norms(self, what: str, key: str) -> None:
        """One line (ConfigError naming ``key``) if the layout has norms after its sub-blocks, through
        which ``what`` cannot pass."""
        if self.layout.post_norms:
            raise ConfigError(f"{key}: {what} cannot pass through the norms after each sub-block of "
                              f"{self.layout.hf_model_types[0]} ({', '.join(self.layout.post_norms)}): the "
                              f"norm's weight sits between the sub-block's output and the residual stream")

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


def make_adapter(name: str, model: nn.Module, tokenizer=None, source=None) -> DecoderModel:
    """The adapter registered as ``model.type`` ``name``: a :class:`Layout` (data; the usual case) or an
    adapter class of a plug-in family."""
    from ..registry import MODEL_REGISTRY
    entry = MODEL_REGISTRY[name]
    if isinstance(entry, Layout):
        return DecoderModel(model, tokenizer, source, layout=entry)
    return entry(model, tokenizer, source)
