"""The float model kept beside a quantized run, so that an evaluator can compare the quantized model's
outputs with the float model's on the same inputs (``eval.paired``: WikiText-2's KL divergence, top-1
agreement and paired log-perplexity difference, ``llmc.eval.perplexity``).

Why a copy of the model and not stored outputs: the exact KL(p_float || p_quant) needs the float model's
whole next-token distribution at every predicted token (WikiText-2 at 2048 tokens: ~290k tokens x 49k
vocabulary for SmolLM2, 57 GB in float32), far more than a copy of the model (SmolLM2-135M: 0.27 GB in
bfloat16, 0.54 GB in float32; 1.7B: 3.4 GB in bfloat16). The copy lives in CPU memory, made parameter by
parameter (no second copy on the accelerator), and moves to the run's device only while an evaluator
uses it. It is made right after loading, before the method changes the model in place, so it is exactly
the model evaluated at ``pretrain``.
"""

from __future__ import annotations

import contextlib
import copy

import torch


def cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are in CPU memory (tied weights stay tied)."""
    memo: dict = {}
    for p in model.parameters():
        if id(p) not in memo:
            memo[id(p)] = torch.nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=p.requires_grad)
    for b in model.buffers():
        if id(b) not in memo:
            memo[id(b)] = b.detach().to("cpu", copy=True)
    return copy.deepcopy(model, memo).eval()


class FloatReference:
    """The float model, copied before quantization; :meth:`on` lends it on a device."""

    description = "float model (CPU copy made before quantization)"

    def __init__(self, model: torch.nn.Module):
        self.model = cpu_copy(model)

    @contextlib.contextmanager
    def on(self, device):
        """The reference model on ``device`` for the ``with`` block, back in CPU memory after it."""
        self.model.to(device)
        try:
            yield self.model
        finally:
            self.model.to("cpu")
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()


def wanted(cfg, evaluators: dict) -> bool:
    """Whether a run keeps a float reference: ``eval.paired``, a quantized run evaluating at a quantized
    position, and an evaluator that uses one (``uses_reference``)."""
    quantized_pos = [p for p in cfg.eval.eval_pos if p != "pretrain"]
    return bool(cfg.eval.paired and cfg.quant is not None and quantized_pos
                and any(getattr(ev, "uses_reference", False) for ev in evaluators.values()))
