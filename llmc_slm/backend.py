"""A faster loglikelihood backend for lm-evaluation-harness, with the same answers as its ``HFLM``.

``PrefixSharingLM`` (registered with lm-eval as ``"slmquant"``) scores ``(context, continuation)`` requests
on the in-memory model, as it is (dtype and device kept; ``tie_weights`` never called), for float,
transformed, fake-quant (``FakeQuantLinear``) and deployed (``IntLinear``) models, on CPU and CUDA.
``eval.backend: hf`` keeps lm-eval's ``HFLM`` as the reference (``llmc_slm.harness.make_lm``).

Tokenization is exactly HFLM's, so that both score the same token ids:
``lm_eval/api/model.py`` ``TemplateLM.loglikelihood`` (an empty context becomes ``prefix_token_id``) and
``TemplateLM._encode_pair`` (trailing spaces of the context move onto the continuation; the whole string is
encoded and split at the context's length) are inherited as they are; ``tok_encode``, ``prefix_token_id``,
``eot_token_id`` and ``max_length`` follow ``lm_eval/models/huggingface.py`` ``HFLM`` (``add_bos_token``
None: the tokenizer's default special tokens, none added to a string that already starts with BOS), and a
request longer than ``max_length + 1`` tokens is left-truncated as ``HFLM._loglikelihood_tokens`` does.

How it is faster (HFLM recomputes the shared context for every choice and takes a log-softmax over the
whole vocabulary at every position):

* requests are grouped by context token ids (every choice of a multiple-choice item shares one context),
  identical continuations scored once;
* **packing**: each group becomes one sequence ``[context, cont_1[:-1], cont_2[:-1], ...]`` (a
  continuation's last token is only predicted, never an input), position ids restarting at
  ``len(context)`` for each continuation, and a 4-D additive attention mask that is block-causal: the
  context is causal, continuation j sees the whole context and its own earlier tokens only. Every token
  the scores need is computed once and nothing else is.
* **shared prefixes across items** (``share_prefixes``, on by default): the contexts of different items
  often begin alike (the same instruction, a task's "Question:", HellaSwag's activity label, a few-shot
  block). Groups are sorted by context and adjacent ones with a common prefix are joined (``_units``: up
  to a row, or twice the prefix shared when that is longer) into one token tree, a radix tree over their contexts laid out depth first: a node's tokens see
  every span on their path from the root and their own earlier tokens, position ids are the depth in the
  tree, and each group's continuations hang below the node where its context ends. Measured with
  SmolLM2's tokenizer on 96 items, the tokens computed drop by 1.07x on HellaSwag and ARC-Easy, 1.06x on
  ARC-Challenge and PIQA and 1.17x on cloze MMLU (1.07x to 1.26x on 1,000 items, where more items share a
  prefix), with units as long as the longest item; the bound gives part of it back where prefixes are
  short (1,000 cloze-MMLU items: 81,411 tokens instead of 76,133) for a third of the attention. Scores
  are unchanged: each token is computed over the same tokens at the same positions.
* forwards: on the CPU a forward's units go one after another in a single row of up to
  ``max_batch_tokens`` (first fit, longest first), with no padding, and attention runs per unit over its
  own tree mask (``llmc_slm.segmented_attention``), so neither padding nor the masked-out pairs between
  units are computed: on 64 items of ARC-Challenge, HellaSwag and ARC-Easy (bfloat16, 1 thread, process
  time) 1.09x, 1.06x and 1.04x faster than the rows below. Otherwise (``segments=False``, ``eager``
  attention, a GPU) short units share rows of ``row_tokens`` (first fit, longest first; a longer unit is a
  row of its own; each unit its own block of one mask) and rows go several to a forward (at most
  ``batch_size`` rows and ``max_batch_tokens`` padded tokens, right-padded). Either way only the decoder
  runs on every token (``model.get_decoder()``); the output head and the log-softmax run only on the
  hidden states that predict a continuation token.
* Packing against the alternative, KV-cache reuse (contexts batched once with a cache, the cache repeated
  per continuation, continuations batched, the head only where needed; the issue's 60-line sketch measured
  it at 1.3x HFLM on HellaSwag and 2.3x on ARC-Easy). Measured here on the same 24 items (96 requests),
  SmolLM2-135M in bfloat16, 1 thread, process CPU time (the 2-core machine was shared with other jobs,
  so wall time swung 2-3x), best of 2: ARC-Easy HFLM (batch 16) 12.5 s, KV reuse 8.7 s (1.4x), packing
  4.2 s (3.0x); HellaSwag HFLM 19.3 s, KV reuse 14.2 s (1.4x), packing 9.4 s (2.1x). Packing is 2.1x
  faster than KV reuse on ARC-Easy and 1.5x on HellaSwag, and is the one implemented. Its speed-up is
  close to the ratio of tokens computed (96 items: HFLM / packed = 3.0x mmlu_continuation, 3.0x ARC-Easy,
  2.9x ARC-Challenge, 2.1x HellaSwag, 1.25x PIQA; the head rows 8x, 7x, 6x, 3x, 1.6x fewer), since a
  forward is compute-bound on the decoder's linears: short items share a row (``row_tokens``), so padding
  adds ~5% instead of the 10-50% of padding each item to the batch's longest.

A model whose output at a token depends on other tokens of the sequence beyond causal attention cannot
be packed: an activation (or K/V) quantizer with ``granularity == "per_tensor"`` and dynamic ranges takes
one range over every token in its input, so the other continuations and the padding would change it.
There (``sequence_dependent_quantizers``) the backend falls back to HFLM's own computation, one whole
sequence ``(context + continuation)[:-1]`` per request and per forward (batch 1: no padding enters the
range), and says so in ``backend``: ``"slmquant (whole sequences: per-tensor dynamic activations)"``.
Attention implementations that cannot take a 4-D float mask (flash attention) fall back the same way.
A model with sliding-window attention layers (Gemma-3: ``config.sliding_window`` with ``sliding_attention``
in ``layer_types``) is given the unit's tree mask in every layer; that equals its own sliding mask while no
query is ``sliding_window`` or more positions after a key it sees, i.e. for a request of at most
``sliding_window`` tokens: longer requests are scored whole (``sliding_window_of``).

Numbers: in float32 every log-likelihood equals HFLM's to rounding (measured over 200 items of each of the
six tasks: max |difference| 1.5e-4 on PIQA's sums of ~25 token log-probabilities, 1.1e-4 on cloze MMLU,
below 7e-5 elsewhere; every chosen answer the same; a different matmul shape rounds differently). In bfloat16 the log-softmax and the
sums are taken in bf16 as HFLM's default does (``softmax_dtype``), but the hidden states themselves differ
by bf16 rounding (other shapes, a masked attention kernel instead of the causal one), and a bf16 sum of
-100 has a step of 0.5: items whose two best answers are that close can flip (measured: 1 of 20 items
flipped in 3 of the 6 tasks, every aggregate within one stderr). ``tools/check_tasks.py --backends``
compares every request of the six tasks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix, resolve_max_length

from llmc.progress import Bar

from .segmented_attention import can_segment
from .segmented_attention import segmented as attention_per_segment

log = logging.getLogger(__name__)

NAME = "slmquant"
PER_TENSOR_REASON = "per-tensor dynamic activations"
MASKABLE_ATTENTION = ("sdpa", "eager", "llmc_kvquant")   # take a 4-D additive float mask as it is
MAX_UNIT_GROUPS = 64   # items sharing one token tree (bounds its depth)


def sequence_dependent_quantizers(model: torch.nn.Module) -> list[str]:
    """Names of the activation / K / V quantizers in ``model`` whose result at a token depends on other
    tokens: ``granularity == "per_tensor"`` with dynamic (not static) ranges. Weight quantizers are not
    applied to activations and are skipped."""
    from llmc.quant.quantizer import Quantizer
    found = []
    for name, module in model.named_modules():
        if (isinstance(module, Quantizer) and name.rsplit(".", 1)[-1] != "weight_quantizer"
                and module.granularity == "per_tensor" and not module.static):
            found.append(name)
    return found


def sliding_window_of(config) -> int | None:
    """The attention window of a model whose layers include sliding-window ones, else None."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if not window or (types is not None and "sliding_attention" not in types):
        return None
    return int(window)


def whole_sequence_reason(model: torch.nn.Module) -> str | None:
    """Why ``model`` must be scored one whole sequence at a time, or None when packing is exact."""
    if sequence_dependent_quantizers(model):
        return PER_TENSOR_REASON
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl not in MASKABLE_ATTENTION:
        return f"attention implementation {impl} takes no 4-D mask"
    if getattr(model.config, "final_logit_softcapping", None) is not None:
        return "the model soft-caps its logits"
    return None


@dataclass
class _Group:
    """One context and its distinct continuations; ``owners[j]`` are the request indices of ``conts[j]``."""
    ctx: list[int]
    conts: list[list[int]] = field(default_factory=list)
    owners: list[list[int]] = field(default_factory=list)

    @property
    def cont_tokens(self) -> int:   # continuation tokens that are inputs (a last token is only predicted)
        return sum(len(c) - 1 for c in self.conts)


@dataclass
class _Node:
    """A node of a token tree (a radix tree over contexts): ``tokens`` follow the parent's; ``ends`` are the
    groups whose context ends with this node's last token."""
    tokens: list[int]
    ends: list[_Group] = field(default_factory=list)
    children: list["_Node"] = field(default_factory=list)


def _common_prefix(a, b) -> int:
    """The length of the common prefix of two token lists."""
    return len(os.path.commonprefix([a, b]))


def _tree(groups: list[_Group], start: int = 0) -> _Node:
    """The radix tree of the groups' contexts below ``start`` (all share ``ctx[:start]``; sorted by ctx)."""
    first = groups[0].ctx
    shared = min(_common_prefix(first[start:], g.ctx[start:]) for g in groups)
    end = start + shared
    node = _Node(list(first[start:end]), [g for g in groups if len(g.ctx) == end])
    assert node.tokens, "a unit's contexts share a first token"
    rest = [g for g in groups if len(g.ctx) > end]
    i = 0
    while i < len(rest):   # sorted: the groups going on with the same token are adjacent
        j = i
        while j < len(rest) and rest[j].ctx[end] == rest[i].ctx[end]:
            j += 1
        node.children.append(_tree(rest[i:j], end))
        i = j
    return node


@dataclass
class _Unit:
    """Groups whose contexts share a prefix, packed as one token tree (each shared token computed once),
    or a single group. ``length``: the tokens it takes in a row."""
    groups: list[_Group]
    length: int

    def tree(self) -> _Node:
        return _tree(self.groups)


def _units(groups: list[_Group], row_tokens: int, share: bool) -> list[_Unit]:
    """Groups in context order, adjacent ones with a common prefix joined into one unit while it stays
    within ``max(row_tokens, 2 x the prefix shared)`` tokens (in sorted order a context shares the most with
    its predecessor, so adding it costs ``len(ctx) - common prefix`` new context tokens). The bound keeps
    the attention a unit computes and masks out (its branches do not see each other) in proportion to the
    tokens it saves: short prefixes (a task's "Question:") join items up to a row, a long few-shot prefix
    is shared by as many items as fit in twice its length. Without ``share`` every group is its own unit."""
    units: list[_Unit] = []
    prev = None
    for g in sorted(groups, key=lambda g: g.ctx):
        shared = _common_prefix(prev.ctx, g.ctx) if (share and prev is not None) else 0
        cost = len(g.ctx) - shared + g.cont_tokens
        if (shared and units[-1].length + cost <= max(row_tokens, 2 * shared)
                and len(units[-1].groups) < MAX_UNIT_GROUPS):
            units[-1].groups.append(g)
            units[-1].length += cost
        else:
            units.append(_Unit([g], len(g.ctx) + g.cont_tokens))
        prev = g
    return units


@dataclass
class _Laid:
    """A unit laid out as its own sequence: token ids, position ids, ``allowed[i, j]`` (token i sees token
    j), ``reads`` the offsets whose hidden states predict ``targets``, ``spans`` each continuation's slice of
    ``targets`` and ``owners`` its requests."""
    ids: torch.Tensor
    pos: torch.Tensor
    allowed: torch.Tensor
    reads: list[int]
    targets: list[int]
    spans: list[tuple[int, int]]
    owners: list[list[int]]


def _lay_out(unit: _Unit) -> _Laid:
    """The unit laid out depth first: each node of its token tree, then the continuations of the groups
    ending there, then its children. A token sees its ancestors' tokens (every span on its path) and the
    earlier tokens of its own span; its position id is its depth in the tree, so every token is computed as
    in its own unpacked sequence."""
    n_all = unit.length
    ids = torch.empty(n_all, dtype=torch.long)
    pos = torch.empty(n_all, dtype=torch.long)
    allowed = torch.zeros((n_all, n_all), dtype=torch.bool)
    laid = _Laid(ids, pos, allowed, [], [], [], [])

    def span(off: int, tokens: list[int], depth: int, above: list[tuple[int, int]]) -> int:
        n = len(tokens)
        ids[off:off + n] = torch.tensor(tokens)
        pos[off:off + n] = torch.arange(depth, depth + n)
        for s0, s1 in above:
            allowed[off:off + n, s0:s1] = True
        allowed[off:off + n, off:off + n] = torch.ones(n, n, dtype=torch.bool).tril_()
        return off + n

    def place(node: _Node, off: int, depth: int, above: list[tuple[int, int]]) -> int:
        start = off
        off = span(off, node.tokens, depth, above)
        path, depth = above + [(start, off)], depth + len(node.tokens)
        last = off - 1                       # predicts each continuation's first token
        for g in node.ends:
            for cont, own in zip(g.conts, g.owners):
                n = len(cont) - 1
                first = len(laid.targets)
                laid.reads.extend([last, *range(off, off + n)])
                laid.targets.extend(cont)
                laid.spans.append((first, first + n + 1))
                laid.owners.append(own)
                if n:
                    off = span(off, cont[:-1], depth, path)
        for child in node.children:
            off = place(child, off, depth, path)
        return off

    assert place(unit.tree(), 0, 0, []) == n_all
    return laid


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean "may attend" matrix as an additive attention mask: 0 where allowed, the dtype's lowest
    value elsewhere."""
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


@register_model(NAME)
class PrefixSharingLM(TemplateLM):
    """lm-eval ``LM`` over an in-memory causal LM: contexts once, continuations packed (module docstring).

    Args:
        pretrained: the model (an HF causal LM with ``.model`` the decoder and an output head), as it is.
        tokenizer: its tokenizer.
        batch_size: at most this many rows per forward.
        max_batch_tokens: at most this many padded tokens (rows x longest row) per forward.
        row_tokens: units shorter than this share a row of this many tokens; a longer one is a row of its own.
        softmax_dtype: as HFLM's: None (its default) takes the log-softmax, and sums the continuation's
            log-probabilities, in the logits' dtype (bfloat16 for a bf16 model), so that the answers are
            HFLM's; ``torch.float32`` is more accurate in bf16 but rounds differently from HFLM.
        share_prefixes: join items whose contexts begin alike into one token tree.
        segments: a forward's units in one unpadded row, attention per unit (``segmented_attention``);
            None: on the CPU when the attention implementation allows (``sdpa``, ``llmc_kvquant``), else
            padded rows of ``row_tokens`` under one mask (``eager``; a GPU, where dozens of small attention
            kernels cost more than one masked one).
        whole_sequences: force the whole-sequence path (None: decide from the model).
        max_length: as HFLM's (None: from the config / tokenizer, 2048 by default).
    """

    _DEFAULT_MAX_LENGTH = 2048   # HFLM's

    def __init__(self, pretrained, tokenizer, batch_size: int = 8, max_batch_tokens: int = 2048,
                 row_tokens: int = 256, whole_sequences: bool | None = None, max_length: int | None = None,
                 add_bos_token: bool | None = None, softmax_dtype: torch.dtype | str | None = None,
                 share_prefixes: bool = True, segments: bool | None = None):
        super().__init__()
        self.model = pretrained
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.max_batch_tokens = max(1, int(max_batch_tokens))
        self.row_tokens = max(1, int(row_tokens))
        self.share_prefixes = bool(share_prefixes)
        self.segments = segments
        self.softmax_dtype = getattr(torch, softmax_dtype) if isinstance(softmax_dtype, str) else softmax_dtype
        self.add_bos_token = add_bos_token
        self._max_length = max_length
        reason = whole_sequence_reason(pretrained)
        if whole_sequences is not None:
            reason = (reason or "asked for") if whole_sequences else None
        self.whole_reason = reason
        self.window = sliding_window_of(pretrained.config)   # longer requests are scored whole
        self.backend_name = NAME if reason is None else f"{NAME} (whole sequences: {reason})"
        if reason is not None:
            log.info("%s", self.backend_name)

    # ------------------------------------------------------------------ HFLM's tokenization (huggingface.py)
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        if self._max_length:
            return self._max_length
        return resolve_max_length(self.model.config, self.tokenizer, default=self._DEFAULT_MAX_LENGTH)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len=None,
                   **kwargs) -> list[int]:
        kw = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            kw["add_special_tokens"] = False
        enc = self.tokenizer.encode(string, **kw)
        return enc[-left_truncate_len:] if left_truncate_len else enc

    # ------------------------------------------------------------------------------------------ scoring
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """``requests``: ``((context, continuation), context_enc, continuation_enc)`` as TemplateLM builds
        them; returns ``(log-likelihood, is_greedy)`` per request, in order."""
        out: list = [None] * len(requests)
        groups: dict[tuple, _Group] = {}
        whole: list[int] = []
        for i, (_, ctx, cont) in enumerate(requests):
            assert len(ctx) > 0 and 0 < len(cont) <= self.max_length
            if (self.whole_reason is not None or len(ctx) + len(cont) > self.max_length + 1
                    or (self.window and len(ctx) + len(cont) > self.window)):
                whole.append(i)
                continue
            g = groups.setdefault(tuple(ctx), _Group(list(ctx)))
            try:
                j = g.conts.index(cont)
            except ValueError:
                g.conts.append(list(cont))
                g.owners.append([])
                j = len(g.conts) - 1
            g.owners[j].append(i)
        bar = Bar(len(requests), "Running loglikelihood requests (slmquant)", disable=disable_tqdm, unit="req",
                  dynamic_ncols=True, leave=True)
        with torch.no_grad(), bar:
            for i in whole:
                _, ctx, cont = requests[i]
                out[i] = self._score_whole(ctx, cont)
                bar.update(1)
            segmented = self._segmented()
            for batch in self._batches(list(groups.values()), segmented):
                for owners, result in zip(*self._score_packed(batch, segmented)):
                    for i in owners:
                        out[i] = result
                    bar.update(len(owners))
        return out

    def _segmented(self) -> bool:
        """Whether the forwards put a batch's units in one row with attention per unit
        (``llmc_slm.segmented_attention``) rather than in padded rows under one mask."""
        if self.segments is not None:
            return self.segments and can_segment(self.model)
        return self.device.type == "cpu" and can_segment(self.model)

    def _rows(self, groups: list[_Group], capacity: int) -> list[list[_Unit]]:
        """Groups joined into units (``_units``: contexts sharing a prefix, when ``share_prefixes``), placed in
        rows of ``capacity`` tokens (first fit, longest first; a longer unit is a row of its own)."""
        rows: list[list[_Unit]] = []
        room: list[int] = []
        for u in sorted(_units(groups, self.row_tokens, self.share_prefixes), key=lambda u: -u.length):
            for r, free in enumerate(room):
                if u.length <= free:
                    rows[r].append(u)
                    room[r] -= u.length
                    break
            else:
                rows.append([u])
                room.append(capacity - u.length)
        return rows

    def _batches(self, groups: list[_Group], segmented: bool):
        """The forwards, each a list of rows of units.

        Segmented (the CPU default): one row per forward, the units one after another up to
        ``max_batch_tokens``, no padding, attention per unit. Rows (``segments=False``, and on a GPU, where
        one masked kernel beats dozens of small ones): units in rows of ``row_tokens`` (short items share a
        row, each unit its own block of the mask, so little is padding and no row is longer than it must
        be, since a row's attention is computed over all its pairs of tokens, masked or not), at most
        ``batch_size`` rows and ``max_batch_tokens`` padded tokens per forward, longest rows first."""
        if segmented:
            yield from ([row] for row in self._rows(groups, self.max_batch_tokens))
            return
        rows = sorted(self._rows(groups, self.row_tokens), key=lambda r: -sum(u.length for u in r))
        batch: list[list[_Unit]] = []
        for row in rows:
            longest = sum(u.length for u in batch[0]) if batch else sum(u.length for u in row)
            if batch and (len(batch) >= self.batch_size or longest * (len(batch) + 1) > self.max_batch_tokens):
                yield batch
                batch = []
            batch.append(row)
        if batch:
            yield batch

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.model.get_output_embeddings()
        return head(hidden)

    def _score_packed(self, batch: list[list[_Unit]], segmented: bool = False):
        """One forward over rows of units (``_lay_out``); returns (owners per continuation, results).
        ``segmented``: a single row whose units attend within themselves only (``segmented_attention``);
        otherwise each row's units are blocks of one mask (padding attends to itself, never read)."""
        device = self.device
        laid = [[_lay_out(u) for u in row] for row in batch]
        length = max(sum(len(u.ids) for u in row) for row in laid)
        nb = len(batch)
        pad = self.tokenizer.pad_token_id
        pad = self.eot_token_id if pad is None else pad
        ids = torch.full((nb, length), pad if pad is not None else 0, dtype=torch.long)
        pos = torch.zeros((nb, length), dtype=torch.long)
        allowed = None if segmented else torch.eye(length, dtype=torch.bool).repeat(nb, 1, 1)
        bounds, unit_masks = [], []
        rows_b, rows_t, targets, spans, owners = [], [], [], [], []
        dtype = self.model.get_input_embeddings().weight.dtype
        if not dtype.is_floating_point:
            dtype = torch.float32
        for b, row in enumerate(laid):
            off = 0
            for u in row:
                n = len(u.ids)
                ids[b, off:off + n] = u.ids
                pos[b, off:off + n] = u.pos
                if segmented:
                    bounds.append((off, off + n))
                    unit_masks.append(_additive(u.allowed, dtype).to(device)[None, None])
                else:
                    allowed[b, off:off + n, off:off + n] = u.allowed
                rows_b.extend([b] * len(u.reads))
                rows_t.extend(off + t for t in u.reads)
                spans.extend((len(targets) + s, len(targets) + e) for s, e in u.spans)
                targets.extend(u.targets)
                owners.extend(u.owners)
                off += n
        decoder = self.model.get_decoder()
        if segmented:
            placeholder = torch.zeros((1, 1, 1, 1), dtype=dtype, device=device)   # 4-D: taken as it is
            with attention_per_segment(self.model, bounds, unit_masks) as kwargs:
                hidden = decoder(input_ids=ids.to(device), attention_mask=placeholder,
                                 position_ids=pos.to(device), use_cache=False, **kwargs).last_hidden_state
        else:
            mask = _additive(allowed, dtype).unsqueeze(1)
            hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                             use_cache=False).last_hidden_state
        picked = hidden[torch.tensor(rows_b, device=device), torch.tensor(rows_t, device=device)]
        logits = self._head(picked.unsqueeze(0))[0]
        logp, hit = self._token_scores(logits, targets)
        results = [(float(logp[s:e].sum()), bool(hit[s:e].all())) for s, e in spans]
        return owners, results

    def _token_scores(self, logits: torch.Tensor, targets: list[int]):
        """Per-token log-probabilities (in ``softmax_dtype``, as HFLM: None keeps the logits' dtype, and the
        sums are taken in it too) and whether each target is the argmax, on the CPU."""
        tgt = torch.tensor(targets, device=logits.device)
        logp = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        picked = logp.gather(1, tgt.unsqueeze(1)).squeeze(1)
        # HFLM's greedy test, ``argmax(log-softmax) == target`` (argmax: the first maximum, in the softmax
        # dtype), computed as "the target holds the maximum and no earlier token does": amax is ~10x
        # faster than argmax over a bf16 vocabulary on the CPU, and only the rare rows where the target
        # holds the maximum are searched for an earlier tie
        top = logp.amax(dim=-1)
        hit = picked == top
        for r in hit.nonzero().flatten().tolist():
            t = int(tgt[r])
            if t and bool((logp[r, :t] == top[r]).any()):
                hit[r] = False
        return picked.cpu(), hit.cpu()

    def _score_whole(self, ctx: list[int], cont: list[int]):
        """HFLM's computation for one request: the whole (left-truncated) sequence minus its last token,
        through the whole model, scored at the continuation's positions."""
        inp = (ctx + cont)[-(self.max_length + 1):][:-1]
        logits = self.model(torch.tensor([inp], device=self.device)).logits[0, -len(cont):]
        logp, hit = self._token_scores(logits, cont)
        return float(logp.sum()), bool(hit.all())

    # -------------------------------------------------------------------------------- not needed here
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("slmquant backend: loglikelihood_rolling is not implemented "
                                  "(our tasks use loglikelihood only); use eval.backend: hf")

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("slmquant backend: generate_until is not implemented "
                                  "(our tasks use loglikelihood only); use eval.backend: hf")
