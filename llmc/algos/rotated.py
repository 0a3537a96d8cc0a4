"""The pipeline the rotation methods share (QuaRot, Ashkboos et al. 2024; SpinQuant, Liu et al. 2024): fixed
transforms first (untie + fold the norms for R1, R4's Hadamard on down_proj's input), then R1 / R2 merged
into the weights (``llmc.algos.rotation`` holds the algebra), R3 on Q / K with a quantized KV cache, then the
weights by GPTQ (the block loop) or RTN (at deployment).

A method says where its rotations come from (:meth:`RotatedQuant.init_rotations`, and
:meth:`RotatedQuant.refine_rotations`: SpinQuant learns them there) and may add online transforms of its own
(QuaRot's head mixing before o_proj). Its ``quant.special`` has the fields read here: ``r1``, ``r2``, ``r3``,
``r4``, ``rotate_mode``, ``rotation_seed``, ``weight_algo``, ``gptq_samples`` and GPTQ's own.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import torch

from ..errors import ConfigError
from ..quant.hadamard import is_supported, random_hadamard_matrix
from ..quant.transforms import OnlineHadamard
from . import rotation
from .gptq import GPTQ

log = logging.getLogger(__name__)


class RotatedQuant(GPTQ):
    """GPTQ (or RTN) weights on a rotated model. Subclasses choose the rotations."""

    def __init__(self, adapter, cfg):
        super().__init__(adapter, cfg)
        sp = self.special
        self.r3 = sp.r3 if sp.r3 is not None else self.qcfg.kvcache is not None
        self.query_key_transform = OnlineHadamard(adapter.head_dim) if self.r3 else None
        self.blockwise = sp.weight_algo == "gptq" and self.qcfg.weight is not None
        self.online_hooks: list = []     # forward pre-hooks of the online transforms on the float model
        self.rotation_log: dict = {}
        self._tied_final_norm = None     # the final norm's weight when R1 unties tied embeddings
        self._prepare_calib = None       # every calibration window (the block loop may see fewer)

    # -- config ------------------------------------------------------------------------------
    def hadamard_orders(self) -> list:
        """(what, order) of every Hadamard matrix the run needs."""
        a, sp = self.adapter, self.special
        need = []
        if sp.rotate_mode == "hadamard":
            need += [("hidden_size (R1)", a.config.hidden_size)] if sp.r1 else []
            need += [("head_dim (R2)", a.head_dim)] if sp.r2 else []
        need += [("head_dim (R3)", a.head_dim)] if self.r3 else []
        if sp.r4:
            need.append(("intermediate size (R4)", a.blocks[0].get_submodule(a.layout.down_proj).in_features))
        return need

    def check_model(self) -> None:
        """R1 through the layout's post-norms, and every Hadamard order the rotations need."""
        if self.special.r1:
            self.adapter.refuse_post_norms(f"{self.qcfg.method}'s R1 (a residual-stream rotation)",
                                           "quant.special.r1")
        for what, n in self.hadamard_orders():
            if not is_supported(n):
                raise ConfigError(f"quant.special: no Hadamard matrix of order {n} for the {what}; "
                                  f"use rotate_mode: random for R1/R2 or switch the rotation off")

    def report(self) -> dict:
        return {**super().report(), "rotation": self.rotation_log}

    # -- the pipeline ------------------------------------------------------------------------
    def quantize(self, calib) -> None:
        """:meth:`prepare` sees every calibration window; GPTQ's block loop the first ``gptq_samples``
        (SpinQuant's official code draws 128 separate windows for GPTQ)."""
        self._prepare_calib = calib
        n = self.special.gptq_samples
        if calib is not None and n is not None and n < calib.input_ids.shape[0]:
            calib = dataclasses.replace(calib, input_ids=calib.input_ids[:n],
                                        info=dict(calib.info, gptq_samples=n))
        super().quantize(calib)

    def prepare(self, calib) -> None:
        calib = self._prepare_calib if self._prepare_calib is not None else calib
        t0 = time.perf_counter()
        self.prepare_base()
        r1, r2 = self.init_rotations()
        r1, r2, learned = self.refine_rotations(calib, r1, r2)
        self.apply_rotations(r1, r2)
        sp = self.special
        self.rotation_log.update({
            "learned": learned, "r1": sp.r1, "r2": sp.r2, "r3": self.r3, "r4": sp.r4,
            "r1_orthogonality_error": rotation.rotation_error(r1) if r1 is not None else None,
            "r2_orthogonality_error": max((rotation.rotation_error(r) for r in r2), default=None) if r2 else None,
            "prepare_seconds": time.perf_counter() - t0})
        log.info("%s rotations %s in %.1f s", self.qcfg.method, "learned" if learned else "applied",
                 time.perf_counter() - t0)

    def refine_rotations(self, calib, r1, r2):
        """``(r1, r2, learned)``: the rotations to merge (here the initial ones, unchanged)."""
        return r1, r2, False

    # -- whole-model transforms ---------------------------------------------------------------
    def prepare_base(self) -> None:
        """Everything before R1/R2: untie + fold norms (for R1), R4's offline and online halves."""
        self.check_model()
        a, sp = self.adapter, self.special
        if sp.r1:
            if rotation.untie_embeddings(a):
                log.info("%s: untied the embeddings (lm_head has its own copy)", self.qcfg.method)
                self._tied_final_norm = a.norm_gain(a.final_norm).clone()
            rotation.fold_norms(a)
        if sp.r4:
            for i, block in enumerate(a.blocks):
                rotation.hadamard_down_proj(a, block)
                down = block.get_submodule(a.layout.down_proj)
                self.add_online_transform(i, a.layout.down_proj, OnlineHadamard(down.in_features), fold=False)

    def add_online_transform(self, index: int, path: str, transform, fold: bool = True) -> None:
        """An online input transform of block ``index``'s linear ``path``: a forward pre-hook on the float
        model, the same transform at deployment (``input_transforms``) and, with ``fold``, its offline half
        in the weight (:func:`llmc.quant.transforms.fold_into`)."""
        from ..quant.transforms import fold_into
        linear = self.adapter.blocks[index].get_submodule(path)
        if fold:
            fold_into(linear, transform)
        self.online_hooks.append(rotation.add_online_transform(linear, transform))
        self.input_transforms[f"blocks.{index}.{path}"] = transform

    def draw_rotation(self, n: int, seed: int) -> torch.Tensor:
        """An n x n rotation, float64 on the model's device: a random Hadamard matrix (``rotate_mode:
        hadamard``, the official default) or a Haar-random orthogonal one (``random``)."""
        dev = self.adapter.device
        if self.special.rotate_mode == "random":
            return rotation.random_orthogonal_matrix(n, seed=seed, dtype=torch.float64, device=dev)
        return random_hadamard_matrix(n, seed=seed, dtype=torch.float64, device=dev)

    def init_rotations(self):
        """R1 (or None) and the per-layer R2 list (empty when off), drawn from ``rotation_seed``."""
        a, sp = self.adapter, self.special
        r1 = self.draw_rotation(a.config.hidden_size, sp.rotation_seed) if sp.r1 else None
        r2 = [self.draw_rotation(a.head_dim, sp.rotation_seed + 1 + i) for i in range(len(a.blocks))] if sp.r2 else []
        return r1, r2

    def apply_rotations(self, r1, r2) -> None:
        a = self.adapter
        if r1 is not None:
            rotation.rotate_embeddings(a, r1)
            rotation.rotate_lm_head(a, r1)
            if self._tied_final_norm is not None:   # the packed checkpoint stores the head tied again
                rotation.mark_tied_head(a.model, rotation.tied_head_transform(self._tied_final_norm, r1))
        for i, block in enumerate(a.blocks):
            if r1 is not None:
                rotation.rotate_block_r1(a, block, r1)
            if r2:
                rotation.rotate_block_r2(a, block, r2[i])

    # -- per block -----------------------------------------------------------------------------
    def process_block(self, index, block, inputs):
        if self.special.weight_algo == "gptq":
            self.gptq_block(index, block, inputs)
