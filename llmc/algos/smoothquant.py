"""SmoothQuant (Xiao et al., ICML 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization
for Large Language Models").

Activation outliers are migrated into the weights with a per-input-channel scale (eq. 4):

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha),      Y = (X diag(s)^-1) (diag(s) W)

where max|X_j| is taken over the calibration tokens and max|W_j| over every linear that reads X. The
division is folded into the operator that produces X (``prev_op``: an RMSNorm's weight, or the rows of
``v_proj`` / ``up_proj``), the multiplication into the columns of the consuming linears, so the float
model is unchanged (``transformed`` equals ``pretrain``).

Smoothed by default: norm -> q/k/v and norm -> gate/up (the paper's attention and FFN inputs). Optional:
v -> o (GQA-aware: one scale per v channel, shared by the query heads that read it) and up -> down.
``alpha`` defaults to 0.8 as in LLMC's SmoothQuant configs for Llama-family models.
"""

from __future__ import annotations

import torch
from torch import nn

from ..methods.smoothquant import SmoothQuantSpecial
from .base import BlockwiseAlgorithm, absmax_reducer, collect_inputs


def smoothing_scales(act_max: torch.Tensor, weights: list, alpha: float, eps: float = 1e-5) -> torch.Tensor:
    """Eq. 4: per input channel, from activation maxima and the max |W| over every consuming linear."""
    w_max = torch.cat([w.detach().abs().float() for w in weights], dim=0).amax(dim=0)
    s = act_max.float().clamp(min=eps).pow(alpha) / w_max.clamp(min=eps).pow(1 - alpha)
    return s.clamp(min=eps)


@torch.no_grad()
def fold_scales(adapter, prev_op: nn.Module, layers: list, s: torch.Tensor, head_dim: int | None = None) -> None:
    """prev_op's output channels divided by ``s`` (a norm through the adapter's norm contract; a linear's
    rows and bias); the consuming linears' input columns multiplied by ``s``, expanded to their width
    under GQA (``head_dim`` given)."""
    if isinstance(prev_op, nn.Linear):
        prev_op.weight.div_(s.view(-1, 1).to(prev_op.weight.dtype))
        if prev_op.bias is not None:
            prev_op.bias.div_(s.to(prev_op.bias.dtype))
    else:
        adapter.divide_norm(prev_op, s)
    for lin in layers:
        s_in = s if lin.in_features == s.numel() else expand_kv_to_heads(s, lin.in_features, head_dim)
        lin.weight.mul_(s_in.view(1, -1).to(lin.weight.dtype))


def expand_kv_to_heads(s_kv: torch.Tensor, width: int, head_dim: int) -> torch.Tensor:
    """[kv_heads * d] -> [heads * d]: query head h reads kv head h // group (HF's ``repeat_kv`` order)."""
    kv_heads = s_kv.numel() // head_dim
    group = width // s_kv.numel()
    return s_kv.view(kv_heads, 1, head_dim).expand(kv_heads, group, head_dim).reshape(-1)


def reduce_heads_to_kv(per_channel: torch.Tensor, kv_width: int, head_dim: int) -> torch.Tensor:
    """[heads * d] -> [kv_heads * d], the max over the query heads that share a kv head."""
    group = per_channel.numel() // kv_width
    return per_channel.view(kv_width // head_dim, group, head_dim).amax(dim=1).reshape(-1)


class SmoothQuant(BlockwiseAlgorithm):
    special_cls = SmoothQuantSpecial

    def subsets_to_smooth(self, block):
        sp = self.special
        for s in self.adapter.subsets(block):
            if s.prev_op is None:
                continue
            if s.after_norm or (s.name == "attn_out" and sp.smooth_vo) or (s.name == "mlp_out" and sp.smooth_down):
                yield s

    def process_block(self, index, block, inputs):
        subsets = list(self.subsets_to_smooth(block))
        act_max = collect_inputs(block, inputs, {s.name: next(iter(s.layers.values())) for s in subsets},
                                 absmax_reducer)
        for s in subsets:
            layers = list(s.layers.values())
            a_max, weights = act_max[s.name], [lin.weight for lin in layers]
            if isinstance(s.prev_op, nn.Linear) and s.prev_op.out_features != layers[0].in_features:
                # v -> o under GQA: work in v's channel space, shared across the query heads of a kv head
                kv_width, d = s.prev_op.out_features, self.adapter.head_dim
                a_max = reduce_heads_to_kv(a_max, kv_width, d)
                weights = [reduce_heads_to_kv(w.abs().amax(dim=0), kv_width, d).unsqueeze(0) for w in weights]
            scales = smoothing_scales(a_max, weights, self.special.alpha)
            fold_scales(self.adapter, s.prev_op, layers, scales, self.adapter.head_dim)
            self.log_block(index, **{f"smooth_{s.name}_max_scale": float(scales.max())})
