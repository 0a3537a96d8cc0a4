"""QuaRot (Ashkboos et al., NeurIPS 2024, "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs"): fixed
Hadamard rotations that leave the float model unchanged, then GPTQ (or RTN) weights. Nothing is learned;
the rotations are SpinQuant's starting point (``llmc.algos.rotated`` runs both; the algebra is
``llmc.algos.rotation``).

What the official code does (``spcl/QuaRot``, ``fake_quant/main.py`` with ``--rotate``;
``rotation_utils.rotate_model``) and where it is here:

* R1: the norms are folded into the linears that read them (``fuse_layer_norms``) and the residual
  stream is rotated by a random Hadamard matrix (``get_orthogonal_matrix(hidden, rotate_mode)``,
  ``rotate_mode: hadamard`` by default; ``random``: Haar-random orthogonal). Here
  :meth:`RotatedQuant.init_rotations` with ``rotation_seed``.
* V / O: ``rotate_ov_proj`` applies the exact Hadamard of order head_dim to each head's rows of v_proj
  (``apply_exact_had_to_linear(v_proj, had_dim=head_dim, output=True)``) and the full-width Hadamard to
  o_proj's input columns; online, o_proj's input is mixed across heads by a Hadamard of order num_heads
  (``online_partial_had``). Together o_proj reads ``x (H_heads (x) H_head_dim)``. Here: R2 is the
  normalised Hadamard ``H_head_dim / sqrt(head_dim)`` for every layer (``rotate_block_r2`` on v_proj and
  o_proj's columns) and o_proj gets the online head mixing (``OnlineHeadHadamard``) folded into its
  weight. The value cache is therefore Hadamard-rotated per head, which is what makes a 4-bit V cache
  work without R3.
* R4: ``apply_exact_had_to_linear(down_proj, had_dim=-1, output=False)`` and ``online_full_had`` on
  down_proj's input (:meth:`RotatedQuant.prepare_base`).
* R3 with a quantized K cache (``--k_bits < 16``): ``QKRotationWrapper``, a Hadamard on Q and K after RoPE
  (``query_key_transform``, installed with the KV-cache quantizers).
* Weights: GPTQ on 128 x 2048 WikiText-2 windows (``--nsamples 128``, percdamp 0.01, act_order off,
  sequential groups q/k/v, o, up/gate, down) unless ``--w_rtn``; ``--w_clip`` (off by default, on in the
  README's example command, as here) is the MSE range search (``calib_algo: mse``). Otherwise the defaults
  of ``utils.parser_gen``: symmetric weights and activations
  (``--w_asym`` / ``--a_asym`` off), per-channel weights, per-token activations, clip ratio 1.0, lm_head
  in float. ``configs/*/quarot_*.yml`` hold these.

Deviations:

* ``o_proj_online: full`` (``auto`` picks it when no Hadamard matrix of order num_heads exists: 9 heads
  in SmolLM2-135M, 14 in Qwen2.5-0.5B; QuaRot's ``get_hadK`` knows neither): o_proj's online transform is
  the Hadamard of its whole input width instead, folded into its weight after the per-head R2. o_proj's
  input is then ``x (I (x) H_head_dim) H_n^T / sqrt(n)``, again an orthonormal Hadamard-type transform of
  the whole width; the online cost is that of R4 at width ``heads x head_dim`` rather than a
  ``heads x heads`` product. The run records the form used (``rotation.o_proj_online``).
* Those of ``llmc.algos.rotated`` / ``llmc.algos.rotation``: any Hadamard order of the ``2^k m`` family,
  Qwen2's biases rotated, no embedding-mean subtraction for RMSNorm models.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..methods.quarot import QuaRotSpecial
from ..quant.hadamard import hadamard_matrix, is_supported
from ..quant.transforms import OnlineHadamard, OnlineHeadHadamard
from .rotated import RotatedQuant


class QuaRot(RotatedQuant):
    special_cls = QuaRotSpecial

    def o_proj_form(self) -> str:
        """"heads" (QuaRot's head mixing) or "full" (a Hadamard of o_proj's whole input width)."""
        form = self.special.o_proj_online
        if form == "auto":
            return "heads" if is_supported(self.adapter.num_heads) else "full"
        return form

    def hadamard_orders(self) -> list:
        a, sp = self.adapter, self.special
        need = [("hidden_size (R1)", a.config.hidden_size)] if sp.r1 and sp.rotate_mode == "hadamard" else []
        if sp.r2:
            need.append(("head_dim (R2, always a Hadamard in QuaRot)", a.head_dim))
            o_in = a.blocks[0].get_submodule(a.layout.o_proj).in_features
            need.append(("number of heads (o_proj_online: heads)", a.num_heads) if self.o_proj_form() == "heads"
                        else ("o_proj's input width (o_proj_online: full)", o_in))
        need += [("head_dim (R3)", a.head_dim)] if self.r3 else []
        if sp.r4:
            need.append(("intermediate size (R4)", a.blocks[0].get_submodule(a.layout.down_proj).in_features))
        return need

    def init_rotations(self):
        """R1 as the base draws it; R2 the same exact Hadamard ``H_head_dim / sqrt(head_dim)`` in every layer."""
        sp = self.special
        r1 = self.draw_rotation(self.adapter.config.hidden_size, sp.rotation_seed) if sp.r1 else None
        if not sp.r2:
            return r1, []
        d = self.adapter.head_dim
        h = hadamard_matrix(d, dtype=torch.float64, device=self.adapter.device) / math.sqrt(d)
        return r1, [h] * len(self.adapter.blocks)

    def apply_rotations(self, r1, r2) -> None:
        """R1 / R2 as the base merges them, then o_proj's online transform with its offline half folded in
        after R2 (the full-width form does not commute with the per-head R2)."""
        super().apply_rotations(r1, r2)
        if not r2:
            return
        a = self.adapter
        form = self.o_proj_form()
        for i, block in enumerate(a.blocks):
            o_in = block.get_submodule(a.layout.o_proj).in_features
            if form == "heads":
                if o_in != a.num_heads * a.head_dim:
                    raise ConfigError(f"quant.special.o_proj_online: o_proj reads {o_in} features, not "
                                      f"{a.num_heads} heads x {a.head_dim}")
                transform = OnlineHeadHadamard(a.num_heads, a.head_dim)
            else:
                transform = OnlineHadamard(o_in)
            self.add_online_transform(i, a.layout.o_proj, transform)
        self.rotation_log["o_proj_online"] = form
