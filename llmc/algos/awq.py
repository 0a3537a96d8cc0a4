"""AWQ (Lin et al., MLSys 2024, "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration"), as the official ``mit-han-lab/llm-awq`` runs it (``awq/quantize/pre_quant.py``,
``auto_scale.py``, ``auto_clip.py``).

Per block, on the inputs of the float block:

1. Scale search (``auto_scale_block``), for each subset whose input a per-channel scale can be folded into
   (``llmc.models`` subsets: norm -> q/k/v inspected through the attention module, v -> o only when v_proj
   and o_proj have the same shape, i.e. not under grouped-query attention (llm-awq PR #67), norm -> gate/up
   inspected through the MLP, up -> down): with ``x_mean`` the mean |x| of each input channel over the
   calibration tokens (``get_act_scale``), for ``alpha = 0, 1/n_grid, ..., (n_grid - 1)/n_grid``::

       s = clamp(x_mean^alpha, 1e-4);  s = s / sqrt(max(s) min(s))
       W_j <- Q(W_j diag(s)) diag(s)^-1   for the subset's linears (the others stay float)

   and keep the ``s`` with the least mean squared error of the inspected module's output against the float
   one (Section 3.2, eq. 4-5; only weights are quantized in the search). Every subset is searched on the
   unmodified block; then all scales are applied: the producer's output divided by ``s`` (a norm through
   the adapter's norm contract, or up_proj's / v_proj's rows), the linears' columns multiplied.
2. Clipping search (``auto_clip_block``), on every linear but q_proj and k_proj ("due to qk bmm"): with
   the inputs divided by the scales, ``clip_tokens`` evenly strided tokens, per output channel and
   quantization group the clamp ``max|w| (1 - i / n_grid)``, ``i < max_shrink n_grid``, with the least
   mean squared error of the group's partial products ``x_g . w_g`` after quantization; weights are
   clamped to ``[-m, m]`` in place.
3. The next block's inputs are the float block's outputs, computed before 1-2 (as ``run_awq`` does).

The weights are then quantized by round-to-nearest with the run's quantizer (``quant.weight``: bits,
group size, symmetric or not; the official default is asymmetric ``zero_point`` with groups of 128), and
activations as configured (the official code is weight-only; for W4A8 the same transform is followed by
per-token activation quantization, which the search does not see).

Deviations: calibration text is WikiText-2 windows (``calib``: the configs' 128 x 512 tokens, 32 x 512 in the
CPU profile; the official code reads 128 Pile-validation *lines*, skips those over 512 tokens, joins the rest
and cuts them into 512-token blocks, so it has fewer than 128 blocks of several short documents each; the
Pile is not available here); SmolLM2's configs use groups of 64, since 128 does not divide its width of 576
(``pseudo_quantize_tensor`` asserts divisibility; Qwen2.5 and Gemma-3 keep 128); the searches' arithmetic
is float32 and the block runs in the model's dtype (bfloat16 on AMX CPUs; the official code is float16 throughout); the
asymmetric grid includes 0 (``llmc.quant.quantizer``; ``pseudo_quantize_tensor`` does not widen the range);
losses are averaged over calibration batches of ``calib.bs`` windows (the official search passes all
windows at once; the mean squared error is the same); the partial products of the clipping search are a
batched matrix product (the same sums without the ``[out, tokens, groups, group_size]`` intermediate).
"""

from __future__ import annotations

import torch
from torch import nn

from ..methods.awq import AWQSpecial
from .base import BlockwiseAlgorithm, _block_output
from .smoothquant import fold_scales

CLIP_SKIP = ("q_proj", "k_proj")   # the official ``["q_", "k_", "query", "key", "Wqkv"]``


def search_ratios(n_grid: int) -> list:
    return [i / n_grid for i in range(n_grid)]


def candidate_scales(x_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = clamp(x_mean^alpha, 1e-4)``, normalised by ``sqrt(max(s) min(s))`` (``_search_module_scale``)."""
    s = x_mean.float().pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


class _Calls:
    """A module's calls during one run over the calibration batches: positional and keyword arguments and
    the output (its first element for a tuple)."""

    def __init__(self):
        self.args, self.kwargs, self.outputs = [], [], []

    def hook(self, module, args, kwargs, output):
        kwargs = dict(kwargs)
        if not args:      # the decoder layer calls attention with hidden_states=...
            args = (kwargs.pop("hidden_states"),)
        self.args.append(tuple(a.detach() if torch.is_tensor(a) else a for a in args))
        self.kwargs.append(kwargs)
        self.outputs.append(_block_output(output).detach())

    def rerun(self, module: nn.Module) -> list:
        return [_block_output(module(*a, **k)) for a, k in zip(self.args, self.kwargs)]

    def inputs(self) -> torch.Tensor:
        """The first argument of every call as [tokens, features]."""
        return torch.cat([a[0].reshape(-1, a[0].shape[-1]) for a in self.args])


def mse(outputs: list, targets: list) -> float:
    """Mean squared error over every element of every batch."""
    total = sum(float((o.float() - t.float()).pow(2).sum()) for o, t in zip(outputs, targets))
    return total / sum(t.numel() for t in targets)


class AWQ(BlockwiseAlgorithm):
    special_cls = AWQSpecial

    def subsets_to_scale(self, subsets):
        for s in subsets:
            if s.prev_op is None:
                continue
            if s.name == "attn_out" and s.prev_op.weight.shape != next(iter(s.layers.values())).weight.shape:
                continue    # v -> o only without GQA (the official shape test, llm-awq PR #67)
            yield s

    @torch.no_grad()
    def process_block(self, index, block, inputs):
        """One forward of the float block records every subset's inspected module (its inputs, keyword
        arguments and output) and gives the next block's inputs; then the scale and clipping searches."""
        sp = self.special
        subsets = self.adapter.subsets(block)
        calls = {s.name: _Calls() for s in subsets}
        handles = [s.inspect.register_forward_hook(calls[s.name].hook, with_kwargs=True) for s in subsets]
        try:
            self.next_hidden = [_block_output(block(h, **kw)) for h, kw in zip(inputs.hidden, inputs.batch_kwargs())]
        finally:
            for h in handles:
                h.remove()
        feats = {s.name: calls[s.name].inputs() for s in subsets}   # every subset's input, [tokens, features]
        if sp.auto_scale:
            chosen = [(s, self.search_scale(s, calls[s.name], feats[s.name]))
                      for s in self.subsets_to_scale(subsets)]
            for s, (scales, alpha, loss) in chosen:
                fold_scales(self.adapter, s.prev_op, list(s.layers.values()), scales, self.adapter.head_dim)
                feats[s.name] = feats[s.name] / scales.to(feats[s.name].device, feats[s.name].dtype)
                self.log_block(index, **{f"awq_{s.name}_alpha": alpha, f"awq_{s.name}_loss": loss})
        if sp.auto_clip:
            for s in subsets:
                for name, linear in s.layers.items():
                    if name.rsplit(".", 1)[-1] not in CLIP_SKIP:
                        shrink = self.search_clip(linear.weight, feats[s.name])
                        self.log_block(index, **{f"awq_clip_mean_shrink.{name}": shrink})

    def search_scale(self, s, calls: _Calls, x: torch.Tensor):
        """(scales, alpha, loss) of the best grid point for subset ``s`` whose input is ``x`` [tokens, features]."""
        layers = list(s.layers.values())
        x_mean = x.abs().float().mean(0)                 # get_act_scale
        quantizer = self.weight_quantizer()
        originals = [lin.weight.detach().clone() for lin in layers]
        best = (None, None, float("inf"))
        try:
            for alpha in search_ratios(self.special.n_grid):
                scales = candidate_scales(x_mean, alpha)
                for lin, w in zip(layers, originals):
                    s_in = scales.to(w.device).view(1, -1)
                    lin.weight.copy_((quantizer.fake_quant(w.float() * s_in) / s_in).to(w.dtype))
                loss = mse(calls.rerun(s.inspect), calls.outputs)
                if loss < best[2]:
                    best = (scales, alpha, loss)
        finally:
            for lin, w in zip(layers, originals):
                lin.weight.copy_(w)
        if best[0] is None:
            raise FloatingPointError(f"AWQ: no finite loss in the scale search of {s.name}")
        return best

    def search_clip(self, weight: nn.Parameter, x: torch.Tensor) -> float:
        """Clamp ``weight`` in place to the best ``max|w_g| (1 - i / n_grid)`` of each output channel and
        group; returns the mean shrink chosen."""
        sp = self.special
        quantizer = self.weight_quantizer()
        w = weight.detach().float()
        out_f, in_f = w.shape
        g = quantizer.group_size if quantizer.granularity == "per_group" else in_f
        step = max(1, x.shape[0] // sp.clip_tokens)
        xs = x[::step].float().reshape(-1, in_f // g, g).transpose(0, 1)          # [groups, tokens, g]
        wg = w.reshape(out_f, in_f // g, g)                                        # [out, groups, g]
        org_max = wg.abs().amax(dim=-1, keepdim=True)                              # [out, groups, 1]

        def partial(wq):   # x_g . w_g for every token, output channel and group: [out, tokens, groups]
            return torch.bmm(xs, wq.permute(1, 2, 0)).permute(2, 1, 0)
        org_out = partial(wg)
        best_err = torch.full_like(org_max, float("inf"))
        best_max = org_max.clone()
        for i in range(int(sp.max_shrink * sp.n_grid)):
            max_val = org_max * (1 - i / sp.n_grid)
            cur = torch.maximum(torch.minimum(wg, max_val), -max_val)
            q = quantizer.fake_quant(cur.reshape(out_f, in_f)).reshape(out_f, in_f // g, g)
            err = (partial(q) - org_out).pow(2).mean(dim=1).unsqueeze(-1)           # [out, groups, 1]
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better, max_val, best_max)
        clamped = torch.maximum(torch.minimum(wg, best_max), -best_max).reshape(out_f, in_f)
        weight.data.copy_(clamped.to(weight.dtype))
        return float((1 - best_max / org_max.clamp(min=1e-12)).mean())
