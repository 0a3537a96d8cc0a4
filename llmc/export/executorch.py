"""``executorch``: the quantized model as an ExecuTorch program (``model.pte``) for the XNNPACK backend, with
a KV cache, built from our own integer codes and scales (nothing is re-fitted).

Asked for with ``save.formats: [executorch]`` (after ``fake_quant``); :func:`export_packed` does the same from
a packed checkpoint (``save.save_real``), and :func:`ensure_float_pte` writes the float32 program of a model
(the same runtime's baseline). ``python -m llmc.export.executorch --packed DIR --out DIR`` and
``--float MODEL --out FILE`` are the command-line forms.

How a quantized linear is lowered. ExecuTorch's XNNPACK partitioner
(``executorch/backends/xnnpack/partition/config/gemm_configs.py``, ``LinearConfig``) delegates an
``aten.linear`` whose weight is a ``dequantize`` of a constant int8 tensor and whose input is a
``choose_qparams -> quantize -> dequantize`` chain (a dynamically quantized activation): XNNPACK's
``qd8-f32-qc8w`` (8da8w), ``qd8-f32-qc4w`` (8da4w per channel) or ``qd8-f32-qb4w`` (8da4w per group)
fully-connected operator. torchao builds that graph for its own ``Int8DynamicActivationIntxWeightConfig``
(``torchao/quantization/quantize_/workflows/intx/intx_unpacked_to_int8_tensor.py``: the weight as int8
``qdata`` + ``scale`` + ``zero_point``, the activation through ``choose_qparams_affine`` /
``quantize_affine`` / ``dequantize_affine``, asymmetric per token), but it fits the scales itself (min/max
or HQQ). :class:`XnnpackLinear` writes the same graph with the codes and scales our method produced:

* 8-bit weights, per channel: ``torchao.dequantize_affine`` with block ``(1, in)``; XNNPACK ``qcint8``,
  float32 scales (``executorch/backends/xnnpack/operators/quant_params.py``: a block as wide as the row is
  per channel for int8);
* 4-bit weights, per channel: ``quantized_decomposed.dequantize_per_channel`` with range [-8, 7]; XNNPACK
  ``qcint4``, float32 scales. (torchao's affine form with block ``(1, in)`` would become a blockwise int4
  weight with one block, whose scales XNNPACK stores in bfloat16: ``node_visitor.get_quant_params``.)
* 4-bit weights, per group (``group_size`` a multiple of 32: ``_check_per_channel_group_params``):
  ``torchao.dequantize_affine`` with block ``(1, g)``; XNNPACK ``qbint4``, whose scales are bfloat16:
  a conversion (each group's scale rounded to 8 significant bits, relative error <= 2^-9), reported.

What XNNPACK does differently from our protocol, and what is done about it (``executorch.json`` lists the
conversions of each program and the logits difference measured at export):

* activations: XNNPACK quantizes each token asymmetrically (``qdint8``: min/max range, a zero point) at run
  time whatever the graph says; torchao refuses symmetric activations for this config. A symmetric
  per-token int8 protocol (SmoothQuant, RTN) therefore runs with XNNPACK's asymmetric grid: a conversion
  with a measured error (its rounding step is at most the symmetric one: ``(max - min) / 255`` against
  ``2 max|x| / 255``). An asymmetric per-token protocol (SpinQuant) is XNNPACK's own.
* asymmetric weights (unsigned codes ``q``, zero ``z``): XNNPACK's weight formats have no zero points
  (``PerChannelQuant`` / ``PerChannelGroupQuant`` carry scales only; a zero point in the graph would be
  dropped silently). The codes are stored signed, ``c = q - 2^(b-1)``, and the zero folded into a float
  term: ``x W^T = x (s c)^T - (sum of x over each group) (s (z - 2^(b-1)))^T``. The weights are exact; the
  correction is computed on the float input while the integer product sees XNNPACK's quantized input: a
  conversion with a measured error.
* online input transforms (SpinQuant's R4 Hadamard before ``down_proj``): two float32 linears with the
  Kronecker factors of ``H_n / sqrt(n)`` (``llmc.quant.hadamard``: ``H_n = H_{2^k} (x) H_m``), delegated to
  XNNPACK as float32 fully-connected operators. (ExecuTorch also has a ``llama::fast_hadamard_transform``
  custom op, ``extension/llm/custom_ops/spinquant``, which its Python runtime does not register.)

Refused with one line (:func:`refusal`): activations that are not dynamic int8 per token (static ranges,
per-head, other bit widths, weight-only runs), weight bit widths other than 4 and 8, 8-bit per-group
weights and groups that are not a multiple of 32 (XNNPACK's blockwise format is int4 only), a quantized
KV cache (the program's cache is float32), and online transforms other than the Hadamard.

The program. The model (float32, quantized linears swapped as above, every other module as the method left
it) runs in :class:`_Decoder`: its own modules in a decoder loop over a static float32 KV cache held as
buffers (the pattern of ExecuTorch's ``examples/models/llama``; transformers' exportable static-cache
wrapper fails to lower with torch 2.13 / executorch 1.5.1), exported with ``torch.export`` with a dynamic
sequence length ``1..max_seq_len`` (one method serves prefill, decode and perplexity windows; the cache
persists between calls), and lowered with
``executorch.exir.to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`` (the flow of
``executorch/examples/xnnpack/aot_compiler.py``). ``forward(input_ids [1, T] int64, cache_position [T]
int64) -> logits [1, T, vocab]``; the cache positions say where the T tokens go, so a window starting at
position 0 overwrites whatever an earlier call left. Embeddings and lm_head stay float32, as in the
fake-quant model. ``max_seq_len`` is the run's ``eval.seq_len`` (the windows its fake-quant perplexity
used), so the program evaluates the same windows.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..registry import register_exporter
from ..utils import package_version
from . import Exporter

log = logging.getLogger(__name__)

PROGRAM = "model.pte"
INFO = "executorch.json"
FLOAT_PROGRAM = "model_fp32.pte"
XNNPACK_GROUP_MULTIPLE = 32


# ------------------------------------------------------------------------------------------ refusals
def refusal(quant) -> Optional[str]:
    """Why XNNPACK's 8da8w / 8da4w cannot run what ``quant`` (a ``QuantConfig``) produces, or None."""
    if quant is None:
        return "no quantization to lower (quant is null): use ensure_float_pte for the float program"
    w, a = quant.weight, quant.act
    if w is None:
        return "no weight quantizer: XNNPACK's integer linears need int8 or int4 weights"
    if a is None:
        return (f"W{w.bit}A16 (weight-only) has no XNNPACK lowering: its integer linears take dynamically "
                f"quantized int8 activations (8da8w / 8da4w)")
    if a.bit != 8:
        return f"activations of {a.bit} bits: XNNPACK quantizes activations to int8 only"
    if a.static:
        return ("static activation ranges: XNNPACK's 8da8w / 8da4w quantize each token's activations at run "
                "time (dynamic)")
    if a.granularity != "per_token":
        return (f"activation granularity {a.granularity}: XNNPACK's dynamic int8 activations are per token")
    if w.bit not in (4, 8):
        return f"weights of {w.bit} bits: XNNPACK's integer linears take int8 or int4 weights"
    if w.granularity == "per_group":
        if w.bit != 4:
            return f"{w.bit}-bit per-group weights: XNNPACK's blockwise weights are int4 only"
        if w.group_size % XNNPACK_GROUP_MULTIPLE:
            return (f"group_size {w.group_size}: XNNPACK's blockwise int4 weights need a multiple of "
                    f"{XNNPACK_GROUP_MULTIPLE}")
    elif w.granularity not in ("per_channel", "per_tensor"):
        return f"weight granularity {w.granularity}: XNNPACK's weights are per channel or per group"
    if quant.kvcache is not None:
        return "a quantized KV cache: the program's KV cache is float32"
    return None


def _check(quant) -> None:
    reason = refusal(quant)
    if reason:
        raise UserError(f"save.formats (executorch): cannot lower to ExecuTorch/XNNPACK: {reason}")


# ------------------------------------------------------------------------------------ the modules
class ExportableHadamard(nn.Module):
    """``x -> x H_n^T / sqrt(n)`` (``llmc.quant.hadamard.apply_hadamard``) as two float32 linears with
    the Kronecker factors ``H_m`` and ``H_{2^k} / sqrt(n)``, a form ``torch.export`` traces and XNNPACK
    runs (float32 fully-connected)."""

    def __init__(self, n: int):
        super().__init__()
        from ..quant.hadamard import factor_hadamard_order, hadamard_matrix
        p, m = factor_hadamard_order(n)
        self.n, self.p, self.m = n, p, m
        self.register_buffer("h_m", hadamard_matrix(m).float() if m > 1 else None)
        self.register_buffer("h_p", hadamard_matrix(p).float() / math.sqrt(n))

    def forward(self, x):
        lead = x.shape[:-1]
        y = x.reshape(-1, self.p, self.m)
        if self.h_m is not None:
            y = F.linear(y, self.h_m)                          # y[t, a, :] = H_m x[t, a, :]
        y = F.linear(y.transpose(1, 2), self.h_p).transpose(1, 2)   # the 2^k factor on the other axis
        return y.reshape(*lead, self.n)


def exportable_transform(transform) -> Optional[nn.Module]:
    """The form of an online input transform that the program can hold; UserError for an unknown one."""
    if transform is None:
        return None
    spec = getattr(transform, "spec", None)
    spec = spec() if callable(spec) else spec
    if isinstance(spec, dict) and spec.get("kind") == "hadamard":
        return ExportableHadamard(int(spec["n"]))
    raise UserError(f"save.formats (executorch): cannot lower the online input transform {transform!r} "
                    f"(only the Hadamard has an exportable form)")


class XnnpackLinear(nn.Module):
    """A linear in the form XNNPACK's partitioner lowers to a dynamically quantized integer operator
    (8da8w / 8da4w), holding given integer codes and scales (module docstring).

    ``codes``: [out, in] signed codes (int8 storage, in [-2^(b-1), 2^(b-1) - 1]); ``scale``: float32
    [out, groups] (groups = 1 per channel); ``offset``: None, or float32 [out, groups] with
    ``W = scale * codes - offset`` per group (the folded zero point of an asymmetric grid).
    """

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, bits: int, group_size: Optional[int],
                 bias: Optional[torch.Tensor] = None, offset: Optional[torch.Tensor] = None,
                 transform: Optional[nn.Module] = None):
        super().__init__()
        out_f, in_f = codes.shape
        self.in_features, self.out_features, self.bits = in_f, out_f, bits
        self.group_size = group_size or in_f
        self.transform = transform
        self.register_buffer("qdata", codes.to(torch.int8).contiguous())
        scale = scale.float().reshape(out_f, -1).clone()
        if bits == 4 and self.group_size == in_f:   # quantized_decomposed.dequantize_per_channel: 1-D, int64 zeros
            self.register_buffer("scale", scale.reshape(out_f).clone())
            self.register_buffer("zero", torch.zeros(out_f, dtype=torch.int64))
        else:                                        # torchao.dequantize_affine: [out, groups], int8 zeros
            self.register_buffer("scale", scale)
            self.register_buffer("zero", torch.zeros_like(scale, dtype=torch.int8))
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        if offset is not None:   # [out] for one group (a broadcast product), [out, groups] otherwise (a linear)
            offset = offset.float().reshape(out_f, -1)
            offset = (offset.reshape(out_f) if offset.shape[1] == 1 else offset).clone()
        self.register_buffer("offset", offset)
        self.qmin, self.qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def extra_repr(self) -> str:
        g = "per_channel" if self.group_size == self.in_features else f"group {self.group_size}"
        return (f"in={self.in_features}, out={self.out_features}, 8da{self.bits}w, {g}"
                + (", zero-point term" if self.offset is not None else ""))

    def weight(self) -> torch.Tensor:
        """The float weight this layer computes with (scale * codes - offset)."""
        scale = self.scale.reshape(self.out_features, -1)
        w = self.qdata.float().reshape(self.out_features, -1, self.group_size) * scale[..., None]
        if self.offset is not None:
            w = w - self.offset.reshape(self.out_features, -1)[..., None]
        return w.reshape(self.out_features, self.in_features)

    def _dequantized_weight(self):
        if self.bits == 4 and self.group_size == self.in_features:
            return torch.ops.quantized_decomposed.dequantize_per_channel(
                self.qdata, self.scale, self.zero, 0, self.qmin, self.qmax, torch.int8)
        from torchao.quantization.quant_primitives import dequantize_affine
        return dequantize_affine(self.qdata, (1, self.group_size), self.scale, self.zero, torch.int8,
                                 self.qmin, self.qmax, output_dtype=torch.float32)

    def forward(self, x):
        from torchao.quantization.quant_primitives import (MappingType, choose_qparams_affine,
                                                           dequantize_affine, quantize_affine)
        if self.transform is not None:
            x = self.transform(x)
        block = (1,) * (x.dim() - 1) + (x.shape[-1],)
        scale, zero = choose_qparams_affine(x, MappingType.ASYMMETRIC, block, torch.int8, -128, 127,
                                            eps=torch.finfo(torch.float32).eps, scale_dtype=torch.float32,
                                            zero_point_dtype=torch.int8)
        xq = quantize_affine(x, block, scale, zero, torch.int8, -128, 127)
        xdq = dequantize_affine(xq, block, scale, zero, torch.int8, -128, 127, output_dtype=torch.float32)
        y = F.linear(xdq, self._dequantized_weight(), self.bias)
        if self.offset is not None:
            if self.offset.dim() == 1:
                y = y - x.sum(-1, keepdim=True) * self.offset
            else:
                sums = x.reshape(*x.shape[:-1], -1, self.group_size).sum(-1)
                y = y - F.linear(sums, self.offset)
        return y


def xnnpack_linear(codes, scale, zero, bias, wq, transform=None) -> XnnpackLinear:
    """An :class:`XnnpackLinear` from a quantized layer's integer weight: ``codes`` [out, in] (signed, or
    unsigned with ``zero`` for an asymmetric grid), ``scale`` / ``zero`` shaped as
    ``Quantizer.compute_params`` returns them, ``wq`` the weight quantizer (bits, symmetry, granularity)."""
    out_f, in_f = codes.shape
    groups = in_f // wq.group_size if wq.granularity == "per_group" else 1
    scale = scale.float().reshape(-1, 1).expand(-1, 1) if scale.numel() == 1 else scale.float()
    scale = scale.reshape(-1, groups).expand(out_f, groups) if scale.shape[0] == 1 else scale.reshape(out_f, groups)
    offset = None
    if wq.symmetric:
        signed = codes.to(torch.int16)
    else:
        mid = 2 ** (wq.bit - 1)
        signed = codes.to(torch.int16) - mid
        z = zero.float().reshape(-1, groups).expand(out_f, groups) if zero.numel() == 1 else zero.float().reshape(out_f, groups)
        offset = scale * (z - mid)
        if not bool(offset.abs().gt(0).any()):
            offset = None
    lo, hi = -(2 ** (wq.bit - 1)), 2 ** (wq.bit - 1) - 1
    if int(signed.min()) < lo or int(signed.max()) > hi:
        raise ValueError(f"codes outside the signed {wq.bit}-bit range [{lo}, {hi}]")
    group = wq.group_size if wq.granularity == "per_group" else None
    return XnnpackLinear(signed.to(torch.int8), scale.contiguous(), wq.bit, group, bias, offset,
                         exportable_transform(transform))


def conversions(quant) -> list[str]:
    """What the program computes differently from the fake-quant model, in words (module docstring)."""
    out = []
    a, w = quant.act, quant.weight
    if a.symmetric:
        out.append("activations: symmetric per-token int8 in the protocol, XNNPACK's asymmetric per-token int8 "
                   "at run time")
    if not w.symmetric:
        out.append("asymmetric weights: codes stored signed (q - 2^(b-1)), zero points folded into a float "
                   "term on the unquantized input (weights exact)")
    if w.granularity == "per_group":
        out.append("per-group int4 scales stored in bfloat16 by XNNPACK's blockwise format")
    return out


# ---------------------------------------------------------------------------------- model -> program
def program_model(model: nn.Module) -> nn.Module:
    """A float32 copy of ``model`` whose quantized linears (``FakeQuantLinear`` with integer codes) are
    :class:`XnnpackLinear`; ``model`` is not modified. Raises UserError for an activation quantizer or an
    online transform the program cannot express."""
    from ..quant.fake_linear import FakeQuantLinear
    from ..utils import swap_module
    from ..quant.packed import fold_head_transform
    clone = copy.deepcopy(model).float().eval()
    fold_head_transform(clone)
    for name, module in list(clone.named_modules()):
        if not isinstance(module, FakeQuantLinear):
            continue
        if module.weight_quantizer is None or module.w_codes is None:
            raise UserError(f"save.formats (executorch): {name} has no integer weight to lower")
        _check_act(name, module.act_quantizer)
        codes, scale, zero = module.export_int()
        swap_module(clone, name, xnnpack_linear(codes, scale, zero, module.bias, module.weight_quantizer,
                                                module.input_transform))
    return clone


def _check_act(name, aq) -> None:
    if aq is None or aq.bit != 8 or aq.static or aq.granularity != "per_token":
        what = "none" if aq is None else f"{aq.bit}-bit {aq.granularity}{' static' if aq.static else ''}"
        raise UserError(f"save.formats (executorch): {name}: activations {what}: XNNPACK's 8da8w / 8da4w "
                        f"quantize activations to int8 per token, dynamically")


SUPPORTED_TYPES = ("llama", "qwen2", "mistral")


class _Decoder(nn.Module):
    """``forward(input_ids [1, T], cache_position [T]) -> logits [1, T, vocab]`` of a Llama-shaped HF model
    (``SUPPORTED_TYPES``) over a static float32 KV cache of ``max_seq_len`` positions held as buffers (the
    program's mutable state), written at ``cache_position`` (``index_put_``) and read whole under a causal
    mask: the model's own modules (norms, projections, MLP, rotary embedding, lm_head with its hooks) in the
    decoder loop of ExecuTorch's ``examples/models/llama/llama_transformer.py`` / ``attention.py`` (KVCache,
    SDPA with a mask over the whole cache). (transformers' ``TorchExportableModuleWithStaticCache`` failed
    in ``run_decompositions`` with torch 2.13 / executorch 1.5.1: "expected compiled_fn to be GraphModule".)"""

    def __init__(self, model: nn.Module, max_seq_len: int):
        super().__init__()
        import sys
        cfg = model.config
        if cfg.model_type not in SUPPORTED_TYPES:
            raise UserError(f"save.formats (executorch): model type {cfg.model_type!r} is not lowered (only "
                            f"{', '.join(SUPPORTED_TYPES)})")
        self.model = model
        inner = model.model
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.max_seq_len = max_seq_len
        self._rope = sys.modules[type(inner.layers[0].self_attn).__module__].apply_rotary_pos_emb
        for i in range(len(inner.layers)):
            shape = (1, self.kv_heads, max_seq_len, self.head_dim)
            self.register_buffer(f"k_cache_{i}", torch.zeros(shape), persistent=False)
            self.register_buffer(f"v_cache_{i}", torch.zeros(shape), persistent=False)

    def forward(self, input_ids, cache_position):
        inner = self.model.model
        t = input_ids.shape[1]
        h = inner.embed_tokens(input_ids)
        cos, sin = inner.rotary_emb(h, cache_position[None, :])
        mask = (torch.arange(self.max_seq_len)[None, :] <= cache_position[:, None])[None, None]
        rep = self.heads // self.kv_heads
        for i, layer in enumerate(inner.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(1, t, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(1, t, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(1, t, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = self._rope(q, k, cos, sin)
            k_cache, v_cache = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
            k_cache[:, :, cache_position] = k
            v_cache[:, :, cache_position] = v
            kk = k_cache.repeat_interleave(rep, dim=1) if rep > 1 else k_cache
            vv = v_cache.repeat_interleave(rep, dim=1) if rep > 1 else v_cache
            o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, scale=attn.scaling)
            h = h + attn.o_proj(o.transpose(1, 2).reshape(1, t, self.heads * self.head_dim))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.model.lm_head(inner.norm(h))


def lower(model: nn.Module, max_seq_len: int) -> bytes:
    """The ExecuTorch program (bytes of a ``.pte``) of a float32 model (its ``XnnpackLinear``s lowered as
    8da8w / 8da4w, its float linears as XNNPACK float32), with a KV cache of ``max_seq_len`` positions."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torch.export import Dim
    wrapped = _Decoder(model, max_seq_len).eval()
    ids = torch.zeros(1, 2, dtype=torch.long)
    pos = torch.arange(2, dtype=torch.long)
    seq = Dim("seq_len", min=1, max=max_seq_len)
    with torch.no_grad():
        ep = torch.export.export(wrapped, (ids, pos), dynamic_shapes=({1: seq}, {0: seq}), strict=False)
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    return edge.to_executorch().buffer


def run_program(pte: bytes | str | Path, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Logits [1, T, vocab] of the program on ``ids`` [1, T] at cache positions ``start..start+T-1``."""
    from executorch.runtime import Runtime
    runtime = Runtime.get()
    program = runtime.load_program(pte if isinstance(pte, (bytes, bytearray)) else Path(pte))
    method = program.load_method("forward")
    pos = torch.arange(start, start + ids.shape[1], dtype=torch.long)
    return method.execute((ids.long(), pos))[0]


@torch.no_grad()
def compare_logits(pte: bytes, reference: nn.Module, ids: torch.Tensor) -> dict:
    """The program's logits against ``reference``'s (the fake-quant model) on ``ids`` [1, T]: max |diff|
    relative to max |reference|, the mean absolute difference and top-1 agreement."""
    got = run_program(pte, ids).float()
    ref = reference(input_ids=ids).logits.float()
    diff = (got - ref).abs()
    return {"tokens": int(ids.shape[1]), "max_abs_diff_rel": float(diff.max() / ref.abs().max()),
            "mean_abs_diff": float(diff.mean()), "ref_mean_abs": float(ref.abs().mean()),
            "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).float().mean())}


def _check_ids(tokenizer, vocab: int, n: int = 64) -> torch.Tensor:
    """Token ids to compare the program with the model on: the first ``n`` of WikiText-2's test text where
    the data and a tokenizer are at hand, else seeded random ids."""
    try:
        from ..data.sources import find_dataset
        from ..data.wikitext2 import evaluation_text
        if tokenizer is None:
            raise UserError("no tokenizer")
        ids = tokenizer(evaluation_text(find_dataset("wikitext2", None))[:4000], return_tensors="pt").input_ids
        if ids.shape[1] >= n:
            return ids[:, :n]
    except UserError:
        pass
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(0))


def write_program(model: nn.Module, reference: Optional[nn.Module], out: Path, *, max_seq_len: int,
                  info: dict, tokenizer=None) -> Path:
    """Lower ``model`` (already in program form) into ``out/model.pte`` with ``out/executorch.json`` (the
    ``info`` given, the program's size and, when a ``reference`` is given, :func:`compare_logits` on 64
    tokens); the tokenizer is saved beside them."""
    from ..utils import atomic_dir
    t0 = time.perf_counter()
    pte = lower(model, max_seq_len)
    info = {**info, "max_seq_len": max_seq_len, "bytes": len(pte), "lower_seconds": time.perf_counter() - t0,
            "executorch": package_version("executorch"), "torchao": package_version("torchao"), "torch": torch.__version__}
    if reference is not None:
        ids = _check_ids(tokenizer, reference.config.vocab_size, min(64, max_seq_len))
        info["check_vs_fake_quant"] = compare_logits(pte, reference.float().eval(), ids)
    with atomic_dir(out) as tmp:
        (tmp / PROGRAM).write_bytes(pte)
        (tmp / INFO).write_text(json.dumps(info, indent=2, default=str))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out



@register_exporter("executorch")
class ExecuTorchExporter(Exporter):
    """``save.formats: [executorch]``: ``<stem>_executorch_fake_quant/model.pte`` + ``executorch.json``."""
    name = "executorch"
    stages = ("fake_quant",)

    def refusal(self, cfg) -> Optional[str]:
        """Known before the model loads: the ``executorch`` package, and :func:`refusal` of the config."""
        from importlib.util import find_spec
        if find_spec("executorch") is None:
            return "the executorch package is not installed (pip install -e '.[dev]')"
        from . import family_refusal
        return refusal(cfg.quant) or family_refusal(cfg, SUPPORTED_TYPES, "ExecuTorch decoder")

    def export(self, adapter, quantized, cfg, stage: str) -> Path:
        _check(cfg.quant)
        model = program_model(adapter.model)
        reference = copy.deepcopy(adapter.model).float().eval()
        info = {"source": "fake_quant model of the run", "quant": _quant_dict(cfg.quant),
                "conversions": conversions(cfg.quant), "method": getattr(quantized, "label", None)}
        out = write_program(model, reference, self.target(cfg, stage), max_seq_len=cfg.eval.seq_len,
                            info=info, tokenizer=adapter.tokenizer)
        log.info("executorch: %s (%.1f MB)", out / PROGRAM, (out / PROGRAM).stat().st_size / 2**20)
        return out


def _quant_dict(quant) -> dict:
    import dataclasses
    return dataclasses.asdict(quant)


# ------------------------------------------------------------------------ from a packed checkpoint
def export_packed(packed: str | Path, out: str | Path, max_seq_len: int = 512, check: bool = True) -> Path:
    """The program of a packed checkpoint (``save.save_real``; ``llmc.quant.packed``), from its codes and
    scales; its fake-quant model (the default reload) is the reference of the logits check. Embeddings
    stored as int8 rows (``save.real_embed_bit: 8``) are dequantized to float32 as the packed loader does."""
    from ..quant.packed import fold_head_transform, load_packed_model, read_packed
    from ..quant.quantizer import Quantizer
    packed = Path(packed)
    _, meta = read_packed(packed)
    layers = json.loads(meta["layers"])
    quant_file = packed / "slmquant_quant.json"
    quant = json.loads(quant_file.read_text()).get("quant") if quant_file.is_file() else None
    if quant is not None:
        from ..config import KVCacheConfig, QuantConfig, QuantizerConfig
        qc = QuantConfig(method=quant["method"],
                         weight=QuantizerConfig(**quant["weight"]) if quant.get("weight") else None,
                         act=QuantizerConfig(**quant["act"]) if quant.get("act") else None,
                         kvcache=KVCacheConfig(**quant["kvcache"]) if quant.get("kvcache") else None)
        _check(qc)

    def factory(codes, scale, zero, bias, wq: Quantizer, aq, transform, dtype):
        _check_act("a packed layer", aq)
        return xnnpack_linear(codes, scale, zero, bias, wq, transform)

    model = load_packed_model(packed, linear_factory=factory).float().eval()
    fold_head_transform(model)      # a rotated tied head: one float32 linear W' = E M in the program
    reference = load_packed_model(packed).float().eval() if check else None
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(packed))
    except (OSError, ValueError):
        tokenizer = None
    any_layer = next(iter(layers.values()))
    info = {"source": f"packed checkpoint {packed.resolve()}", "quant": quant,
            "conversions": conversions(qc) if quant is not None else [],
            "layers": len(layers), "example_layer": any_layer}
    return write_program(model, reference, Path(out), max_seq_len=max_seq_len, info=info, tokenizer=tokenizer)


def ensure_float_pte(model_path: str, max_seq_len: int = 512, out: Optional[str | Path] = None,
                     seed: int = 42) -> Path:
    """The float32 program of ``model.path`` (the runtime's baseline: every linear an XNNPACK float32
    fully-connected), made once: ``out`` or ``$SLMQUANT_CACHE/executorch/<model>-fp32-<max_seq_len>``
    (a folder with ``model.pte`` and ``executorch.json``)."""
    import re
    from ..models.loading import load_model, resolve_model_source
    from ..utils import cache_root
    source = resolve_model_source(model_path)
    if out is None:
        key = re.sub(r"[^\w.-]+", "_", f"{source.name}-{source.pinned_sha256 or source.kind}-fp32-{max_seq_len}")
        out = cache_root() / "executorch" / key
    out = Path(out)
    if (out / PROGRAM).is_file():
        return out
    adapter = load_model(source, dtype=torch.float32, seed=seed)
    info = {"source": f"float32 model {source.name}", "quant": None, "conversions": []}
    return write_program(adapter.model.eval(), None, out, max_seq_len=max_seq_len, info=info,
                         tokenizer=adapter.tokenizer)


def main(argv=None) -> int:
    import argparse
    import sys
    p = argparse.ArgumentParser(prog="python -m llmc.export.executorch",
                                description="Lower a packed checkpoint, or a float model, to an ExecuTorch program")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--packed", help="packed checkpoint folder (save.save_real)")
    src.add_argument("--float", dest="float_model", help="model.path of the float32 baseline program")
    p.add_argument("--out", help="output folder (default for --float: the cache)")
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--no-check", action="store_true", help="skip the logits check against the fake-quant model")
    args = p.parse_args(argv)
    try:
        if args.packed:
            if not args.out:
                p.error("--packed needs --out")
            out = export_packed(args.packed, args.out, args.max_seq_len, check=not args.no_check)
        else:
            out = ensure_float_pte(args.float_model, args.max_seq_len, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(json.loads((out / INFO).read_text()), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
