"""A decoder family as data (torch-free): where its parts live and how its norms compute.

A ``Layout`` names the module paths of one family (relative to the model, or to a block for the block's
parts) and declares its norm convention, the contract every method relies on when it folds a scale into a
norm or a norm into the linears after it:

- ``norm_offset``: a norm computes ``(offset + w) * x / rms(x)``: 0 for Llama-style RMSNorm (``w``), 1 for
  norms stored as ``1 + w`` (Gemma);
- ``post_norms``: norms applied to a sub-block's *output* before it joins the residual stream (Gemma-3's
  ``post_attention_layernorm`` / ``post_feedforward_layernorm``); empty for pre-norm-only families. A
  residual-stream rotation (SpinQuant's R1) cannot pass through them for free, and they are no smoothing
  points.
- ``qk_norms``: per-head norms applied to q and k after their projections (Gemma-3's ``q_norm`` /
  ``k_norm``): a scale on q_proj's / k_proj's rows does not pass through them (OmniQuant's q/k LET).

The *subsets* methods act on (LLMC's vocabulary) are derived from the same paths: ``attn_in`` (the
attention norm -> q/k/v), ``attn_out`` (v -> o), ``mlp_in`` (the MLP norm -> gate/up) and ``mlp_out``
(up -> down). ``llmc.models.families`` declares the built-in families; an adapter
(``llmc.models.base.DecoderModel``) answers the methods' questions from a layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class SubsetSpec:
    name: str
    prev_op: Optional[str]
    layers: tuple[str, ...]
    inspect: str


@dataclass(frozen=True)
class Layout:
    """Where things are in one family of decoder-only models, and how its norms compute."""
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
    attn_norm: str = "input_layernorm"            # the norm before attention
    mlp_norm: str = "post_attention_layernorm"    # the norm before the MLP (Llama names it after attention)
    mlp: str = "mlp"
    norm_offset: float = 0.0                      # a norm computes (norm_offset + w) * x / rms(x)
    post_norms: tuple[str, ...] = ()              # norms on a sub-block's output (Gemma-3); none for Llama
    qk_norms: tuple[str, ...] = ()                # per-head norms on q and k after the projections (Gemma-3)
    # config key listing, per layer, whether RoPE is used (SmolLM3's NoPE layers); None: RoPE everywhere
    rope_layers_key: Optional[str] = None
    notes: dict = field(default_factory=dict)

    @property
    def subsets(self) -> tuple[SubsetSpec, ...]:
        """The four subsets, derived from the paths above (never written twice)."""
        return (
            SubsetSpec("attn_in", self.attn_norm, (self.q_proj, self.k_proj, self.v_proj), self.attn),
            SubsetSpec("attn_out", self.v_proj, (self.o_proj,), self.o_proj),
            SubsetSpec("mlp_in", self.mlp_norm, (self.gate_proj, self.up_proj), self.mlp),
            SubsetSpec("mlp_out", self.up_proj, (self.down_proj,), self.down_proj),
        )

    @property
    def pre_norms(self) -> tuple[str, str]:
        return (self.attn_norm, self.mlp_norm)
