"""GPTQ (Frantar et al., ICLR 2023, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"), usable alone and as the weight quantizer of other methods (SpinQuant).

Per linear, with calibration inputs X (tokens x in), the layer-wise objective ||WX - W_hat X||^2 has
Hessian H = 2 X^T X. Columns are quantized one at a time and the error of column q is spread over the
columns not yet quantized (OBQ's update, eq. 3 of the paper):

    delta_F = -(w_q - quant(w_q)) / [H_F^-1]_qq * (H_F^-1)_{:,q}

computed for all rows at once from the upper Cholesky factor of H^-1 (Algorithm 1, "Cholesky
reformulation"), with lazy batch updates over ``blocksize`` columns. ``percdamp`` adds
``percdamp * mean(diag H)`` to the diagonal; dead inputs (zero diagonal) get weight zero.
``act_order`` quantizes columns by decreasing diag(H). With per-group quantization, groups are the
contiguous column ranges of the *original* order; their ranges are fixed either on the fly as the sweep
reaches a group, or with ``static_groups`` from the weight before the sweep (both as the reference code,
``gptq.py`` of IST-DASLab/gptq). On the fly, a group's range comes from ``W[:, j:j + g]`` as it stood when
the current block of ``blocksize`` columns started: the reference reads ``W``, not the block's working copy
``W1`` that the lazy in-block updates have already changed. With ``act_order`` groups are always static:
the reference's dynamic groups would then be ranges of the *permuted* order (stored with a ``g_idx``),
which a packed per-group checkpoint cannot hold; the reference's ``--static-groups --act-order`` is this.

Grids: the quantizer's (``llmc.quant.quantizer``); the reference's symmetric grid is ``sym_grid: gptq``
(all ``2^b`` levels, ``s = 2 absmax / (2^b - 1)``), ours by default ``absmax / (2^(b-1) - 1)`` as the
other methods of this benchmark.

Blocks are processed subset by subset ("true sequential"): the inputs of o_proj are gathered after
q/k/v are quantized, and so on.
"""

from __future__ import annotations

import math

import torch

from ..methods.gptq import GPTQSpecial
from ..quant.quantizer import Quantizer
from .base import BlockwiseAlgorithm, collect_inputs


def hessian_reducer(acc, x):
    """Running H = 2/n sum x x^T over tokens (float32), kept with its token count."""
    x = x.float()
    if acc is None:
        acc = (torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device), 0)
    h, n = acc
    total = n + x.shape[0]
    h.mul_(n / total)
    h.addmm_(x.t(), x, alpha=2.0 / total)
    return h, total


def _column_params(quantizer: Quantizer, w_cols: torch.Tensor):
    """Scale/zero per row for a column range [out, k] (one range per row: per-channel on the slice)."""
    return quantizer.compute_params(w_cols)


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, quantizer: Quantizer, percdamp: float = 0.01,
                  blocksize: int = 128, act_order: bool = False, static_groups: bool = False):
    """Quantize ``weight`` [out, in] with GPTQ; return (dequantized weight in float32, scale, zero, loss).

    ``scale``/``zero`` are shaped as ``quantizer.compute_params`` returns them for the whole weight
    ([out, 1] per_channel / per_tensor, [out, in // g, 1] per_group), so the result can be re-quantized
    exactly by the same quantizer.
    """
    W = weight.detach().float().clone()
    out_f, in_f = W.shape
    per_group = quantizer.granularity == "per_group"
    g = quantizer.group_size if per_group else in_f
    if per_group and in_f % g:
        raise ValueError(f"group_size {g} does not divide the input width {in_f}")
    n_groups = in_f // g
    row_quantizer = quantizer if not per_group else Quantizer(
        bit=quantizer.bit, symmetric=quantizer.symmetric, granularity="per_channel",
        calib_algo=quantizer.calib_algo, sym_grid=quantizer.sym_grid, mse_grid=quantizer.mse_grid,
        mse_maxshrink=quantizer.mse_maxshrink, mse_norm=quantizer.mse_norm)

    # One range per row (or per tensor): as the reference's ``find_params(W)`` in ``fasterquant``,
    # from the weight before dead columns are zeroed.
    group_params = fixed = None
    if quantizer.granularity == "per_tensor":
        whole_scale, whole_zero = quantizer.compute_params(W)
        group_params, fixed = [(whole_scale.expand(out_f, 1), whole_zero.expand(out_f, 1))], True
    elif not per_group:
        group_params, fixed = [_column_params(row_quantizer, W)], True

    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    if group_params is None and (static_groups or act_order):
        # the reference's static_groups: every group's range from the (dead-zeroed) weight, before the sweep
        group_params = [_column_params(row_quantizer, W[:, k * g:(k + 1) * g]) for k in range(n_groups)]
        fixed = True
    elif group_params is None:
        group_params, fixed = [None] * n_groups, False

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
        invperm = torch.argsort(perm)

    damp = percdamp * torch.mean(torch.diag(H))
    H[torch.arange(in_f), torch.arange(in_f)] += damp
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    Q = torch.zeros_like(W)
    losses = torch.zeros(out_f, dtype=torch.float32, device=W.device)
    for i1 in range(0, in_f, blocksize):
        i2 = min(i1 + blocksize, in_f)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            orig_col = int(perm[col]) if perm is not None else col
            k = orig_col // g
            if not fixed and orig_col % g == 0:
                # as the reference: the group's columns of W as they stood when this block of columns
                # started (earlier blocks' lazy updates applied, this block's in-block updates not yet)
                group_params[k] = _column_params(row_quantizer, W[:, col:col + g])
            scale, zero = group_params[k]
            w = W1[:, i]
            d = Hinv1[i, i]
            q = row_quantizer.fake_quant(w.unsqueeze(1), scale, zero).squeeze(1)
            Q1[:, i] = q
            losses += (w - q).pow(2) / d ** 2 / 2
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

    if perm is not None:
        Q = Q[:, invperm]
    if per_group:
        scale = torch.stack([p[0] for p in group_params], dim=1)   # [out, n_groups, 1]
        zero = torch.stack([p[1] for p in group_params], dim=1)
    else:
        scale, zero = group_params[0]
    if not math.isfinite(float(losses.sum())):
        raise FloatingPointError("GPTQ produced a non-finite loss")
    return Q, scale, zero, float(losses.sum())


class GPTQ(BlockwiseAlgorithm):
    special_cls = GPTQSpecial

    def process_block(self, index, block, inputs):
        self.gptq_block(index, block, inputs)

    def gptq_block(self, index, block, inputs):
        """Quantize every linear of the block in place with GPTQ, subset by subset."""
        quantizer = self.weight_quantizer()
        if quantizer is None:
            return
        sp = self.special
        subsets = self.adapter.subsets(block)
        groups = [s.layers for s in subsets] if sp.true_sequential else [
            {k: v for s in subsets for k, v in s.layers.items()}]
        for layers in groups:
            stats = collect_inputs(block, inputs, layers, hessian_reducer)
            for name, linear in layers.items():
                q, scale, zero, loss = gptq_quantize(linear.weight, stats[name][0], quantizer, sp.percdamp,
                                                     sp.blocksize, sp.act_order, sp.static_groups)
                linear.weight.data.copy_(q.to(linear.weight.dtype))
                self.weight_params[f"blocks.{index}.{name}"] = (scale, zero)
                self.log_block(index, **{f"gptq_loss.{name}": loss})
