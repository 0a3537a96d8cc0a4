"""Rotation utilities for rotation-based quantization (QuaRot, Ashkboos et al. 2024; SpinQuant, Liu et al.
2024): fold norms, untie embeddings, and apply the four rotations of SpinQuant's Figure 1 to a
Llama-style decoder through the model adapter (no model type is tested).

Conventions. Hidden states are row vectors. A rotation ``R`` (orthogonal, ``R R^T = I``) maps the
residual stream ``x`` to ``x R``; a linear ``y = x W^T + b`` (``W`` is ``[out, in]``):

* reading a rotated input (input side): ``W <- W R``; its bias is unchanged (Qwen2's q/k/v biases);
* producing a rotated output (output side): ``W <- R^T W``, ``b <- b R``.

R1 (hidden x hidden) rotates the residual stream: embeddings ``E <- E R1``; q/k/v and gate/up read it
(input side); o_proj and down_proj write it (output side, biases too); lm_head reads it. RMSNorm is
rotation-invariant only without its per-channel weight, so each norm's weight is folded first into the
linears that read it (``W <- W diag(g)``) and set to 1, the final norm into lm_head (QuaRot's
``fuse_layer_norms``). The embedding mean is NOT subtracted: that step of the reference code is for
LayerNorm models and changes an RMSNorm model (spcl/QuaRot#7, facebookresearch/SpinQuant#14). Tied
embeddings are untied first (lm_head gets its own copy), as SpinQuant does for Llama 3.2.

R2 (head_dim x head_dim, per layer) rotates each head's values: v_proj's output rows of every kv head
(``W_h <- R2^T W_h``, ``b_h <- b_h R2``) and o_proj's input columns of every query head
(``W[:, h] <- W[:, h] R2``). Under grouped-query attention a query head reads kv head ``h // group``; the
same R2 for all heads of a layer keeps that exact (softmax weights mix rows of one kv head, so the
attention output of every query head is rotated by R2 too).

R3: an online Hadamard on Q and K after RoPE (``Q H (K H)^T = Q K^T``), applied by the KV-cache hook
(``llmc.quant.kvcache``). R4: an online Hadamard on down_proj's input, ``x -> x H^T / sqrt(n)``, with
``W <- W H^T / sqrt(n)`` folded offline (``apply_hadamard`` on the weight rows), so ``x W^T`` is
unchanged. Both use ``llmc.quant.hadamard`` and work for every ``n = 2^k m`` it supports (576, 896,
1536, 4864, 64, ...), unlike the reference code's fixed list.

The permanent updates run in float64 and are cast back to the weight's dtype. ``rotated_block_params``
gives the same rotated weights as differentiable functions of R1/R2 (for SpinQuant's learning).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..quant.hadamard import apply_hadamard
from ..quant.packed import HEAD_TRANSFORM_ATTR

__all__ = [
    "untie_embeddings", "fold_norms", "rotate_embeddings", "rotate_lm_head", "rotate_block_r1",
    "rotate_block_r2", "hadamard_down_proj", "add_online_transform", "rotated_block_params",
    "random_orthogonal_matrix", "rotation_error", "tied_head_transform", "mark_tied_head",
]


# ----------------------------------------------------------------------------------- tensor math
def rot_in(w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Input side: the linear reads ``x R`` instead of ``x``: ``W R``."""
    return w @ r


def rot_out(w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Output side: the linear writes ``y R`` instead of ``y``: ``R^T W``."""
    return r.t() @ w


def rot_heads_out(w: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Each head's output rows ``W_h`` [d, in] become ``R2^T W_h`` (v_proj)."""
    d = r2.shape[0]
    return torch.einsum("dk,hdi->hki", r2, w.reshape(-1, d, w.shape[1])).reshape(w.shape)


def rot_heads_bias(b: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    d = r2.shape[0]
    return (b.reshape(-1, d) @ r2).reshape(b.shape)


def rot_heads_in(w: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Each head's input columns ``W[:, h]`` [out, d] become ``W[:, h] R2`` (o_proj)."""
    d = r2.shape[0]
    return (w.reshape(w.shape[0], -1, d) @ r2).reshape(w.shape)


def random_orthogonal_matrix(n: int, seed: Optional[int] = None, dtype=torch.float32, device=None):
    """A Haar-random orthogonal matrix (QR of a Gaussian matrix, signs fixed by diag(R)); the reference
    code's ``rotate_mode: random``."""
    g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q.to(dtype=dtype, device=device)


def rotation_error(r: torch.Tensor) -> float:
    """max |R R^T - I| (0 for an exactly orthogonal matrix)."""
    r = r.detach().double()
    return float((r @ r.t() - torch.eye(r.shape[0], dtype=r.dtype, device=r.device)).abs().max())


# ------------------------------------------------------------------------------------ in place
def _set(param: nn.Parameter, value: torch.Tensor) -> None:
    param.data.copy_(value.to(param.dtype))


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def _lin(block: nn.Module, path: str) -> nn.Linear:
    return block.get_submodule(path)


@torch.no_grad()
def untie_embeddings(adapter) -> bool:
    """Give lm_head its own copy of a tied embedding matrix; returns whether it was tied."""
    if not adapter.tied_embeddings:
        return False
    head = adapter.lm_head
    embed = adapter.embed.weight
    head.weight = nn.Parameter(embed.detach().clone(), requires_grad=embed.requires_grad)
    for cfg in {id(c): c for c in (adapter.model.config, adapter.model.config.get_text_config())}.values():
        cfg.tie_word_embeddings = False
    return True


@torch.no_grad()
def fold_norms(adapter) -> None:
    """Fold every pre-norm's gain into the linears that read its output (through the adapter's norm
    contract); the norms then apply gain 1. Call after :func:`untie_embeddings` (the final norm goes into
    lm_head only). A layout with norms after its sub-blocks is refused (R1 cannot pass through them)."""
    lay = adapter.layout
    adapter.refuse_post_norms("a residual-stream rotation (R1)", "quant.special.r1")
    if adapter.tied_embeddings:
        raise RuntimeError("fold_norms: untie the embeddings first (the final norm folds into lm_head)")
    for block in adapter.blocks:
        adapter.fold_norm_into(block.get_submodule(lay.attn_norm),
                               [_lin(block, p) for p in (lay.q_proj, lay.k_proj, lay.v_proj)])
        adapter.fold_norm_into(block.get_submodule(lay.mlp_norm), [_lin(block, p) for p in (lay.gate_proj, lay.up_proj)])
    adapter.fold_norm_into(adapter.final_norm, [adapter.lm_head])


def tied_head_transform(final_norm_weight: torch.Tensor, r1: torch.Tensor) -> torch.Tensor:
    """``M = R1^T diag(g) R1`` (float64), with which a rotated model whose embeddings were tied can tie them
    again: the rotated embedding is ``E' = E R1`` and the rotated lm_head (final norm ``g`` folded in) is
    ``W' = E diag(g) R1 = E' M``, so ``logits = (h M^T) E'^T``. A deployed checkpoint then stores ``E'``
    once plus one hidden x hidden matrix instead of a second vocabulary-sized one."""
    r = _f64(r1)
    return r.t() @ (_f64(final_norm_weight).to(r.device).unsqueeze(1) * r)


def mark_tied_head(model: nn.Module, transform: Optional[torch.Tensor]) -> None:
    """Record on the model that ``lm_head.weight == embed.weight @ transform`` (``None`` clears it); the
    packed checkpoint (``llmc.quant.packed``) then stores the head tied, with the transform beside it."""
    setattr(model, HEAD_TRANSFORM_ATTR, None if transform is None else transform.detach().float().cpu())


@torch.no_grad()
def rotate_embeddings(adapter, r1: torch.Tensor, chunk: int = 16384) -> None:
    w = adapter.embed.weight
    r = _f64(r1).to(w.device)
    for i in range(0, w.shape[0], chunk):
        w.data[i:i + chunk] = (_f64(w[i:i + chunk]) @ r).to(w.dtype)


@torch.no_grad()
def rotate_lm_head(adapter, r1: torch.Tensor, chunk: int = 16384) -> None:
    w = adapter.lm_head.weight
    r = _f64(r1).to(w.device)
    for i in range(0, w.shape[0], chunk):
        w.data[i:i + chunk] = rot_in(_f64(w[i:i + chunk]), r).to(w.dtype)


@torch.no_grad()
def rotate_block_r1(adapter, block: nn.Module, r1: torch.Tensor) -> None:
    lay = adapter.layout
    r = _f64(r1).to(adapter.device)
    for path in (lay.q_proj, lay.k_proj, lay.v_proj, lay.gate_proj, lay.up_proj):
        lin = _lin(block, path)
        _set(lin.weight, rot_in(_f64(lin.weight), r))
    for path in (lay.o_proj, lay.down_proj):
        lin = _lin(block, path)
        _set(lin.weight, rot_out(_f64(lin.weight), r))
        if lin.bias is not None:
            _set(lin.bias, _f64(lin.bias) @ r)


@torch.no_grad()
def rotate_block_r2(adapter, block: nn.Module, r2: torch.Tensor) -> None:
    lay = adapter.layout
    r = _f64(r2).to(adapter.device)
    v, o = _lin(block, lay.v_proj), _lin(block, lay.o_proj)
    _set(v.weight, rot_heads_out(_f64(v.weight), r))
    if v.bias is not None:
        _set(v.bias, rot_heads_bias(_f64(v.bias), r))
    _set(o.weight, rot_heads_in(_f64(o.weight), r))


@torch.no_grad()
def hadamard_down_proj(adapter, block: nn.Module) -> None:
    """R4's offline half: down_proj's weight becomes ``W H^T / sqrt(n)`` (its input is ``x H^T /
    sqrt(n)`` online, see :func:`add_online_transform`)."""
    lin = _lin(block, adapter.layout.down_proj)
    _set(lin.weight, apply_hadamard(_f64(lin.weight)))


def add_online_transform(linear: nn.Linear, transform: nn.Module):
    """An online transform's half on the float model (R4's Hadamard, QuaRot's head mixing before o_proj): a
    forward pre-hook ``x -> T(x)``. Returns the hook handle. (Deployment uses ``FakeQuantLinear``'s
    ``input_transform`` instead: a float checkpoint saved with ``save_trans`` cannot express this hook.)"""
    def pre_hook(module, args):
        return (transform(args[0]),) + tuple(args[1:])
    return linear.register_forward_pre_hook(pre_hook)


# ---------------------------------------------------------------------------- differentiable
def rotated_block_params(adapter, index: int, r1: Optional[torch.Tensor], r2: Optional[torch.Tensor],
                         dtype=torch.float32) -> dict:
    """The block's weights (and biases) that R1 / R2 change, as differentiable functions of them,
    keyed by their full parameter name in the model (for ``torch.func.functional_call``). The block's
    own parameters are read, not modified."""
    lay = adapter.layout
    block = adapter.blocks[index]
    prefix = f"{lay.blocks}.{index}."
    out = {}

    def cur(path, attr="weight"):
        name = f"{prefix}{path}.{attr}"
        return out[name] if name in out else getattr(_lin(block, path), attr).to(dtype)

    if r1 is not None:
        for path in (lay.q_proj, lay.k_proj, lay.v_proj, lay.gate_proj, lay.up_proj):
            out[f"{prefix}{path}.weight"] = rot_in(cur(path), r1)
        for path in (lay.o_proj, lay.down_proj):
            out[f"{prefix}{path}.weight"] = rot_out(cur(path), r1)
            if _lin(block, path).bias is not None:
                out[f"{prefix}{path}.bias"] = cur(path, "bias") @ r1
    if r2 is not None:
        out[f"{prefix}{lay.v_proj}.weight"] = rot_heads_out(cur(lay.v_proj), r2)
        if _lin(block, lay.v_proj).bias is not None:
            out[f"{prefix}{lay.v_proj}.bias"] = rot_heads_bias(cur(lay.v_proj, "bias"), r2)
        out[f"{prefix}{lay.o_proj}.weight"] = rot_heads_in(cur(lay.o_proj), r2)
    return out
