"""The blockwise pipeline every method runs in (LLMC's ``BlockwiseOpt`` shape, kept small).

1. Capture the first block's inputs for the calibration samples, with every keyword argument the model
   passes it (attention mask, position embeddings), by stopping the forward pass at block 0.
0. ``prepare``: whole-model transforms first (rotations), since they change block 0's inputs.
2. Walk the blocks one at a time. For each: the method's ``process_block`` looks at the block's inputs
   (through hooks on its linears, see ``collect_inputs``) and transforms it (smoothing, rotation,
   training) or updates its weights (GPTQ). Then the block's outputs become the next block's inputs:
   float outputs, or with ``quant.quant_out`` the outputs of the block fake-quantized.
3. ``deploy_fake`` puts fake quantization on every block linear (``calibrate_static_ranges`` fixes
   static activation ranges).

The pipeline (``llmc.pipeline``) calls these stages, measures them (Track 3), evaluates between them and
exports; a method only transforms: it reads ``quant`` and ``calib`` of the config, never ``save`` or
``eval``, and never writes the results record (its figures go through :meth:`report`).

Only one block's calibration activations are alive at a time (inputs, outputs and what a method
collects), so memory beyond the model is about one block's working set. Model knowledge comes from the
adapter's subsets; no method tests a model type.

Embeddings, the final norm and lm_head stay in float, as in the methods' original code.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ..progress import track
from ..quant.fake_linear import FakeQuantLinear
from ..quant.quantizer import Quantizer
from ..utils import swap_module

log = logging.getLogger(__name__)


@dataclass
class NoSpecial:
    """Methods without method-specific settings accept an empty ``quant.special``."""


class _StopForward(Exception):
    pass


@dataclass
class BlockInputs:
    """Calibration inputs of the current block: a list of [bs, seq, hidden] batches and the keyword
    arguments the model passes the block (attention mask, position embeddings). ``n_samples`` need not be
    a multiple of ``bs``: the last, smaller batch then has its own keyword arguments (an eager attention
    mask is [batch, 1, seq, seq]), ``last_kwargs``; every other batch shares ``kwargs``.

    ``per_block`` holds, for every block, its own ``(kwargs, last_kwargs)``: a model may pass its layers
    different arguments (Gemma-3 gives its sliding-window layers a windowed mask and local RoPE, its global
    layers the causal mask and RoPE of another base), so block ``i`` runs with ``for_block(i)``."""
    hidden: list
    kwargs: dict
    last_kwargs: Optional[dict] = None
    per_block: Optional[list] = None

    def kwargs_at(self, j: int) -> dict:
        """The keyword arguments of batch ``j``."""
        if self.last_kwargs is not None and j == len(self.hidden) - 1:
            return self.last_kwargs
        return self.kwargs

    def batch_kwargs(self) -> list:
        """The keyword arguments of every batch, in order (the same dict objects, not copies)."""
        return [self.kwargs_at(j) for j in range(len(self.hidden))]

    def with_hidden(self, hidden: list) -> "BlockInputs":
        return BlockInputs(hidden, self.kwargs, self.last_kwargs, self.per_block)

    def for_block(self, index: int) -> "BlockInputs":
        """These batches with block ``index``'s own keyword arguments."""
        if self.per_block is None:
            return self
        kwargs, last = self.per_block[index]
        return BlockInputs(self.hidden, kwargs, last, self.per_block)


@torch.no_grad()
def capture_block0_inputs(adapter, input_ids: torch.Tensor, bs: int) -> BlockInputs:
    """Block 0's input batches, and every block's keyword arguments: the first batch (and a smaller last
    one) runs through the whole model once to record what each block is given (keyword arguments do not
    depend on the hidden states); the other batches stop at block 0."""
    blocks = adapter.blocks
    hidden: list = []
    per_batch: list = []       # for the first batch and a smaller last one: each block's kwargs

    def strip(kwargs):
        return {k: v for k, v in kwargs.items() if k != "hidden_states"}

    for i in range(0, input_ids.shape[0], bs):
        batch = input_ids[i:i + bs]
        record = not per_batch or batch.shape[0] != hidden[0].shape[0]
        seen: list = []

        def grab(module, args, kwargs, index):
            if index == 0:
                hidden.append(args[0] if args else kwargs["hidden_states"])
            if record:
                seen.append(strip(kwargs))
            if not record or index == len(blocks) - 1:
                raise _StopForward

        handles = [b.register_forward_pre_hook(lambda m, a, k, j=j: grab(m, a, k, j), with_kwargs=True)
                   for j, b in enumerate(blocks) if record or j == 0]
        try:
            adapter.model(input_ids=batch.to(adapter.device), use_cache=False)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        if record:
            per_batch.append(seen)
    if not per_batch:
        return BlockInputs(hidden, {})
    last = per_batch[1] if len(per_batch) > 1 else [None] * len(blocks)
    per_block = list(zip(per_batch[0], last))
    return BlockInputs(hidden, per_block[0][0], per_block[0][1], per_block)


def _block_output(out):
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs) -> list:
    return [_block_output(block(h, **kw)) for h, kw in zip(inputs.hidden, inputs.batch_kwargs())]


@torch.no_grad()
def collect_inputs(block: nn.Module, inputs: BlockInputs, modules: dict, reducer: Callable) -> dict:
    """Run the block over the calibration inputs; for each named module call
    ``state[name] = reducer(state.get(name), x)`` with the module's input ``x`` [tokens, features]."""
    state: dict = {}
    handles = []
    for name, module in modules.items():
        def hook(m, args, n=name):
            x = args[0].detach()
            state[n] = reducer(state.get(n), x.reshape(-1, x.shape[-1]))
        handles.append(module.register_forward_pre_hook(hook))
    try:
        run_block(block, inputs)
    finally:
        for h in handles:
            h.remove()
    return state


def absmax_reducer(acc, x):
    m = x.abs().amax(dim=0).float()
    return m if acc is None else torch.maximum(acc, m)


class BlockwiseAlgorithm:
    """Base of every method. Subclasses set ``special_cls``/``needs_calib`` and override hooks."""

    special_cls = NoSpecial
    needs_calib = True
    blockwise = True    # False: the method has no per-block step (its calibration is all in prepare)

    def __init__(self, adapter, cfg):
        self.adapter = adapter
        self.cfg = cfg
        self.qcfg = cfg.quant
        self.special = cfg.quant.special if dataclasses.is_dataclass(cfg.quant.special) else self.special_cls()
        self.weight_params: dict = {}   # "blocks.i.<path>" -> (scale, zero) fixed by the method (GPTQ)
        self.input_transforms: dict = {}  # "blocks.i.<path>" -> online transform before act quantization
        self.block_log: list = []
        self.next_hidden: Optional[list] = None   # set by process_block: the next block's inputs, as computed there

    # -- quantizers ------------------------------------------------------------------------------
    def weight_quantizer(self) -> Optional[Quantizer]:
        return Quantizer(self.qcfg.weight) if self.qcfg.weight is not None else None

    def act_quantizer(self) -> Optional[Quantizer]:
        if self.qcfg.act is None:
            return None
        kwargs = {"head_dim": self.adapter.head_dim} if self.qcfg.act.granularity == "per_head" else {}
        return Quantizer(self.qcfg.act, **kwargs)

    # -- hooks for subclasses --------------------------------------------------------------------
    def check_model(self) -> None:
        """Settings this model's layout or sizes refuse (one ``ConfigError`` naming the key). The pipeline
        calls it right after loading (``llmc.pipeline.check_method_on_model``), so that a refusal comes before
        the float model's evaluation, not after it."""

    def prepare(self, calib) -> None:
        """Whole-model work before block 0's inputs are captured (SpinQuant's rotations and their
        training); ``calib`` is the CalibData (token ids) or None."""

    def process_block(self, index: int, block: nn.Module, inputs: BlockInputs) -> None:
        """Transform the block / update its weights, using its calibration inputs."""

    # -- what the pipeline reads back ------------------------------------------------------------
    def report(self) -> dict:
        """The method's own figures for the results record, by section (``blocks``: one entry per block;
        subclasses add theirs, e.g. SpinQuant's ``rotation``)."""
        return {"blocks": self.block_log}

    # -- the quantize stage ------------------------------------------------------------------------
    def quantize(self, calib) -> None:
        """Everything that counts as quantization cost: calibration, search, training, weight updates."""
        self.prepare(calib)
        if calib is None or not self.blockwise:
            return
        inputs = capture_block0_inputs(self.adapter, calib.input_ids, self.cfg.calib.bs)
        blocks = self.adapter.blocks
        for i in track(range(len(blocks)), f"{self.qcfg.method} blocks"):
            t = time.perf_counter()
            block = blocks[i]
            inputs = inputs.for_block(i)          # this block's own masks and position embeddings
            self.next_hidden = None
            self.process_block(i, block, inputs)
            if self.next_hidden is not None:      # the method gave the next block's inputs (AWQ: the float block's)
                inputs = inputs.with_hidden(self.next_hidden)
            else:
                target = self.fake_block(i, block) if self.qcfg.quant_out else block
                inputs = inputs.with_hidden(run_block(target, inputs))
            self.next_hidden = None
            self.log_block(i, seconds=time.perf_counter() - t)

    def log_block(self, index: int, **info) -> None:
        if len(self.block_log) <= index:
            self.block_log.extend({} for _ in range(index + 1 - len(self.block_log)))
        self.block_log[index].update(info)

    # -- deployment -------------------------------------------------------------------------------
    def _fake_linear(self, key: str, linear: nn.Linear) -> FakeQuantLinear:
        return FakeQuantLinear(linear, self.weight_quantizer(), self.act_quantizer(),
                               input_transform=self.input_transforms.get(key),
                               weight_params=self.weight_params.get(key))

    def fake_block(self, index: int, block: nn.Module) -> nn.Module:
        """A fake-quantized copy of one block (the original stays float)."""
        clone = copy.deepcopy(block)
        self._deploy_block(index, clone)
        return clone

    def _deploy_block(self, index: int, block: nn.Module) -> None:
        for name, linear in self.adapter.block_linears(block).items():
            swap_module(block, name, self._fake_linear(f"blocks.{index}.{name}", linear))

    @torch.no_grad()
    def calibrate_static_ranges(self, calib) -> None:
        """Static activation quantizers observe the calibration inputs of the deployed model, then freeze."""
        layers = [m for m in self.adapter.model.modules() if isinstance(m, FakeQuantLinear)
                  and m.act_quantizer is not None]
        for m in layers:
            m.calibrating = True
        try:
            for i in range(0, calib.input_ids.shape[0], self.cfg.calib.bs):
                self.adapter.model(input_ids=calib.input_ids[i:i + self.cfg.calib.bs].to(self.adapter.device),
                                   use_cache=False)
        finally:
            for m in layers:
                m.calibrating = False
                m.act_quantizer.freeze()

    def deploy_fake(self) -> None:
        for i, block in enumerate(self.adapter.blocks):
            self._deploy_block(i, block)
        if self.qcfg.kvcache is not None:
            from ..quant.kvcache import enable_kv_quant
            kv = Quantizer(self.qcfg.kvcache)
            enable_kv_quant(self.adapter, kv, kv, getattr(self, "query_key_transform", None))
