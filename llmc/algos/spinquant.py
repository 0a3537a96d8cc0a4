"""SpinQuant (Liu et al., 2024, "SpinQuant: LLM Quantization with Learned Rotations"; ICLR 2025).

Four rotations that leave the float model unchanged (see ``llmc.algos.rotation`` for the algebra):
R1 on the residual stream (hidden x hidden, merged into embeddings, every block's linears and lm_head
after folding the RMSNorm weights and untying tied embeddings), R2 per layer on each head's values
(head_dim x head_dim, merged into v_proj / o_proj, exact under GQA), R3 an online Hadamard on Q and K
after RoPE (only useful with a quantized KV cache) and R4 an online Hadamard on down_proj's input.
R1 and R2 are learned; R3 and R4 are fixed Hadamard transforms.

Learning (the official ``optimize_rotation.py``): R1 and R2 start as random Hadamard matrices and
minimise the language-model loss (next-token cross-entropy) of the model with every block linear's
input fake-quantized by the run's activation quantizer (per-token dynamic, straight-through estimator
with ranges taken as constants, like the official ``ActQuantizer``), R4 (and with a quantized KV cache,
R3 and the K/V quantizers) in place, lm_head and embeddings in float. Weights stay in float when GPTQ
quantizes them afterwards (the official README: rotations for a GPTQ run are optimised at W16, e.g.
``10_optimize_rotation.sh 16 4 4``); with ``weight_algo: rtn`` they are fake-quantized during learning
too (``train_w_quant``), as the official RTN recipe trains at the final w_bits. The optimiser is the
official SGDG on the Stiefel manifold (Li et al., ICLR 2020, "Efficient Riemannian Optimization on the
Stiefel Manifold via the Cayley Transform"), see :class:`CayleySGD`. Defaults are the official
script's (``10_optimize_rotation.sh`` with HF Trainer defaults): lr 1.5, cosine schedule without warmup,
100 steps, 8 x 2048-token WikiText-2 windows per step (8 GPUs x batch 1, so 800 windows in all),
weight decay 0, gradient-norm clipping at 1.0 (Trainer's ``max_grad_norm``), momentum 0. Here one step
accumulates gradients over micro-batches of ``calib.bs`` windows, which gives the same gradient.
Rotations are trained in float32; the model keeps its dtype.

Then the weights: GPTQ (``weight_algo: gptq``, default; the official ``ptq.py`` uses 128 x 2048 windows,
here the first ``gptq_samples`` calibration windows go through the block loop) or RTN (``rtn``: the
run's weight quantizer at deployment; ``calib_algo: mse`` is the official ``--w_clip``).

Deviations from the reference code: any width of the Hadamard module's ``2^k m`` family (the original
knows powers of two times a few hard-coded factors and asserts a power-of-two head_dim); Qwen2's
biases are rotated (v_proj's per head by R2, o_proj / down_proj's by R1); the embedding-mean
subtraction of the reference's norm folding is not done (it changes RMSNorm models); the Cayley
fixed-point loop runs past its 5 iterations when they have not converged (see :class:`CayleySGD`).
As in the official training forward, R1 acts on the embedding output (``e R1``) and on lm_head's input
(``h R1^T``) while learning, and is merged into the embedding and lm_head weights afterwards; the block
weights are rotated inside the forward (float32 products cast to the model's dtype). The activation
quantizer while learning is the one deployed (uniform over every block linear; the official code
quantizes o_proj's input per head group of head_dim, a deployment choice this benchmark does not make).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..progress import track
from ..quant.quantizer import Quantizer
from ..methods.spinquant import SpinQuantSpecial
from . import rotation
from .rotated import RotatedQuant

log = logging.getLogger(__name__)




# --------------------------------------------------------------------------------- optimiser
def _qr_retraction(x: torch.Tensor) -> torch.Tensor:
    """Nearest-by-QR orthogonal matrix with the same row space orientation (signs from diag(R))."""
    q, r = torch.linalg.qr(x.t())
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q.t()


class CayleySGD(torch.optim.Optimizer):
    """SGD on the Stiefel manifold with the Cayley transform: the official SpinQuant ``SGDG`` update with
    ``stiefel=True`` (Li et al., 2020, Algorithm 2) for square matrices ``R`` used as ``x -> x R``.

    Per step, with ``X`` the parameter's rows normalised to unit length (with probability 1/101 also
    re-orthonormalised by QR, as the official code does) and ``G`` its gradient::

        V  = momentum * V_prev - G^T
        W^ = V X - 1/2 X^T (X V X)          (the official MX - 0.5 XXMX)
        W  = W^ - W^T                        (skew-symmetric)
        a  = min(lr, 1 / (||W||_1 + 1e-8))   (||.||_1: the largest column abs-sum)
        Y  = X^T + a V;  5 times: Y = X^T + a W (X^T + Y) / 2
        R  <- Y^T

    The fixed-point loop approximates the Cayley transform ``(I - a/2 W)^-1 (I + a/2 W) X^T``, which is
    orthogonal; the step bound ``a ||W|| <= 1`` makes the loop contract. One addition: after the official
    ``iters`` (5) iterations the same loop continues while an iteration still moves an entry by more than
    ``tol`` (at most ``max_iters``). Where 5 iterations have converged (small steps, the usual case in
    rotation learning) the update is the official one; on large steps the official loop stops short of
    the Cayley point and leaves up to ~1e-4 of ``|R R^T - I|`` per step (measured on a Procrustes
    problem), which its occasional QR retraction only partly repairs. ``V_prev = W X^T`` is kept when
    ``momentum > 0`` (the official code computes it but never stores it; with its default momentum 0
    this makes no difference).
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, iters: int = 5, tol: float = 1e-7,
                 max_iters: int = 50, seed: int = 0):
        if lr <= 0:
            raise ValueError("lr must be positive")
        super().__init__(params, dict(lr=lr, momentum=momentum))
        self.iters, self.tol, self.max_iters = iters, tol, max(iters, max_iters)
        self._rng = random.Random(seed)
        self.last_iters = 0

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dim() != 2 or p.shape[0] != p.shape[1]:
                    raise ValueError("CayleySGD updates square matrices only")
                x = p / p.norm(dim=1, keepdim=True).add(1e-8)
                if self._rng.randint(1, 101) == 1:
                    x = _qr_retraction(x)
                state = self.state[p]
                v = -p.grad.t()
                if momentum:
                    v = v + momentum * state.get("momentum_buffer", torch.zeros_like(v))
                mx = v @ x
                w_hat = mx - 0.5 * (x.t() @ (x @ mx))
                w = w_hat - w_hat.t()
                alpha = min(lr, 1.0 / (float(w.abs().sum(dim=0).max()) + 1e-8))
                xt = x.t()
                y = xt + alpha * v
                for k in range(self.max_iters):
                    y_next = xt + alpha * (w @ (0.5 * (xt + y)))
                    moved = float((y_next - y).abs().max())
                    y = y_next
                    if k + 1 >= self.iters and moved <= self.tol:
                        break
                self.last_iters = max(self.last_iters, k + 1)
                p.copy_(y.t())
                if momentum:
                    state["momentum_buffer"] = w @ xt
        return loss


def cosine_lr(base: float, step: int, total: int) -> float:
    """HF's cosine schedule without warmup (``get_cosine_schedule_with_warmup``), stepped once per update."""
    return base * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total)))


class _SteQuantizer(Quantizer):
    """Fake quantization whose range is computed from the detached input: the gradient is the identity
    inside the range (the official ``STEQuantize`` / ``AsymSTEQuantize``)."""

    def fake_quant(self, x, scale=None, zero=None, clip_max=None, clip_min=None):
        if scale is None:
            scale, zero = self.compute_params(x.detach(), clip_max, clip_min)
        return super().fake_quant(x, scale, zero)

    forward = fake_quant


# --------------------------------------------------------------------------------- algorithm
class SpinQuant(RotatedQuant):
    """Learned R1 / R2 (:meth:`refine_rotations`) on the rotation pipeline of ``llmc.algos.rotated``."""
    special_cls = SpinQuantSpecial

    def __init__(self, adapter, cfg):
        super().__init__(adapter, cfg)
        sp = self.special
        self.train_w_quant = sp.train_w_quant if sp.train_w_quant is not None else sp.weight_algo == "rtn"
        self._r1 = None          # R1 as the learning hooks see it (embedding output, lm_head input)

    def refine_rotations(self, calib, r1, r2):
        if self._should_learn(calib, r1, r2):
            r1, r2 = self.learn(calib, r1, r2)
            return r1, r2, True
        return r1, r2, False

    def _should_learn(self, calib, r1, r2) -> bool:
        sp = self.special
        if not sp.learn_rotations or sp.steps == 0 or (r1 is None and not r2):
            return False
        if calib is None:
            log.warning("SpinQuant: no calibration data, rotations stay random")
            return False
        if self.qcfg.act is None and self.qcfg.kvcache is None and not (self.train_w_quant and self.qcfg.weight):
            log.warning("SpinQuant: nothing is quantized during learning (weights in float, no activation or "
                        "KV quantization), so the loss does not depend on the rotations; they stay random")
            return False
        return True

    # -- learning ------------------------------------------------------------------------------
    def _train_act_quantizer(self):
        act = self.qcfg.act
        if act is None:
            return None
        kwargs = {"head_dim": self.adapter.head_dim} if act.granularity == "per_head" else {}
        return _SteQuantizer(act, static=False, **kwargs)   # static ranges: dynamic per-tensor while learning

    @contextlib.contextmanager
    def learning_mode(self):
        """Hooks that turn the float model into the one SpinQuant trains: activation fake quantization
        on every block linear's input (after R4's online Hadamard), R1 on the embedding output and
        lm_head's input (``self._r1``), the KV-cache quantizers with R3. Model parameters are frozen."""
        a = self.adapter
        handles, frozen = [], []
        for p in a.model.parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                frozen.append(p)
        aq = self._train_act_quantizer()
        if aq is not None:
            def quant_input(module, args):
                return (aq.fake_quant(args[0]),) + tuple(args[1:])
            for block in a.blocks:
                for lin in a.block_linears(block).values():
                    handles.append(lin.register_forward_pre_hook(quant_input))

        def embed_out(module, args, out):
            r = self._r1
            return out if r is None else (out.float() @ r).to(out.dtype)

        def head_in(module, args):
            r = self._r1
            return args if r is None else ((args[0].float() @ r.t()).to(args[0].dtype),) + tuple(args[1:])
        handles.append(a.embed.register_forward_hook(embed_out))
        handles.append(a.lm_head.register_forward_pre_hook(head_in))
        kv_state = None
        if self.qcfg.kvcache is not None:
            from ..quant.kvcache import enable_kv_quant
            attns = [b.get_submodule(a.layout.attn) for b in a.blocks]
            names = ("k_quantizer", "v_quantizer", "query_key_transform")
            kv_state = (a.model.config._attn_implementation,
                        [{n: getattr(m, n) for n in names if hasattr(m, n)} for m in attns])
            kv = _SteQuantizer(self.qcfg.kvcache)
            enable_kv_quant(a, kv, kv, self.query_key_transform)
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for p in frozen:
                p.requires_grad_(True)
            self._r1 = None
            if kv_state is not None:
                impl, saved = kv_state
                for m, old in zip(attns, saved):
                    for n in names:
                        if n in old:
                            setattr(m, n, old[n])
                        elif hasattr(m, n):
                            delattr(m, n)
                a.model.set_attn_implementation(impl)

    def _rotated_params(self, r1, r2) -> dict:
        out = {}
        for i in range(len(self.adapter.blocks)):
            out.update(rotation.rotated_block_params(self.adapter, i, r1, r2[i] if r2 else None))
        self._learned_names = set(out)
        if self.train_w_quant and self.qcfg.weight is not None:   # every block weight must be quantized
            lay = self.adapter.layout
            for i, block in enumerate(self.adapter.blocks):
                for path, lin in self.adapter.block_linears(block).items():
                    out.setdefault(f"{lay.blocks}.{i}.{path}.weight", lin.weight.detach().float())
        return out

    def _lm_loss(self, ids: torch.Tensor, params: dict) -> torch.Tensor:
        from torch.func import functional_call
        ids = ids.to(self.adapter.device)
        logits = functional_call(self.adapter.model, params, (), {"input_ids": ids, "use_cache": False}).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())

    def _train_ids(self, calib) -> torch.Tensor:
        ids = calib.input_ids
        n = self.special.train_seq_len
        return ids[:, :n] if n is not None else ids

    def _step_loss(self, batch, r1, r2, backward: bool) -> float:
        """Mean next-token loss over ``batch`` (micro-batches of ``calib.bs``); with ``backward`` the
        gradients reach r1 / r2. Rotated weights are computed once per step as leaves that accumulate
        the micro-batches' gradients; the rotation is then recomputed with its graph and one backward
        pass takes those gradients to R1 / R2 (the graph is not held during the micro-batches)."""
        model_dtypes = dict(self.adapter.model.named_parameters())
        with torch.no_grad():
            leaves = {k: v.requires_grad_(backward and k in self._learned_names)
                      for k, v in self._rotated_params(r1, r2).items()}
        wq = _SteQuantizer(self.qcfg.weight) if self.train_w_quant and self.qcfg.weight is not None else None
        qparams = {k: wq.compute_params(v.detach()) for k, v in leaves.items() if k.endswith(".weight")} \
            if wq is not None else {}
        mb = max(1, self.cfg.calib.bs if self.cfg.calib is not None else 1)
        n, total = batch.shape[0], 0.0
        self._r1 = r1
        for s in range(0, n, mb):
            ids = batch[s:s + mb]
            params = {k: (wq.fake_quant(v, *qparams[k]) if k in qparams else v).to(model_dtypes[k].dtype)
                      for k, v in leaves.items()}
            with torch.set_grad_enabled(backward):
                loss = self._lm_loss(ids, params)
                if backward:
                    (loss * (ids.shape[0] / n)).backward()
            total += float(loss.detach()) * ids.shape[0] / n
        if backward:
            rot = self._rotated_params(r1, r2)
            pairs = [(rot[k], leaves[k].grad) for k in rot if rot[k].requires_grad and leaves[k].grad is not None]
            del leaves
            if pairs:
                torch.autograd.backward([p[0] for p in pairs], [p[1] for p in pairs])
        return total

    def rotation_loss(self, ids: torch.Tensor, r1, r2) -> float:
        """The learning objective at given rotations (no gradient): for tests and logs. Call after
        :meth:`prepare_base` and before :meth:`apply_rotations`."""
        cast = (lambda r: None if r is None else r.detach().float())
        with self.learning_mode(), torch.no_grad():
            return self._step_loss(ids, cast(r1), [cast(r) for r in r2], backward=False)

    def learn(self, calib, r1, r2):
        """Cayley SGD on R1 / R2 (float32); returns the learned matrices (float64)."""
        sp = self.special
        ids = self._train_ids(calib)
        dev = self.adapter.device
        p1 = nn.Parameter(r1.detach().float().to(dev)) if r1 is not None else None
        p2 = [nn.Parameter(r.detach().float().to(dev)) for r in r2]
        params = ([p1] if p1 is not None else []) + p2
        opt = CayleySGD(params, lr=sp.lr, momentum=sp.momentum, seed=sp.rotation_seed)
        losses, t0 = [], time.perf_counter()
        n = ids.shape[0]
        with self.learning_mode(), torch.enable_grad():
            for step in track(range(sp.steps), "SpinQuant steps"):
                idx = [(step * sp.train_bs + j) % n for j in range(sp.train_bs)]
                opt.zero_grad(set_to_none=True)
                loss = self._step_loss(ids[idx], p1, p2, backward=True)
                if sp.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, sp.max_grad_norm)
                for g in opt.param_groups:
                    g["lr"] = cosine_lr(sp.lr, step, sp.steps)
                opt.step()
                losses.append(loss)
                if step % max(1, sp.steps // 10) == 0 or step == sp.steps - 1:
                    log.info("SpinQuant step %d/%d: loss %.4f (%.1f s)", step + 1, sp.steps, loss,
                             time.perf_counter() - t0)
        self.rotation_log.update({"train_loss": losses, "train_seconds": time.perf_counter() - t0,
                                  "cayley_iters_max": opt.last_iters,
                                  "train_windows": sp.steps * sp.train_bs, "train_seq_len": int(ids.shape[1])})
        return (p1.detach().double() if p1 is not None else None), [p.detach().double() for p in p2]
