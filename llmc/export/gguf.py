"""``gguf``: the quantized model as a GGUF file that llama.cpp loads, written from our exact integer codes and
scales (no re-quantization), asked for with ``save.formats: [gguf]``.

Output: ``<save.save_path>/<run>_gguf_fake_quant/model.gguf`` and ``slmquant_gguf.json`` beside it (every tensor's
GGUF type, the block scales' worst relative rounding, what the runtime does differently).

Block formats (ggml's ``ggml-common.h`` / ``ggml-quants.c``, gguf-py's ``gguf/quants.py``): every type
below packs 32 consecutive input columns of one output row into a block (``QK = 32``), little-endian:

==========  =====  ==========================================  ===========================================
type        bytes  layout                                      value of code ``q`` (position ``j``)
==========  =====  ==========================================  ===========================================
``Q8_0``    34     ``d`` fp16, ``qs[32]`` int8                 ``d * qs[j]``
``Q4_0``    18     ``d`` fp16, ``qs[16]`` (j: low nibble of     ``d * (q - 8)``, ``q`` in 0..15
                   ``qs[j]``; j + 16: its high nibble)
``Q4_1``    20     ``d`` fp16, ``m`` fp16, ``qs[16]`` (as Q4_0) ``d * q + m``, ``q`` in 0..15
``Q5_0``    22     ``d`` fp16, ``qh`` uint32 (bit j: the 5th    ``d * (q - 16)``, ``q`` in 0..31
                   bit of ``q[j]``), ``qs[16]`` (low nibbles)
``Q5_1``    24     ``d`` fp16, ``m`` fp16, ``qh``, ``qs[16]``     ``d * q + m``, ``q`` in 0..31
==========  =====  ==========================================  ===========================================

Our grids map onto them exactly, up to the fp16 rounding of the scale (and of ``m``):

* symmetric (signed codes ``c``, ``w = s c``): 2..4 bits -> ``Q4_0`` (``q = c + 8``, ``d = fp16(s)``);
  5 bits -> ``Q5_0`` (``q = c + 16``); 6..8 bits -> ``Q8_0`` (``qs = c``);
* asymmetric (unsigned codes ``q``, zero ``z``, ``w = s (q - z)``): 2..4 bits -> ``Q4_1`` and 5 bits ->
  ``Q5_1``, with ``d = fp16(s)`` and ``m = fp16(-s z)`` (the one inexact term: ``|m| <= (2^b - 1) s``, rounded to
  fp16, about 1e-3 of a weight's range at worst);
* per_channel and per_tensor scales are repeated in every block of the row; per_group scales need a
  ``group_size`` that is a multiple of 32 (each block lies inside one group).

Refused, with one line naming the reason (never written differently): asymmetric 6..8-bit weights (GGUF
has no 8-bit weight type with a zero point; ``Q8_1`` is llama.cpp's activation type), groups that are not
a multiple of 32, input widths that are not, online input transforms (SpinQuant's R4 Hadamard before
``down_proj``, R3 on Q / K: llama.cpp's llama and qwen2 graphs have no such op), model families whose
llama.cpp graph is not mapped here, and linear biases that graph does not load.

What the file cannot carry, and llama.cpp does its own way: activation quantization (llama.cpp quantizes a
matmul's input per block of 32 to ``Q8_0`` / ``Q8_1`` for these weight types, finer than our per-token
grid) and KV-cache quantization (F16 cache by default). The rest is float: token embeddings as ``Q8_0``
(llama.cpp's own round-to-nearest, gguf-py's reference quantizer) when ``save.real_embed_bit`` is 8 (the
packed checkpoint's int8 rows, finer here: blocks of 32), else F16; an untied lm_head the same way; norms
and biases F32. Tensors are named by gguf-py's ``TensorNameMap``; for llama-family graphs the Q and K rows
are permuted from Hugging Face's rotate-half RoPE layout to llama.cpp's (as llama.cpp's converter does:
a permutation of whole rows, so the blocks are unchanged). The tokenizer is copied from the GGUF the model
(or its tokenizer) came from; without one the file has ``no_vocab`` (llama.cpp takes token ids only).

:func:`write_float_gguf` writes a float model as F16 / BF16 / F32 (the runtime's float baseline) or as
llama.cpp's own round-to-nearest ``Q8_0`` / ``Q4_0`` / ``Q4_1`` of every linear (the edge peer).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import UserError
from ..registry import register_exporter
from ..utils import atomic_dir
from . import Exporter

log = logging.getLogger(__name__)

QK = 32
GGUF_FILE = "model.gguf"
SIDECAR = "slmquant_gguf.json"


@dataclass(frozen=True)
class GGUFArch:
    """How one Hugging Face ``model_type`` is written for llama.cpp: its graph's name, whether Q / K rows
    are permuted to llama.cpp's RoPE layout, and the linear biases that graph loads (gguf names)."""
    name: str
    permute_qk: bool
    biases: tuple


# llama.cpp's src/models/llama.cpp loads optional q/k/v/o and MLP biases; qwen2.cpp q/k/v only.
ARCHES = {
    "llama": GGUFArch("llama", True, ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")),
    "mistral": GGUFArch("llama", True, ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")),
    "qwen2": GGUFArch("qwen2", False, ("attn_q", "attn_k", "attn_v")),
}


# ------------------------------------------------------------------------------------- the grids
def weight_type(bit: int, symmetric: bool) -> tuple[Optional[str], Optional[str]]:
    """(GGUF block type, None) for a weight grid, or (None, the reason it has none)."""
    if symmetric:
        return ("Q4_0" if bit <= 4 else "Q5_0" if bit == 5 else "Q8_0"), None
    if bit <= 4:
        return "Q4_1", None
    if bit == 5:
        return "Q5_1", None
    return None, (f"asymmetric {bit}-bit weights: GGUF has no weight type with an 8-bit code and a zero point "
                  f"(Q8_1 is llama.cpp's activation type); use symmetric weights")


def grid_refusal(bit: int, symmetric: bool, granularity: str, group_size: int,
                 in_features: Optional[int] = None) -> Optional[str]:
    """Why a weight quantizer cannot be written as GGUF blocks (None: it can)."""
    qtype, reason = weight_type(bit, symmetric)
    if qtype is None:
        return reason
    if granularity == "per_group" and group_size % QK:
        return (f"per_group weights with group_size {group_size}: GGUF blocks hold {QK} values under one scale, "
                f"so the group size must be a multiple of {QK}")
    if granularity not in ("per_channel", "per_group", "per_tensor"):
        return f"{granularity} weights: GGUF blocks have one scale per {QK} values of a row"
    if in_features is not None and in_features % QK:
        return f"an input width of {in_features}: GGUF blocks need a multiple of {QK}"
    return None


def refusal(cfg) -> Optional[str]:
    """Why a run's config cannot be exported to GGUF, known before the model loads (None: it can, as far
    as the config tells; the model's widths and the method's transforms are checked at export)."""
    q = cfg.quant
    if q is None or q.weight is None:
        return "a model without quantized weights: write the float baseline with llmc.export.gguf.write_float_gguf"
    w = q.weight
    reason = grid_refusal(w.bit, w.symmetric, w.granularity, w.group_size)
    if reason:
        return reason
    online = online_transforms_in_config(cfg)
    if online:
        return online
    from . import family_refusal
    return family_refusal(cfg, tuple(ARCHES), "llama.cpp graph mapping")


def online_transforms_in_config(cfg) -> Optional[str]:
    """SpinQuant's settings that add online Hadamards (``llmc.methods.spinquant``: ``r4``; ``r3`` when set,
    or null with a quantized KV cache)."""
    special = cfg.quant.special
    r4, r3 = getattr(special, "r4", False), getattr(special, "r3", False)
    if r3 is None:
        r3 = cfg.quant.kvcache is not None
    if r4 or r3:
        which = " and ".join(n for n, on in (("R4 (online Hadamard on down_proj's input)", r4),
                                             ("R3 (online Hadamard on Q and K)", r3)) if on)
        return (f"{cfg.quant.method} {which}: llama.cpp's graph has no online Hadamard before a matmul; "
                f"set quant.special.r4 false (and r3 false) to export")
    return None


# ----------------------------------------------------------------------------------- the blocks
def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.astype(np.float16)).view(np.uint8).reshape(*x.shape, 2)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """[..., 32] codes 0..15 -> [..., 16] bytes: low nibble = position j, high nibble = position j + 16."""
    q = q.astype(np.uint8)
    return (q[..., :QK // 2] & 0x0F) | ((q[..., QK // 2:] & 0x0F) << 4)


def _high_bits(q: np.ndarray) -> np.ndarray:
    """[..., 32] codes 0..31 -> [..., 4] bytes: uint32 little-endian with bit j = the 5th bit of q[j]."""
    bits = ((q.astype(np.uint32) >> 4) & 1) << np.arange(QK, dtype=np.uint32)
    qh = np.bitwise_or.reduce(bits, axis=-1).astype("<u4")
    return np.ascontiguousarray(qh).view(np.uint8).reshape(*q.shape[:-1], 4)


def pack_blocks(codes: np.ndarray, scale: np.ndarray, zero: Optional[np.ndarray], qtype: str) -> np.ndarray:
    """Our codes [rows, cols] (int8 signed / uint8 unsigned), one scale (and zero) per block [rows, cols / 32]
    -> GGUF blocks as bytes [rows, cols / 32 * block bytes] (the module docstring's layouts)."""
    rows, cols = codes.shape
    nb = cols // QK
    c = codes.astype(np.int32).reshape(rows, nb, QK)
    d = _f16_bytes(scale.astype(np.float32).reshape(rows, nb))
    if qtype == "Q8_0":
        parts = [d, c.astype(np.int8).view(np.uint8)]
    elif qtype == "Q4_0":
        parts = [d, _nibbles(c + 8)]
    elif qtype == "Q5_0":
        q = c + 16
        parts = [d, _high_bits(q), _nibbles(q)]
    elif qtype in ("Q4_1", "Q5_1"):
        m = _f16_bytes(-(scale.astype(np.float32) * zero.astype(np.float32)).reshape(rows, nb))
        parts = [d, m] + ([_high_bits(c)] if qtype == "Q5_1" else []) + [_nibbles(c)]
    else:
        raise ValueError(f"pack_blocks: no layout for {qtype}")
    return np.concatenate(parts, axis=-1).reshape(rows, -1)


def block_params(scale: torch.Tensor, zero: Optional[torch.Tensor], rows: int, cols: int, granularity: str,
                 group_size: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Per-block scale (and zero) [rows, cols / 32] from a quantizer's params (``[rows, 1]`` per channel,
    ``[rows, cols / g, 1]`` per group, one value per tensor)."""
    nb = cols // QK

    def expand(t):
        if t is None:
            return None
        t = t.detach().float().cpu()
        if granularity == "per_group":
            t = t.reshape(rows, cols // group_size).repeat_interleave(group_size // QK, dim=1)
        else:
            t = t.reshape(-1, 1).expand(rows, nb) if t.numel() == rows else t.reshape(1, 1).expand(rows, nb)
        return np.ascontiguousarray(t.numpy().astype(np.float32))
    return expand(scale), expand(zero)


def linear_blocks(module) -> tuple[np.ndarray, str, float]:
    """(GGUF block bytes, type, worst relative change of a block scale by its fp16 rounding) of a
    FakeQuantLinear's integer weight; UserError naming the reason where it has no GGUF type."""
    wq = module.weight_quantizer
    codes, scale, zero = module.export_int()
    rows, cols = codes.shape
    reason = grid_refusal(wq.bit, wq.symmetric, wq.granularity, wq.group_size, cols)
    if reason:
        raise UserError(f"save.formats (gguf): {reason}")
    qtype, _ = weight_type(wq.bit, wq.symmetric)
    s, z = block_params(scale, None if wq.symmetric else zero, rows, cols, wq.granularity, wq.group_size)
    rounding = float(np.max(np.abs(s.astype(np.float16).astype(np.float32) - s) / np.maximum(np.abs(s), 1e-30)))
    return pack_blocks(codes.cpu().numpy(), s, z, qtype), qtype, rounding


def permute_rows(x: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotate-half RoPE row order of a Q / K projection -> llama.cpp's interleaved one (the
    reshape ``[heads, 2, head_dim / 2] -> [heads, head_dim / 2, 2]`` of llama.cpp's converter), on the rows
    of weights (any bytes per row) or of a bias."""
    rows = x.shape[0]
    return x.reshape(n_head, 2, rows // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def unpermute_rows(x: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_rows`."""
    rows = x.shape[0]
    return x.reshape(n_head, rows // n_head // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


# ------------------------------------------------------------------------------------- the file
def _float_array(t: torch.Tensor, dtype: str) -> tuple[np.ndarray, Optional[object]]:
    """(array, raw_dtype) of a float tensor written as F32, F16 or BF16 (bfloat16 as raw uint16 bytes)."""
    import gguf
    t = t.detach().cpu()
    if dtype == "F32":
        return t.float().numpy(), None
    if dtype == "F16":
        return t.float().numpy().astype(np.float16), None
    if dtype == "BF16":
        return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8).reshape(*t.shape[:-1], -1), \
            gguf.GGMLQuantizationType.BF16
    raise ValueError(f"float type {dtype}")


def _rtn_array(t: torch.Tensor, qtype: str) -> tuple[np.ndarray, object]:
    """llama.cpp's own round-to-nearest of a float matrix (gguf-py's reference quantizers of ggml-quants.c)."""
    import gguf
    kind = gguf.GGMLQuantizationType[qtype]
    return gguf.quants.quantize(t.detach().cpu().float().numpy(), kind), kind


def _rope_theta(config) -> float:
    theta = getattr(config, "rope_theta", None)
    params = getattr(config, "rope_parameters", None) or {}
    if theta is None and isinstance(params, dict):
        theta = params.get("rope_theta")
    return float(theta if theta is not None else 10000.0)


def _rope_refusal(config) -> Optional[str]:
    scaling = getattr(config, "rope_scaling", None)
    params = getattr(config, "rope_parameters", None)
    kind = None
    for d in (scaling, params):
        if isinstance(d, dict):
            kind = d.get("rope_type") or d.get("type") or kind
    if kind not in (None, "default"):
        return f"RoPE scaling '{kind}' is not written to GGUF here"
    return None


def tokenizer_gguf(source) -> Optional[Path]:
    """The GGUF file a model (or the model it borrows its tokenizer from) was loaded from, if any."""
    while source is not None:
        if getattr(source, "kind", None) == "gguf" and getattr(source, "path", None):
            return Path(source.path)
        source = getattr(source, "tokenizer_from", None)
    return None


def _add_tokenizer(writer, source, vocab_size: int) -> dict:
    """Copy the ``tokenizer.*`` fields of the source GGUF, padding the token list to the model's vocabulary
    (``[PAD<i>]``, type unused, as llama.cpp's converter does); ``no_vocab`` when there is none."""
    import gguf
    path = tokenizer_gguf(source)
    if path is None or not path.is_file():
        writer.add_tokenizer_model("no_vocab")        # llama.cpp then reads {arch}.vocab_size (written above)
        log.warning("gguf: the model has no GGUF tokenizer to copy; the file has no vocabulary "
                    "(llama.cpp takes token ids only)")
        return {"tokenizer": "no_vocab: llama.cpp takes token ids only (no GGUF tokenizer to copy)"}
    reader = gguf.GGUFReader(str(path))
    fields = {k: f for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    if "tokenizer.ggml.tokens" not in fields:
        raise UserError(f"save.formats (gguf): {path} has no tokenizer.ggml.tokens: not a tokenizer to copy")
    n_tokens = len(fields["tokenizer.ggml.tokens"].data)
    if n_tokens > vocab_size:
        raise UserError(f"save.formats (gguf): the tokenizer of {path.name} has {n_tokens} tokens, more than the "
                        f"model's {vocab_size} embeddings")
    pad = vocab_size - n_tokens
    for key, field in fields.items():
        value = field.contents()
        main = field.types[0]
        sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        if pad and key == "tokenizer.ggml.tokens":
            value = list(value) + [f"[PAD{i}]" for i in range(n_tokens, vocab_size)]
        elif pad and key == "tokenizer.ggml.token_type":
            value = list(value) + [int(gguf.TokenType.UNUSED)] * pad
        elif pad and key == "tokenizer.ggml.scores":
            value = list(value) + [-1000.0] * pad
        writer.add_key_value(key, value, main, sub_type=sub)
    return {"tokenizer": f"copied from {path.name}" + (f", padded with {pad} unused tokens" if pad else "")}


def _arch_of(config) -> GGUFArch:
    arch = ARCHES.get(config.model_type)
    if arch is None:
        raise UserError(f"save.formats (gguf): model_type '{config.model_type}' has no llama.cpp mapping here "
                        f"(known: {', '.join(ARCHES)})")
    reason = _rope_refusal(config)
    if reason:
        raise UserError(f"save.formats (gguf): {reason}")
    return arch


def _add_hparams(writer, config, arch: GGUFArch, name: str, file_type: int) -> None:
    import gguf
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_name(name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(heads))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or heads))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(int(head_dim))
    if head_dim * heads != config.hidden_size:
        writer.add_key_length(int(head_dim))
        writer.add_value_length(int(head_dim))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _float_tensors(model) -> dict:
    """Every parameter of the model by name, tied weights once (the embedding's name); buffers (RoPE's
    inverse frequencies, quantizer state) are computed by llama.cpp or not part of the model."""
    return {key: p.detach() for key, p in model.named_parameters()}


def write_gguf(model, out_file: Path, *, source=None, name: str = "slmquant", embed_type: str = "Q8_0",
               float_type: str = "F16", linear_type: Optional[str] = None) -> dict:
    """Write ``model`` (Hugging Face causal LM, possibly with FakeQuantLinear layers) as one GGUF file.

    FakeQuantLinear weights are written from their codes and scales (:func:`linear_blocks`); other linears
    as ``float_type`` (F16 / BF16 / F32) or, with ``linear_type`` (``Q8_0`` / ``Q4_0`` / ``Q4_1``),
    llama.cpp's own round-to-nearest of them. Token embeddings (and an untied lm_head) as ``embed_type``
    (``Q8_0``: llama.cpp's round-to-nearest; or a float type). Returns the per-tensor report."""
    import gguf

    from ..quant.fake_linear import FakeQuantLinear
    config = model.config
    arch = _arch_of(config)
    fq = {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)}
    for n, m in fq.items():
        if m.input_transform is not None:
            spec = getattr(m.input_transform, "spec", None)
            what = spec() if callable(spec) else type(m.input_transform).__name__
            raise UserError(f"save.formats (gguf): {n} has an online input transform ({what}, e.g. SpinQuant's R4); "
                            f"llama.cpp's graph has no such op before a matmul")
        if m.weight_quantizer is None:
            raise UserError(f"save.formats (gguf): {n} has activation quantization but float weights; "
                            f"write it with write_float_gguf")
    n_layers = config.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.name.upper()], n_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    types: dict = {}
    rounding = 0.0
    tensors: list = []

    def gguf_name(hf_key: str) -> str:
        found = names.get_name(hf_key, try_suffixes=(".weight", ".bias"))
        if found is None:
            raise UserError(f"save.formats (gguf): no GGUF name for tensor '{hf_key}' in the {arch.name} graph")
        return found

    def permuted(gname: str, arr: np.ndarray) -> np.ndarray:
        if not arch.permute_qk:
            return arr
        base = gname.rsplit(".", 2)[-2] if gname.count(".") >= 2 else gname
        if base == "attn_q":
            return permute_rows(arr, heads)
        if base == "attn_k":
            return permute_rows(arr, kv_heads)
        return arr

    quantized_keys = set()
    for n, m in fq.items():
        blocks, qtype, r = linear_blocks(m)
        rounding = max(rounding, r)
        gname = gguf_name(n)
        tensors.append((f"{gname}.weight", permuted(f"{gname}.weight", blocks), gguf.GGMLQuantizationType[qtype]))
        types[f"{gname}.weight"] = qtype
        quantized_keys.add(f"{n}.weight")
    embed_keys = {k for k, p in model.named_parameters(remove_duplicate=False)
                  if p is model.get_input_embeddings().weight}
    head_keys = set()
    out_emb = model.get_output_embeddings()
    if out_emb is not None:
        head_keys = {k for k, p in model.named_parameters(remove_duplicate=False) if p is out_emb.weight}
    for key, value in _float_tensors(model).items():
        if key in quantized_keys:
            continue
        gname = gguf_name(key)
        if key.endswith(".bias") and value.dim() == 1 and gname.startswith("blk."):
            base = gname.split(".")[2]
            if base not in arch.biases:
                raise UserError(f"save.formats (gguf): {key}: llama.cpp's {arch.name} graph loads no {base} bias")
        if value.dim() == 1:
            arr, raw = value.detach().cpu().float().numpy(), None
            kind = "F32"
        elif key in embed_keys or key in head_keys:
            kind = embed_type
            arr, raw = _rtn_array(value, kind) if kind.startswith("Q") else _float_array(value, kind)
        elif linear_type is not None and value.dim() == 2:
            kind = linear_type
            arr, raw = _rtn_array(value, kind)
        else:
            kind = float_type
            arr, raw = _float_array(value, kind)
        arr = permuted(gname, arr)
        tensors.append((gname, arr, raw))
        types[gname] = kind
    counts: dict = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    main_type = linear_type or next((t for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0") if t in
                                     {types[k] for k in types if k.startswith("blk.")}), float_type)
    file_type = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "BF16": 32}[main_type]

    out_file = Path(out_file)
    writer = gguf.GGUFWriter(str(out_file), arch.name)
    try:
        _add_hparams(writer, config, arch, name, file_type)
        tok = _add_tokenizer(writer, source, int(config.vocab_size))
        for gname, arr, raw in tensors:
            writer.add_tensor(gname, np.ascontiguousarray(arr), raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return {"file": out_file.name, "bytes": out_file.stat().st_size, "arch": arch.name, "tensor_types": counts,
            "types": types, "scale_fp16_max_rel_rounding": rounding, **tok}


@register_exporter("gguf")
class GGUFExporter(Exporter):
    """``save.formats: [gguf]``: the fake-quant model's exact codes and scales as a llama.cpp GGUF."""
    name = "gguf"
    stages = ("fake_quant",)

    def refusal(self, cfg) -> Optional[str]:
        return refusal(cfg)

    def export(self, adapter, quantized, cfg, stage: str) -> Path:
        reason = refusal(cfg)
        if reason:
            raise UserError(f"save.formats (gguf): {reason}")
        if quantized is not None and quantized.input_transforms:
            raise UserError(f"save.formats (gguf): {len(quantized.input_transforms)} layers have online input "
                            f"transforms (SpinQuant's R4 Hadamard): llama.cpp's graph has no such op before a matmul")
        out = self.target(cfg, stage)
        embed = "Q8_0" if cfg.save.real_embed_bit == 8 else "F16"
        with atomic_dir(out) as tmp:
            report = write_gguf(adapter.model, tmp / GGUF_FILE, source=getattr(adapter, "source", None),
                                name=f"{getattr(getattr(adapter, 'source', None), 'name', 'model')} {cfg.quant.method}",
                                embed_type=embed)
            report.update(sidecar_notes(cfg))
            (tmp / SIDECAR).write_text(json.dumps(report, indent=2, default=str))
        return out


def sidecar_notes(cfg) -> dict:
    """What the GGUF file does not carry of the run's quantization (the runtime does it its own way)."""
    q = cfg.quant
    notes = []
    if q.act is not None:
        notes.append(f"activations: ours {q.act.bit}-bit {'symmetric' if q.act.symmetric else 'asymmetric'} "
                     f"{q.act.granularity}{' static' if q.act.static else ''}; llama.cpp quantizes a matmul's "
                     f"input itself, per block of 32 (Q8_0 / Q8_1), for these weight types")
    if q.kvcache is not None:
        notes.append("KV cache: ours quantized; llama.cpp's is F16 unless its cache type is set")
    return {"method": q.method, "weight": {"bit": q.weight.bit, "symmetric": q.weight.symmetric,
                                           "granularity": q.weight.granularity, "group_size": q.weight.group_size},
            "not_carried": notes}


def write_float_gguf(model, out_file: str | Path, *, source=None, dtype: str = "F16",
                     rtn: Optional[str] = None, embed_type: Optional[str] = None, name: str = "float") -> dict:
    """A float model as GGUF: every linear as ``dtype`` (F16 / BF16 / F32), or with ``rtn`` (``Q8_0`` /
    ``Q4_0`` / ``Q4_1``) llama.cpp's own round-to-nearest of every linear (gguf-py's reference quantizers,
    bit-exact with ggml-quants.c's ``quantize_row_*_ref``): the runtime's float baseline and its edge peer.
    Embeddings as ``embed_type`` (default: ``Q8_0`` with ``rtn``, else ``dtype``)."""
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    return write_gguf(model, out_file, source=source, name=name, float_type=dtype, linear_type=rtn,
                      embed_type=embed_type or ("Q8_0" if rtn else dtype))


def read_gguf_weights(path: str | Path) -> dict:
    """{gguf tensor name: (float32 array [rows, cols] dequantized with gguf-py, type name)}: for tests."""
    import gguf
    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))
        out[t.name] = (np.asarray(data, dtype=np.float32).reshape(shape), t.tensor_type.name)
    return out
