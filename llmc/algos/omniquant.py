"""OmniQuant (Shao et al., ICLR 2024, "OmniQuant: Omnidirectionally Calibrated Quantization for Large
Language Models").

Block by block, two sets of small parameters are trained by gradient descent so that the quantized block
reproduces the float block's output (eq. 1 of the paper)::

    argmin_{Theta1, Theta2} || F(W, X) - F(Q_w(W; Theta1, Theta2), Q_a(X; Theta2)) ||^2

* LWC, learnable weight clipping (Theta1, eq. 2): per output channel (per group with per_group
  weights) the quantizer's range is ``[beta * min(W), gamma * max(W)]`` with ``gamma = sigmoid(u)``,
  ``beta = sigmoid(l)``; ``u`` and ``l`` start at ``lwc_init`` = 4.0 (the official ``init_value``,
  sigmoid(4) = 0.982).  Passed to :class:`~llmc.quant.quantizer.Quantizer` as ``clip_max``/``clip_min``.
* LET, learnable equivalent transformation (Theta2, eq. 3-5): per-channel scales ``s`` with
  ``Y = (X / s) (diag(s) W)``, folded into the operator that produces ``X``:

  - ``input_layernorm -> q/k/v`` and ``post_attention_layernorm -> gate/up`` (the norm weight is
    divided by ``s``, the columns of the linears multiplied);
  - ``v_proj -> o_proj``: v's rows (and bias) divided, o's columns multiplied.  GQA-aware: one scale
    per v channel ([kv_heads * head_dim]), repeated for the query heads that read it;
  - ``q_proj / k_proj`` (the official ``qkt_smooth_scale``, init 1): q's rows (and bias) divided, k's
    multiplied, so ``Q K^T`` is unchanged.  GQA: one scale per kv channel, repeated for its query heads.

  The official code applies the q/k scale per channel to the q/k projection outputs, i.e. *before*
  RoPE (``smooth_q_k_temporary`` scales the q_proj/k_proj rows; RoPE is applied afterwards in the
  attention).  That is an exact equivalence only if the two channels of every rotary pair share one
  scale: with Hugging Face's ``rotate_half`` layout channel ``i`` rotates with ``i + head_dim / 2``
  (and ``cos``/``sin`` are equal for both), so ``RoPE(q / s) = RoPE(q) / s`` exactly when
  ``s_i = s_{i + d/2}``.  The official per-channel scale (128 free values per head for Llama) silently
  breaks that equivalence; here the parameter has ``head_dim / 2`` values per kv head, each shared by
  a rotary pair, so the fold is exact in RoPE layers and in SmolLM3's NoPE layers alike.  The scale
  only matters where Q/K are quantized: with this benchmark's protocol (linear inputs quantized, no KV
  cache quantization) per-channel weight ranges are invariant to row scaling and its gradient is ~0;
  with ``quant.kvcache`` set, keys/values are fake-quantized during training (after RoPE, as in the
  deployed model) and the scale is trained against that.  (The official code also fake-quantizes Q,
  K and V at the activation bit width inside attention; here only what the deployed model quantizes is
  quantized in training: linear inputs, plus K/V with ``quant.kvcache``.)

  A family with per-head norms on Q and K after their projections (``qk_norms`` in its layout: Gemma-3's
  ``q_norm`` / ``k_norm``) has no q/k LET: ``rms_norm(q / s) != rms_norm(q) / s``, so the scale cannot be
  folded into q_proj / k_proj (the official code has no such family).

  Initialisation, as the official code: ``s = act_max^alpha / w_max^(1 - alpha)`` (alpha = ``let_alpha``
  0.5, clamped at 1e-5), where ``act_max`` is the per-channel max |input| of q_proj / o_proj / up_proj
  over the calibration samples of the float model (the official ``act_scales`` from
  ``generate_act_scale_shift.py``), and ``w_max`` is the per-input-channel max |W| over output rows of
  that same linear's weight (q_proj for q/k/v, up_proj for gate/up, o_proj for v->o, reduced to kv
  channels under GQA by the max over the query heads). The absolute value is the current official
  code's (commit ae39458, 2023-12-13, "Update omniquant.py": ``module.weight.abs().max(dim=0)``); the
  first release (e8f3981) and LLMC take the *signed* maximum, available as ``let_init: signed_max``.
  During training and folding every scale goes through the official ``truncate_number``: magnitudes
  below 1e-2 become +-1e-2 (straight-through gradient).
  LET's channel *shift* (``let_shift``) is not supported, and the official code does not use it for
  Llama-style models either: ``use_shift`` is false there (``if is_llama or args.abits == 16``), the
  shifts it registers are zeros and are left out of the optimiser (``let_parameters(qlayer,
  use_shift)``). Folding ``(X - delta) / s`` would need a bias on the RMSNorm, which these models do not
  have, so ``let_shift: true`` is a config error.

Training (``quantize/omniquant.py`` of the official code): per block, AdamW with two parameter groups
(``let_lr`` 5e-3, ``lwc_lr`` 1e-2), weight decay ``wd`` 0, ``epochs`` 20 passes over the calibration
batches in order (batch size ``calib.bs``; the original's is 1), no gradient clipping.  The loss is the
MSE between the float model's block output (the float block on the float model's own inputs, computed
before anything changes) and the quantized block's output (LET applied as a temporary transform,
weights fake-quantized with LWC, linear inputs fake-quantized as configured; gradients by the
quantizers' straight-through estimator; unlike the official quantizer, whose zero point is rounded
without STE, :class:`Quantizer` rounds it with the STE, which only matters where values are clamped).  The quantized block's input is whatever the pipeline feeds
it: with ``quant_out: true`` (the official behaviour, used by the shipped configs) the outputs of the
already quantized blocks.  The float model's chain of inputs is kept alongside, so the target is always
the float model's output.  ``aug_loss`` (official ``--aug_loss``) adds the MSE to a second target, the
float block's output on the *quantized* chain's input (``fp_inps_2``), i.e.
``loss = MSE(F(x_fp), Fq(x_q)) + MSE(F(x_q), Fq(x_q))``.  Training runs in float32 (the block is cast
for the duration, then back to the model's dtype).

After training the LET is folded into the norms and linears and every weight is replaced by its
fake-quantized value with the learned clipping (the official ``smooth_and_quant_inplace``), and
``weight_params`` holds that grid's ``(scale, zero)``, so the deployed ``FakeQuantLinear`` reproduces
exactly the weights the training forward used.  The result is an ordinary model plus quantizers (the
``transformed`` evaluation is therefore the weight-quantized, LET-transformed model in float
activations).

Procedure (``keep_best: false``, the default and the shipped ``omni_*.yml`` configs): the official
one. Every block trains for ``epochs`` passes and keeps the parameters training ends with, even where
they are worse than the initial ones (recorded per block as ``ended_worse``). The official code stops
at a non-finite loss with ``pdb.set_trace()``; here the block's training stops before that step, the
block keeps the parameters it has, the event is recorded (``diverged``, ``reason``) and the run goes
on: a divergence is a result, never a crash. Per block the record has ``loss_init`` / ``loss_final``
(mean over the calibration batches before / after training, measured with the training forward; these
two extra forward passes are ours, for the record), ``loss_epochs``, ``chosen`` and ``train_seconds``.

Keep-best (``keep_best: true``, ours, the variant "OmniQuant+KB", configs ``omni_kb_*.yml``; not in the
official code): on SmolLM2 some blocks end *worse* than their initialisation (block 11, where the
massive activation appears: 53.8 at init, 124.4 after 5 epochs at the official learning rates). So an
attempt also stops at a batch loss above ``diverge_factor`` (10) x its initial loss, the loss over the
whole calibration set is measured for the end of training and for the epoch with the lowest running
loss, the lowest of those and the initial parameters is kept, and while that is the initial one the
block is retrained from its initialisation with both learning rates halved (``lr_retries``, 2). A block
whose every attempt diverged keeps its initial parameters (LET at its SmoothQuant-style init, LWC at
init); so does one whose loss is non-finite at initialisation (LET off).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Optional

import torch
from torch import nn
from torch.func import functional_call

from ..quant.quantizer import Quantizer
from ..methods.omniquant import OmniQuantSpecial
from .base import BlockwiseAlgorithm, _block_output
from .smoothquant import expand_kv_to_heads, reduce_heads_to_kv

log = logging.getLogger(__name__)

LET_MIN = 1e-2      # official truncate_number threshold for the LET scales
INIT_CLAMP = 1e-5   # official clamp of act / weight maxima and of the initial scale


def truncate_scale(s: torch.Tensor, threshold: float = LET_MIN) -> torch.Tensor:
    """Official ``truncate_number``: |s| < threshold becomes sign(s) * threshold (0 -> +threshold),
    with a straight-through gradient."""
    sign = torch.where(s < 0, -torch.ones_like(s), torch.ones_like(s))
    clipped = torch.where(s.abs() < threshold, sign * threshold, s)
    return s + (clipped - s).detach()


def _to_float32(obj):
    if torch.is_tensor(obj):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, tuple):
        return tuple(_to_float32(o) for o in obj)
    if isinstance(obj, list):
        return [_to_float32(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_float32(v) for k, v in obj.items()}
    return obj


class OmniBlockState:
    """The learnable parameters of one block (LET scales, LWC factors) and the temporary weights they
    give. The block's own parameters are never changed until :meth:`fold`."""

    def __init__(self, adapter, block: nn.Module, weight_quantizer: Optional[Quantizer], special):
        self.adapter, self.block, self.wq, self.special = adapter, block, weight_quantizer, special
        layout = adapter.layout
        self.head_dim = adapter.head_dim
        self.linears = adapter.block_linears(block)
        self.base_w = {n: m.weight.detach() for n, m in self.linears.items()}
        self.base_b = {n: (m.bias.detach() if m.bias is not None else None) for n, m in self.linears.items()}
        # LET groups: norm -> linears (scale per hidden channel), v -> o (scale per v channel)
        self.norm_groups = []   # (norm name, norm module, [linear names], representative linear name)
        self.vo = None          # (v name, o name)
        reps = (layout.q_proj, layout.up_proj, layout.o_proj)
        for s in adapter.subsets(block):
            if s.prev_op is None:
                continue
            names = list(s.layers)
            rep = next((n for n in names if n in reps), names[0])
            if s.after_norm:
                self.norm_groups.append((s.prev_op_name, s.prev_op, names, rep))
            elif s.name == "attn_out":
                self.vo = (s.prev_op_name, rep)
        self.q_name, self.k_name = layout.q_proj, layout.k_proj
        self.kv_width = self.linears[self.k_name].out_features
        if self.head_dim % 2:
            raise ValueError(f"OmniQuant: head_dim {self.head_dim} must be even (rotary pairs)")
        dev = self.base_w[self.q_name].device

        # LET scales (float32 Parameters), identity until init_let
        self.let_scales: dict[str, nn.Parameter] = {}
        if special.let:
            for norm_name, norm, _, _ in self.norm_groups:
                self.let_scales[norm_name] = nn.Parameter(torch.ones(norm.weight.shape[-1], device=dev))
            if self.vo is not None:
                self.let_scales["attn_out"] = nn.Parameter(torch.ones(self.kv_width, device=dev))
            if not layout.qk_norms:   # a per-head norm between the projections and Q K^T: no q/k LET
                self.let_scales["qk"] = nn.Parameter(
                    torch.ones(self.kv_width // self.head_dim, self.head_dim // 2, device=dev))
        # LWC factors, shaped like the weight quantizer's scale
        self.lwc_up: dict[str, nn.Parameter] = {}
        self.lwc_low: dict[str, nn.Parameter] = {}
        if special.lwc and weight_quantizer is not None:
            for n, w in self.base_w.items():
                shape = weight_quantizer.compute_params(w)[0].shape
                self.lwc_up[n] = nn.Parameter(torch.full(shape, float(special.lwc_init), device=dev))
                self.lwc_low[n] = nn.Parameter(torch.full(shape, float(special.lwc_init), device=dev))

    # -- parameters --------------------------------------------------------------------------------
    def let_parameters(self) -> list:
        return list(self.let_scales.values())

    def lwc_parameters(self) -> list:
        return list(self.lwc_up.values()) + list(self.lwc_low.values())

    @torch.no_grad()
    def init_let(self, act_max: dict, alpha: float, weight_max: str = "absmax") -> None:
        """Official init: s = act^alpha / w^(1 - alpha), act = max |x| of the representative linear's
        input, w = its weight's max |W| over output rows (``weight_max='signed_max'``: the signed max of
        the first release); the q/k scale stays 1."""
        def smooth(act, wmax):
            act, wmax = act.float().clamp(min=INIT_CLAMP), wmax.float().clamp(min=INIT_CLAMP)
            return (act.pow(alpha) / wmax.pow(1 - alpha)).clamp(min=INIT_CLAMP)

        def column_max(w):
            return (w.abs() if weight_max == "absmax" else w).max(dim=0).values

        for norm_name, _, _, rep in self.norm_groups:
            if norm_name in self.let_scales:
                self.let_scales[norm_name].copy_(smooth(act_max[rep], column_max(self.base_w[rep])))
        if "attn_out" in self.let_scales:
            _, o_name = self.vo
            act, wmax = act_max[o_name], column_max(self.base_w[o_name])
            if act.numel() != self.kv_width:   # GQA: to v's channel space, max over the query heads
                act = reduce_heads_to_kv(act.float(), self.kv_width, self.head_dim)
                wmax = reduce_heads_to_kv(wmax, self.kv_width, self.head_dim)
            self.let_scales["attn_out"].copy_(smooth(act, wmax))

    @torch.no_grad()
    def reset(self) -> None:
        """No LET (identity scales), LWC factors at their init."""
        for p in self.let_scales.values():
            p.fill_(1.0)
        for p in self.lwc_parameters():
            p.fill_(float(self.special.lwc_init))

    def clip_factors(self, name: str):
        if name not in self.lwc_up:
            return None, None
        return torch.sigmoid(self.lwc_up[name]), torch.sigmoid(self.lwc_low[name])

    def qk_scales(self):
        """(q scale [heads * d], k scale [kv_heads * d]): one value per rotary pair (i, i + d/2)."""
        p = truncate_scale(self.let_scales["qk"])
        s_k = torch.cat([p, p], dim=1).reshape(-1)
        s_q = expand_kv_to_heads(s_k, self.linears[self.q_name].out_features, self.head_dim)
        return s_q, s_k

    # -- the transform -------------------------------------------------------------------------------
    def transformed(self) -> tuple[dict, dict, dict]:
        """LET applied: (norm weights/biases by param key, linear weights, linear biases), float32,
        differentiable w.r.t. the LET scales."""
        W, B, norms = dict(self.base_w), dict(self.base_b), {}
        if not self.let_scales:
            return norms, W, B
        for norm_name, norm, names, _ in self.norm_groups:
            s = truncate_scale(self.let_scales[norm_name])
            norms[f"{norm_name}.weight"] = self.adapter.divided_norm_weight(norm.weight.detach(), s)
            if getattr(norm, "bias", None) is not None:
                norms[f"{norm_name}.bias"] = norm.bias.detach() / s
            for n in names:
                W[n] = W[n] * s.view(1, -1)
        if "attn_out" in self.let_scales:
            v, o = self.vo
            s = truncate_scale(self.let_scales["attn_out"])
            W[v] = W[v] / s.view(-1, 1)
            if B[v] is not None:
                B[v] = B[v] / s
            s_o = s if W[o].shape[1] == s.numel() else expand_kv_to_heads(s, W[o].shape[1], self.head_dim)
            W[o] = W[o] * s_o.view(1, -1)
        if "qk" not in self.let_scales:
            return norms, W, B
        s_q, s_k = self.qk_scales()
        W[self.q_name] = W[self.q_name] / s_q.view(-1, 1)
        W[self.k_name] = W[self.k_name] * s_k.view(-1, 1)
        if B[self.q_name] is not None:
            B[self.q_name] = B[self.q_name] / s_q
        if B[self.k_name] is not None:
            B[self.k_name] = B[self.k_name] * s_k
        return norms, W, B

    def quantized(self, W: dict) -> tuple[dict, dict]:
        """Weights fake-quantized with the LWC clipping: (weights, {name: (scale, zero)})."""
        if self.wq is None:
            return W, {}
        out, params = {}, {}
        for n, w in W.items():
            cmax, cmin = self.clip_factors(n)
            scale, zero = self.wq.compute_params(w, cmax, cmin)
            out[n] = self.wq.fake_quant(w, scale, zero)
            params[n] = (scale, zero)
        return out, params

    def call_params(self, quantize: bool = True) -> tuple[dict, dict]:
        """Parameter dict for ``functional_call`` (keys relative to the block), and the weight params."""
        norms, W, B = self.transformed()
        qparams = {}
        if quantize:
            W, qparams = self.quantized(W)
        params = dict(norms)
        for n in W:
            params[f"{n}.weight"] = W[n]
            if B[n] is not None:
                params[f"{n}.bias"] = B[n]
        return params, qparams

    @torch.no_grad()
    def fold(self, quantize: bool = True) -> tuple[dict, dict]:
        """Write the transformed (and fake-quantized) parameters into the block; return the weight
        params {linear name: (scale, zero)} and the weights written {linear name: weight}."""
        params, qparams = self.call_params(quantize)
        norms = {f"{name}.weight": norm for name, norm, _, _ in self.norm_groups}
        for key, value in params.items():
            if key in norms:   # through the norm contract ((1 + w) norms keep float32 weights)
                self.adapter.set_norm_weight(norms[key], value)
            else:
                self.block.get_parameter(key).copy_(value.detach())
        weights = {n: params[f"{n}.weight"].detach() for n in self.linears}
        return {n: (s.detach(), z.detach()) for n, (s, z) in qparams.items()}, weights


class OmniQuant(BlockwiseAlgorithm):
    special_cls = OmniQuantSpecial
    record_trained_weights = False   # tests: keep the trained fake-quant weights in self.trained_weights

    def __init__(self, adapter, cfg):
        super().__init__(adapter, cfg)
        self._fp_hidden = None          # the float model's inputs of the current block
        self.clip_factors: dict = {}    # "blocks.i.<path>" -> (gamma, beta) learned
        self.let_scales: dict = {}      # "blocks.i.<group>" -> learned LET scale
        self.trained_weights: dict = {}

    # -- the pipeline hooks --------------------------------------------------------------------------
    def quantize(self, calib) -> None:
        self._fp_hidden = None
        try:
            super().quantize(calib)
        finally:
            self._fp_hidden = None

    def make_state(self, block) -> OmniBlockState:
        return OmniBlockState(self.adapter, block, self.weight_quantizer(), self.special)

    def process_block(self, index, block, inputs):
        t0 = time.perf_counter()
        sp = self.special
        dtype = next(block.parameters()).dtype
        q_in = inputs.hidden                                    # the quantized chain (or float, no quant_out)
        fp_in = self._fp_hidden if self._fp_hidden is not None else q_in
        # per batch (a smaller last batch has its own attention mask); the float32 copies made once
        converted = {id(inputs.kwargs): _to_float32(inputs.kwargs)}
        if inputs.last_kwargs is not None:
            converted[id(inputs.last_kwargs)] = _to_float32(inputs.last_kwargs)
        kwargs = [converted[id(kw)] for kw in inputs.batch_kwargs()]
        block.float()
        try:
            state = self.make_state(block)
            targets, act_max = self._float_targets(block, state, fp_in, kwargs)
            aug = self._plain_outputs(block, q_in, kwargs) if sp.aug_loss else None
            if sp.let:
                state.init_let(act_max, sp.let_alpha, sp.let_init)
            info = self._train(index, block, state, q_in, kwargs, targets, aug)
            weight_params, weights = state.fold(quantize=state.wq is not None)
            if self.record_trained_weights:
                self.trained_weights.update({f"blocks.{index}.{n}": w for n, w in weights.items()})
            del weights
        finally:
            block.to(dtype)
        for name, (scale, zero) in weight_params.items():
            key = f"blocks.{index}.{name}"
            self.weight_params[key] = (scale, zero)
            cmax, cmin = state.clip_factors(name)
            if cmax is not None:
                self.clip_factors[key] = (cmax.detach().clone(), cmin.detach().clone())
        for g, p in state.let_scales.items():
            self.let_scales[f"blocks.{index}.{g}"] = truncate_scale(p.detach()).clone()
        self._fp_hidden = [t.to(fp_in[0].dtype) for t in targets]   # the float model's next inputs
        info["train_seconds"] = time.perf_counter() - t0
        if state.lwc_up:
            for key, factors in (("lwc_gamma_mean", state.lwc_up), ("lwc_beta_mean", state.lwc_low)):
                info[key] = float(torch.cat([torch.sigmoid(p.detach()).flatten() for p in factors.values()]).mean())
        self.log_block(index, **info)
        log.info("OmniQuant block %d: loss %.4g -> %.4g%s (%.1f s)", index, info["loss_init"], info["loss_final"],
                 " DIVERGED: " + info["reason"] if info.get("diverged") else "", info["train_seconds"])

    # -- pieces --------------------------------------------------------------------------------------
    @torch.no_grad()
    def _float_targets(self, block, state, fp_in, kwargs):
        """The float block's outputs on the float chain (float32), and the per-channel max |input| of
        the representative linears (the official act_scales)."""
        reps = [g[3] for g in state.norm_groups] + ([state.vo[1]] if state.vo else [])
        act_max: dict = {}
        handles = []
        for name in reps:
            def hook(m, args, n=name):
                x = args[0].detach()
                m_ = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
                act_max[n] = m_ if n not in act_max else torch.maximum(act_max[n], m_)
            handles.append(state.linears[name].register_forward_pre_hook(hook))
        try:
            targets = [_block_output(block(h.float(), **kw)).float() for h, kw in zip(fp_in, kwargs)]
        finally:
            for h in handles:
                h.remove()
        return targets, act_max

    @torch.no_grad()
    def _plain_outputs(self, block, hidden, kwargs):
        return [_block_output(block(h.float(), **kw)).float() for h, kw in zip(hidden, kwargs)]

    @contextlib.contextmanager
    def _quantized_forward(self, block, state):
        """Linear inputs fake-quantized (as deployed), and K/V when quant.kvcache is set."""
        aq = self.act_quantizer()
        handles = []
        if aq is not None:
            for lin in state.linears.values():
                handles.append(lin.register_forward_pre_hook(lambda m, args: (aq.fake_quant(args[0]),) + args[1:]))
        attn = old_impl = None
        if self.qcfg.kvcache is not None:
            from ..quant.kvcache import NAME
            attn = block.get_submodule(self.adapter.layout.attn)
            attn.k_quantizer, attn.v_quantizer = Quantizer(self.qcfg.kvcache), Quantizer(self.qcfg.kvcache)
            old_impl = self.adapter.model.config._attn_implementation
            self.adapter.model.set_attn_implementation(NAME)
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            if attn is not None:
                del attn.k_quantizer, attn.v_quantizer
                self.adapter.model.set_attn_implementation(old_impl)

    def _losses(self, block, state, q_in, kwargs, targets, aug):
        """Mean loss per batch with the current parameters (no gradients)."""
        out = []
        with torch.no_grad():
            for j, h in enumerate(q_in):
                out.append(float(self._loss(block, state, h, kwargs[j], targets[j], aug[j] if aug else None)))
        return out

    def _loss(self, block, state, h, kwargs, target, aug_target):
        """The training loss of one batch (``kwargs``: that batch's keyword arguments)."""
        params, _ = state.call_params(quantize=True)
        y = _block_output(functional_call(block, params, (h.float(),), kwargs))
        loss = torch.nn.functional.mse_loss(y, target)
        if aug_target is not None:
            loss = loss + torch.nn.functional.mse_loss(y, aug_target)
        return loss

    def _train(self, index, block, state, q_in, kwargs, targets, aug) -> dict:
        """Train one block; returns its log entry (``loss_init`` / ``loss_final``: the mean loss over the
        calibration batches before / after, measured with the training forward and no gradients)."""
        sp = self.special
        params = state.let_parameters() + state.lwc_parameters()
        with self._quantized_forward(block, state):
            init = self._losses(block, state, q_in, kwargs, targets, aug)
            loss_init = sum(init) / len(init)
            info = {"loss_init": float(loss_init), "diverged": False}
            if sp.epochs <= 0 or not params:
                info.update(loss_final=float(loss_init), loss_epochs=[], epochs_done=0, chosen="init")
                return info
            if not sp.keep_best:
                return self._train_official(index, block, state, q_in, kwargs, targets, aug, init, params, info)
            if not math.isfinite(loss_init):
                return self._give_up(index, block, state, q_in, kwargs, targets, aug, info,
                                     "non-finite loss at initialisation", [])
            return self._train_keep_best(index, block, state, q_in, kwargs, targets, aug, init, params, info)

    def _train_official(self, index, block, state, q_in, kwargs, targets, aug, init, params, info) -> dict:
        """The official procedure (``quantize/omniquant.py``): ``epochs`` passes, then the parameters
        training ends with are kept, whatever their loss. Where the official code stops at a non-finite
        loss (``pdb.set_trace()``), training of the block stops before that step and the block keeps the
        parameters it has; the block is recorded ``diverged`` and the run goes on."""
        run = self._epochs(state, block, q_in, kwargs, targets, aug, init, 1.0, params)
        if run["reason"] is not None:
            log.warning("OmniQuant block %d: %s; keeping the parameters reached (official procedure)", index,
                        run["reason"])
            info.update(diverged=True, reason=run["reason"])
        final = self._losses(block, state, q_in, kwargs, targets, aug)
        loss_final = sum(final) / len(final)
        info.update(loss_final=float(loss_final), chosen="end of training", attempts=[run["log"]],
                    loss_epochs=run["log"]["loss_epochs"], epochs_done=run["log"]["epochs_done"],
                    ended_worse=bool(not math.isfinite(loss_final) or loss_final > info["loss_init"]))
        if not math.isfinite(loss_final) and not info["diverged"]:
            info.update(diverged=True, reason="non-finite loss after training")
        return info

    def _train_keep_best(self, index, block, state, q_in, kwargs, targets, aug, init, params, info) -> dict:
        """Keep-best (``keep_best: true``, ours, the variant OmniQuant+KB): the block keeps the parameters
        with the lowest loss over the whole calibration set among the initial ones, the end of training,
        and the epoch whose running mean loss was lowest; while that is not below the initial loss,
        training restarts from the initial parameters with both learning rates halved (at most
        ``lr_retries`` times). A batch loss that is non-finite or above ``diverge_factor`` x its initial
        loss ends an attempt."""
        sp = self.special
        loss_init = info["loss_init"]
        start = _snapshot(params)
        best = {"loss": loss_init, "params": start, "chosen": "init"}
        attempts = []
        for attempt in range(1 + sp.lr_retries):
            lr_scale = 0.5 ** attempt
            _restore(params, start)
            run = self._epochs(state, block, q_in, kwargs, targets, aug, init, lr_scale, params)
            attempts.append(run["log"])
            if run["reason"] is not None:
                log.warning("OmniQuant block %d, attempt %d (lr x%g): %s", index, attempt + 1, lr_scale,
                            run["reason"])
                continue
            candidates = [("end", None)] + ([("epoch", run["best_epoch"])] if run["best_epoch"] else [])
            for kind, snap in candidates:
                if snap is not None:
                    _restore(params, snap[1])
                losses = self._losses(block, state, q_in, kwargs, targets, aug)
                mean = sum(losses) / len(losses)
                label = f"attempt {attempt + 1} (lr x{lr_scale:g}), " + (
                    "end of training" if snap is None else f"epoch {snap[0] + 1}")
                run["log"].setdefault("full_pass_loss", {})[label] = float(mean)
                if math.isfinite(mean) and mean < best["loss"]:
                    best = {"loss": mean, "params": _snapshot(params), "chosen": label}
            if best["chosen"] != "init":
                break
            log.info("OmniQuant block %d: attempt %d (lr x%g) ended no better than init (%.4g)%s", index,
                     attempt + 1, lr_scale, loss_init, "; retrying with halved learning rates"
                     if attempt < sp.lr_retries else "; keeping the initial parameters")
        _restore(params, best["params"])
        if best["chosen"] == "init" and all(a.get("reason") for a in attempts):
            info.update(diverged=True, reason="; ".join(a["reason"] for a in attempts))
        info.update(loss_final=float(best["loss"]), chosen=best["chosen"], attempts=attempts,
                    loss_epochs=attempts[-1]["loss_epochs"], epochs_done=sum(a["epochs_done"] for a in attempts))
        return info

    def _epochs(self, state, block, q_in, kwargs, targets, aug, init, lr_scale, params) -> dict:
        """``epochs`` passes of AdamW over the calibration batches; stops at the first non-finite batch loss
        (``reason``), with keep-best also at one above ``diverge_factor`` x its initial loss (the official
        code has no such guard). ``best_epoch``: (epoch, snapshot) of the lowest running mean."""
        sp = self.special
        groups = [g for g in ({"params": state.let_parameters(), "lr": sp.let_lr * lr_scale},
                              {"params": state.lwc_parameters(), "lr": sp.lwc_lr * lr_scale}) if g["params"]]
        opt = torch.optim.AdamW(groups, weight_decay=sp.wd)
        epoch_losses, reason, best_epoch = [], None, None
        with torch.enable_grad():
            for epoch in range(sp.epochs):
                batch_losses = []
                for j, h in enumerate(q_in):
                    loss = self._loss(block, state, h, kwargs[j], targets[j], aug[j] if aug else None)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        reason = f"non-finite loss at epoch {epoch}, batch {j}"
                    elif sp.keep_best and value > sp.diverge_factor * max(init[j], 1e-30):
                        reason = (f"loss exploded at epoch {epoch}, batch {j}: {value:.4g} > "
                                  f"{sp.diverge_factor:g} x initial {init[j]:.4g}")
                    if reason is not None:
                        break
                    batch_losses.append(value)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                if reason is not None:
                    break
                epoch_losses.append(sum(batch_losses) / len(batch_losses))
                if sp.keep_best and epoch < sp.epochs - 1 and epoch_losses[-1] == min(epoch_losses):
                    best_epoch = (epoch, _snapshot(params))
        return {"reason": reason, "best_epoch": best_epoch,
                "log": {"lr_scale": lr_scale, "loss_epochs": epoch_losses, "epochs_done": len(epoch_losses),
                        **({"reason": reason} if reason else {})}}

    def _give_up(self, index, block, state, q_in, kwargs, targets, aug, info, reason, attempts) -> dict:
        """Keep-best only, a non-finite loss at initialisation: the block gets no LET and LWC at init
        (recorded; the pipeline goes on)."""
        log.warning("OmniQuant block %d diverged (%s): restoring its initial state (no LET, LWC at init)",
                    index, reason)
        state.reset()
        final = self._losses(block, state, q_in, kwargs, targets, aug)
        info.update(diverged=True, reason=reason, loss_final=float(sum(final) / len(final)), chosen="reset",
                    attempts=attempts, loss_epochs=attempts[-1]["loss_epochs"] if attempts else [],
                    epochs_done=sum(a["epochs_done"] for a in attempts))
        return info


def _snapshot(params) -> list:
    return [p.detach().clone() for p in params]


@torch.no_grad()
def _restore(params, snapshot) -> None:
    for p, v in zip(params, snapshot):
        p.copy_(v)
