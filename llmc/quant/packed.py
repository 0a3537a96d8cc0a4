"""The packed real-quant checkpoint: integer weight codes, as stored on a device, plus their scales.

Layout of ``model.safetensors`` in the output folder:

- for each quantized linear ``<name>``: ``<name>.qweight`` (uint8; codes of <= 4 bits two per byte, the
  even input column in the low nibble, codes of 5..8 bits one per byte; signed codes stored in two's
  complement), ``<name>.scale`` (float32, the quantizer's shape), ``<name>.zero`` (uint8, asymmetric
  grids only), and ``<name>.bias`` when the layer has one;
- the input embeddings and lm_head (``save.real_embed_bit: 8``, the default): ``<key>.int8`` (int8 codes,
  symmetric, one scale per row: per token for the embedding, per output channel for lm_head) and
  ``<key>.row_scale`` (float32 [rows, 1]); weight-only, dequantized to the model's dtype at load. A tied
  lm_head is the embedding and is stored once. With ``real_embed_bit: null`` they are stored as floats;
- a rotated model whose embeddings were tied before the rotation (SpinQuant's R1 with the final norm folded
  into lm_head: ``lm_head.weight == embed.weight @ M``, see ``llmc.algos.rotation.tied_head_transform``)
  is stored tied again: the embedding once, plus ``<head>.tied_input_transform`` (float32 ``M``, hidden x
  hidden); the loader re-ties the two and applies ``h -> h M^T`` before lm_head (a forward pre-hook);
- every other tensor of the model (norms, unquantized linears) as it is in the model's dtype.

The safetensors metadata holds, as JSON, the Hugging Face config, each quantized layer's weight and
activation quantizer settings and its online input transform (e.g. a Hadamard of size n), so that
``load_packed_model`` rebuilds a model that computes exactly what the fake-quant model computed. A run with
``quant.kvcache`` adds ``kv_cache``: the KV quantizer, the key transform (R3) and the attention modules'
paths; the loader deploys it as an integer KV cache (``llmc.quant.int_kv_cache``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from ..utils import atomic_dir, swap_module
from .fake_linear import FakeQuantLinear
from .quantizer import Quantizer

FORMAT = "slmquant-packed-v1"
# the attribute of a model holding ``M`` with ``lm_head.weight == embed.weight @ M`` (set by a rotation)
HEAD_TRANSFORM_ATTR = "slmquant_tied_head_transform"


def pack_codes(codes: torch.Tensor, bit: int) -> torch.Tensor:
    """int8/uint8 codes [out, in] -> uint8 storage ([out, in/2] for bit <= 4, else [out, in])."""
    raw = codes.to(torch.int16) & 0xFF
    if bit > 4:
        return raw.to(torch.uint8)
    if codes.shape[-1] % 2:
        raise ValueError(f"4-bit packing needs an even input width, got {codes.shape[-1]}")
    nib = raw & 0x0F
    return (nib[..., 0::2] | (nib[..., 1::2] << 4)).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bit: int, signed: bool, in_features: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: int8 (signed) or uint8 codes [out, in]."""
    p = packed.to(torch.int16)
    if bit > 4:
        vals = p
    else:
        vals = torch.empty(*p.shape[:-1], in_features, dtype=torch.int16, device=p.device)
        vals[..., 0::2] = p & 0x0F
        vals[..., 1::2] = (p >> 4) & 0x0F
        if signed:
            vals = torch.where(vals >= 8, vals - 16, vals)
        return vals.to(torch.int8 if signed else torch.uint8)
    if signed:
        vals = torch.where(vals >= 128, vals - 256, vals)
    return vals.to(torch.int8 if signed else torch.uint8)


def quantize_rows(weight: torch.Tensor, bit: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row round-to-nearest of a 2-D float tensor: (int8 codes, float32 scales [rows, 1]),
    ``weight ~= codes * scale`` with ``scale = max|row| / (2^(bit-1) - 1)`` (an all-zero row gets scale 1)."""
    w = weight.detach().float()
    qmax = 2 ** (bit - 1) - 1
    scale = w.abs().amax(dim=1, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(w / scale).clamp_(-qmax, qmax).to(torch.int8)
    return codes, scale


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (codes.float() * scale.float()).to(dtype)


def _embedding_keys(model) -> set:
    """Names of the input embedding and lm_head weights, found through the model's own accessors (not by
    name); a tied pair gives both names."""
    targets = [getattr(m, "weight", None) for m in (model.get_input_embeddings(), model.get_output_embeddings())]
    targets = [t for t in targets if isinstance(t, torch.Tensor) and t.dim() == 2]
    return {n for n, p in model.named_parameters(remove_duplicate=False) if any(p is t for t in targets)}


def _tied_head(model) -> dict | None:
    """Keys of the head weight, the embedding weight and the stored transform when the model carries a
    tied-head transform (``lm_head.weight == embed.weight @ M``), else None."""
    transform = getattr(model, HEAD_TRANSFORM_ATTR, None)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if transform is None or embed is None or head is None or head.weight is embed.weight:
        return None
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    head_module = next(n for n, m in model.named_modules() if m is head)
    return {"head": names[id(head.weight)], "embed": names[id(embed.weight)],
            "transform": f"{head_module}.tied_input_transform"}


def attach_head_transform(model, transform: torch.Tensor) -> None:
    """Apply ``h -> h M^T`` (in float32) to lm_head's input, so that the tied head computes ``h W'^T`` with
    ``W' = E' M``. The matrix is kept as a float32 attribute (not a buffer: casting the model to bfloat16
    must not round it)."""
    head = model.get_output_embeddings()
    head.slmquant_tied_input_transform = transform.float()

    def pre_hook(module, args):
        x = args[0]
        m = module.slmquant_tied_input_transform
        if m.device != x.device:
            m = module.slmquant_tied_input_transform = m.to(x.device)
        return ((x.float() @ m.t()).to(x.dtype),) + tuple(args[1:])

    head.slmquant_tied_input_hook = head.register_forward_pre_hook(pre_hook)


def fold_head_transform(model) -> bool:
    """Undo :func:`attach_head_transform` by folding ``M`` into an untied float32 head ``W' = E M`` (the
    product the fake-quant model's lm_head held before packing); True when the model had the transform.

    For graphs lowered ahead of time (``llmc.export.executorch``): the program then runs one linear instead
    of ``h M^T`` followed by the tied linear. (With the hook, executorch 1.5.1's XNNPACK delegate of the
    head's ``mm`` + ``linear`` under a dynamic sequence length returned ``[1, T, hidden]`` instead of the
    logits; the folded head lowers and runs correctly. A lowered program stores its own copy of a tied
    head's weight anyway, so folding costs no size.)"""
    head = model.get_output_embeddings()
    transform = getattr(head, "slmquant_tied_input_transform", None)
    if transform is None:
        return False
    head.slmquant_tied_input_hook.remove()
    del head.slmquant_tied_input_hook, head.slmquant_tied_input_transform
    with torch.no_grad():
        folded = head.weight.detach().float() @ transform.to(head.weight.device)
    head.weight = nn.Parameter(folded.to(head.weight.dtype), requires_grad=False)
    model.config.tie_word_embeddings = False
    return True


def _quantizer_spec(q: Quantizer | None) -> dict | None:
    if q is None:
        return None
    return {"bit": q.bit, "symmetric": q.symmetric, "granularity": q.granularity, "group_size": q.group_size,
            "calib_algo": q.calib_algo, "static": q.static, "head_dim": q.head_dim, "n_heads": q.n_heads,
            "static_scale": q.static_scale.tolist() if q.frozen else None,
            "static_zero": q.static_zero.tolist() if q.frozen else None}


def _kv_cache_spec(adapter, kv_config) -> dict:
    """The KV quantizer, R3's key transform (``query_key_transform`` on the attention modules, if any) and
    the attention modules' paths, for the integer cache at load."""
    lay = adapter.layout
    names = [f"{lay.blocks}.{i}.{lay.attn}" for i in range(len(adapter.blocks))]
    transform = getattr(adapter.model.get_submodule(names[0]), "query_key_transform", None)
    return {"quantizer": _quantizer_spec(Quantizer(kv_config)), "key_transform": _transform_spec(transform),
            "attention": names}


def _quantizer_from_spec(spec: dict | None) -> Quantizer | None:
    if spec is None:
        return None
    spec = dict(spec)
    static_scale, static_zero = spec.pop("static_scale"), spec.pop("static_zero")
    q = Quantizer(**spec)
    if static_scale is not None:
        q.static_scale, q.static_zero = torch.tensor(static_scale), torch.tensor(static_zero)
    return q


def _transform_spec(t) -> dict | None:
    if t is None:
        return None
    spec = getattr(t, "spec", None)
    if spec is None:
        raise ValueError(f"input transform {t!r} cannot be saved (it has no .spec)")
    return spec() if callable(spec) else spec


def save_packed_model(adapter, cfg, out: Path) -> None:
    from safetensors.torch import save_file

    model = adapter.model
    tensors, layers = {}, {}
    quantized_prefixes = set()
    for name, module in model.named_modules():
        if isinstance(module, FakeQuantLinear) and module.weight_quantizer is not None:
            codes, scale, zero = module.export_int()
            wq = module.weight_quantizer
            tensors[f"{name}.qweight"] = pack_codes(codes, wq.bit).contiguous()
            tensors[f"{name}.scale"] = scale.float().contiguous()
            if not wq.symmetric:
                tensors[f"{name}.zero"] = zero.to(torch.uint8).contiguous()
            if module.bias is not None:
                tensors[f"{name}.bias"] = module.bias.detach().contiguous()
            layers[name] = {"in_features": module.in_features, "out_features": module.out_features,
                            "weight": _quantizer_spec(wq), "act": _quantizer_spec(module.act_quantizer),
                            "input_transform": _transform_spec(module.input_transform)}
            quantized_prefixes.add(name + ".")
    embed_bit = getattr(cfg.save, "real_embed_bit", None)
    embed_keys = _embedding_keys(model) if embed_bit else set()
    int_embeddings = {}
    tied_head, config = _tied_head(model), json.loads(model.config.to_json_string())
    if tied_head is not None:
        tensors[tied_head["transform"]] = getattr(model, HEAD_TRANSFORM_ATTR).float().contiguous()
        config["tie_word_embeddings"] = True
    seen = set()
    for key, value in model.state_dict().items():
        if any(key.startswith(p) for p in quantized_prefixes):
            continue
        if tied_head is not None and key == tied_head["head"]:   # stored as the embedding times M
            continue
        if value.data_ptr() in seen:  # tied weights are stored once; the config re-ties them
            continue
        seen.add(value.data_ptr())
        if key in embed_keys:
            codes, scale = quantize_rows(value, embed_bit)
            tensors[f"{key}.int8"], tensors[f"{key}.row_scale"] = codes.contiguous(), scale.contiguous()
            int_embeddings[key] = {"bit": embed_bit, "symmetric": True, "granularity": "per_row"}
            continue
        tensors[key] = value.detach().contiguous()
    meta = {"format": FORMAT, "config": json.dumps(config), "layers": json.dumps(layers),
            "int_embeddings": json.dumps(int_embeddings), "tied_head": json.dumps(tied_head),
            "dtype": str(adapter.dtype).replace("torch.", "")}
    if cfg.quant is not None and cfg.quant.kvcache is not None:
        meta["kv_cache"] = json.dumps(_kv_cache_spec(adapter, cfg.quant.kvcache))
    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata=meta)
        if adapter.tokenizer is not None:
            adapter.tokenizer.save_pretrained(tmp)
        (tmp / "slmquant_quant.json").write_text(json.dumps(
            {"format": FORMAT, "quant": dataclasses.asdict(cfg.quant)}, indent=2, default=str))


def read_packed(path: Path):
    """(tensors, metadata) of a packed checkpoint folder; a missing, truncated or foreign file is one
    UserError naming the folder."""
    from safetensors import SafetensorError, safe_open

    from ..errors import UserError
    file = Path(path) / "model.safetensors"
    if not file.is_file():
        raise UserError(f"{path}: no packed checkpoint here (model.safetensors is missing)")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: the packed checkpoint is damaged ({str(e).splitlines()[0][:160]}); "
                        f"write it again (save.save_real)") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} checkpoint (format {meta.get('format')!r})")
    return tensors, meta


def build_transform(spec: dict | None):
    if spec is None:
        return None
    from .transforms import transform_from_spec
    return transform_from_spec(spec)


def load_packed_model(path: Path, linear_factory=None):
    """Rebuild the model of a packed checkpoint. Each quantized linear becomes
    ``linear_factory(codes, scale, zero, bias, weight_q, act_q, transform, dtype)`` (default: a
    FakeQuantLinear holding the dequantized codes, i.e. exactly the fake-quant model)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    tensors, meta = read_packed(path)
    config_dict = json.loads(meta["config"])
    dtype = getattr(torch, meta["dtype"])
    config = AutoConfig.for_model(**config_dict)
    # parameters on the meta device (replaced below), buffers real: non-persistent buffers (rotary
    # frequencies, Gemma-3's embedding scale) are computed by the modules' constructors, not stored
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    layers = json.loads(meta["layers"])
    factory = linear_factory or _fake_linear_factory
    for name, info in layers.items():
        wq = _quantizer_from_spec(info["weight"])
        aq = _quantizer_from_spec(info["act"])
        codes = unpack_codes(tensors[f"{name}.qweight"], wq.bit, wq.symmetric, info["in_features"])
        zero = tensors.get(f"{name}.zero")
        module = factory(codes, tensors[f"{name}.scale"], None if zero is None else zero.float(),
                         tensors.get(f"{name}.bias"), wq, aq, build_transform(info["input_transform"]), dtype)
        swap_module(model, name, module)
    int_embeddings = json.loads(meta.get("int_embeddings", "{}"))
    tied_head = json.loads(meta.get("tied_head", "null"))
    head_transform = tensors.pop(tied_head["transform"]) if tied_head else None
    rest = {k: v for k, v in tensors.items() if not any(k.startswith(n + ".") for n in layers)
            and not any(k.startswith(e + ".") for e in int_embeddings)}
    for key in int_embeddings:
        rest[key] = dequantize_rows(tensors[f"{key}.int8"], tensors[f"{key}.row_scale"], dtype)
    model.load_state_dict(rest, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    if head_transform is not None:
        attach_head_transform(model, head_transform)
    if meta.get("kv_cache"):
        from .int_kv_cache import enable_int_kv_cache
        kv = json.loads(meta["kv_cache"])
        enable_int_kv_cache(model, _quantizer_from_spec(kv["quantizer"]),
                            [model.get_submodule(n) for n in kv["attention"]], build_transform(kv["key_transform"]))
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing[:3]}")
    return model.eval()


def _fake_linear_factory(codes, scale, zero, bias, wq, aq, transform, dtype):
    out_f, in_f = codes.shape
    lin = nn.Linear(in_f, out_f, bias=bias is not None, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(wq.dequantize(codes, scale, zero, dtype=dtype))
        if bias is not None:
            lin.bias.copy_(bias)
    return FakeQuantLinear(lin, None, aq, input_transform=transform)
