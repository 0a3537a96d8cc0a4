"""Block-diagonal attention over one packed row: each segment attends within itself only.

The evaluation backend (``llmc_slm.backend``) can put every unit of a forward (an item, or items sharing a
prefix) one after another in a single row, with no padding: the linears see each token once, whatever
the units' lengths. Attention must not cross units, and computing it over the whole row with a
block-diagonal mask would cost ``row_length**2`` per head for ``sum(unit_length**2)`` useful pairs. So
attention runs per segment instead: ``slmquant_segments``, registered with transformers'
``AttentionInterface``, slices the queries, keys and values of each segment and calls the model's own
attention function on them with that segment's mask (its token tree, ``llmc_slm.backend``), then joins the
outputs. Every token sees the same keys at the same positions as in its own sequence, so the numbers are
those of the row layout up to the rounding of a differently shaped kernel.

Only implementations in the attention registry that take a 4-D additive mask are wrapped (``sdpa`` and
``llmc_kvquant``, ``llmc.quant.kvcache``, whose per-token K/V quantizers do not mix tokens); a model on
another one (``eager``) keeps the row layout. The model's ``config._attn_implementation`` is switched to
``slmquant_segments`` only for the forward (``segmented``) and restored after it, error or not.

The same idea as the variable-length ("varlen", ``cu_seqlens``) attention of FlashAttention, which packs
sequences without padding; PyTorch's CPU SDPA has no varlen entry point, hence the loop over segments (a
few dozen small calls per layer: negligible beside the linears on the CPU; on a GPU each call is a kernel
launch, so the backend keeps rows there).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

NAME = "slmquant_segments"
SEGMENTABLE = ("sdpa", "llmc_kvquant")
KWARG = "slmquant_segments"


@dataclass
class Segments:
    """The segments of the row: ``bounds[i] = (start, end)`` token offsets, ``masks[i]`` the additive
    ``[1, 1, n, n]`` mask of segment i; ``inner`` the attention function the model was using."""
    inner: Callable
    bounds: list[tuple[int, int]]
    masks: list[torch.Tensor]


def segmented_attention(module, query, key, value, attention_mask, **kwargs):
    """``AttentionInterface`` signature: query ``[1, heads, tokens, d]``, key and value ``[1, kv_heads,
    tokens, d]``; returns ``([1, tokens, heads, d], None)``. ``attention_mask`` (a placeholder) is unused."""
    segments: Segments = kwargs.pop(KWARG)
    if query.shape[0] != 1:
        raise ValueError(f"{NAME}: one packed row per forward, got a batch of {query.shape[0]}")
    outs = []
    for (start, end), mask in zip(segments.bounds, segments.masks):
        out, _ = segments.inner(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                mask, **kwargs)
        outs.append(out)
    return torch.cat(outs, dim=1), None


AttentionInterface.register(NAME, segmented_attention)


def can_segment(model) -> bool:
    return model.config._attn_implementation in SEGMENTABLE


@contextmanager
def segmented(model, bounds: list[tuple[int, int]], masks: list[torch.Tensor]):
    """For the forwards inside: attention per segment. Yields the keyword arguments to pass to the
    decoder (transformers hands them on to every attention call)."""
    impl = model.config._attn_implementation
    if impl not in SEGMENTABLE:
        raise ValueError(f"{NAME}: attention '{impl}' is not one of {', '.join(SEGMENTABLE)}")
    model.config._attn_implementation = NAME
    try:
        yield {KWARG: Segments(ALL_ATTENTION_FUNCTIONS[impl], bounds, masks)}
    finally:
        model.config._attn_implementation = impl
