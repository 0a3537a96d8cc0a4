"""Integer deployment: turn a fake-quant model, or a packed real-quant checkpoint, into a model whose
quantized linears run integer kernels (:class:`llmc.quant.int_linear.IntLinear`).

    model = deploy_integer(fake_quant_model)          # in place; every FakeQuantLinear -> IntLinear
    model = load_deployed("results/..._real_quant")   # from the packed checkpoint (llmc.quant.packed)

Both give the same model: the packed checkpoint holds exactly the codes, scales and zeros that
``FakeQuantLinear.export_int()`` returns, and the activation quantizers and online transforms travel in
its metadata. Norms stay in the model's float dtype. Embeddings and lm_head are float in the fake-quant
model (no method quantizes them); the packed checkpoint stores them as int8 rows with float32 scales
(``save.real_embed_bit: 8``, weight-only, the default; ``null`` keeps them float) and ``load_deployed``
dequantizes them to the float dtype: they save storage, not runtime memory. A KV-cache quantizer
(``quant.kvcache``) stays fake (float, rounded to the grid) in ``deploy_integer``; the packed checkpoint's
loader deploys it as an integer KV cache (``llmc.quant.int_kv_cache``), which gives the same numbers.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from .quant.fake_linear import FakeQuantLinear
from .quant.int_linear import SHARED_ACT_CACHE, IntLinear
from .utils import swap_module

log = logging.getLogger(__name__)

__all__ = ["deploy_integer", "int_linear_factory", "load_deployed", "deployment_summary", "to_compute_dtype"]


def deploy_integer(model: nn.Module, *, unpack: str = "load", backend: str = "auto",
                   share_act_quant: bool = True) -> nn.Module:
    """Replace, in place, every ``FakeQuantLinear`` that has a weight quantizer by an ``IntLinear``
    computing the same function with integer weights (and integer GEMMs where the activations are
    quantized per token / per tensor). Returns the model. Layers without a weight quantizer stay as
    they are. ``unpack`` and ``backend``: see :class:`IntLinear` (4-bit weights unpacked at load or at
    each call; oneDNN or ``torch._int_mm``)."""
    swapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, FakeQuantLinear) and module.weight_quantizer is not None:
            if module.calibrating:
                raise RuntimeError(f"deploy_integer: {name} is still calibrating its static activation range")
            be = backend if module.weight.device.type == "cpu" else "int_mm"
            new = IntLinear.from_fake(module, unpack=unpack, backend=be, share_act_quant=share_act_quant)
            swap_module(model, name, new)
            swapped += 1
    SHARED_ACT_CACHE.clear()
    log.info("deploy_integer: %d linears now run integer kernels (%s)", swapped,
             dict(deployment_summary(model)["kinds"]))
    return model


def int_linear_factory(unpack: str = "load", backend: str = "auto", share_act_quant: bool = True):
    """A ``linear_factory`` for ``llmc.quant.packed.load_packed_model`` that builds ``IntLinear``s."""
    def factory(codes, scale, zero, bias, weight_q, act_q, transform, dtype):
        return IntLinear(codes, scale, zero, bias, weight_q, act_q, transform, dtype,
                         unpack=unpack, backend=backend, share_act_quant=share_act_quant)
    return factory


def load_deployed(packed_dir: str | Path, *, unpack: str = "load", backend: str = "auto",
                  share_act_quant: bool = True, device: str | torch.device = "cpu") -> nn.Module:
    """Load a packed checkpoint (``save.save_real``) straight into an integer-deployed model.
    On a non-CPU device the ``int_mm`` backend is used (oneDNN's kernel is the x86 CPU's)."""
    from .quant.packed import load_packed_model
    device = torch.device(device)
    if device.type != "cpu":
        backend = "int_mm"
    model = load_packed_model(Path(packed_dir), linear_factory=int_linear_factory(unpack, backend, share_act_quant))
    SHARED_ACT_CACHE.clear()
    return model.to(device) if device.type != "cpu" else model


def to_compute_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the float parameters and buffers of every module except the ``IntLinear``s (whose scales stay
    float32 and whose bias is added in float32) to ``dtype``; e.g. a checkpoint packed from a float32
    model run in bfloat16. In place; returns the model."""
    keep = {id(m) for il in model.modules() if isinstance(il, IntLinear) for m in il.modules()}
    for module in model.modules():
        if id(module) in keep:
            continue
        for name, p in list(module.named_parameters(recurse=False)):
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
        for name, b in list(module.named_buffers(recurse=False)):
            if b is not None and b.is_floating_point() and b.dtype != dtype and "inv_freq" not in name:
                module._buffers[name] = b.to(dtype)
    for module in model.modules():
        if isinstance(module, IntLinear):
            module.dtype = dtype
    return model


def deployment_summary(model: nn.Module) -> dict:
    """Counts of deployed layers by kernel, and the bytes the integer layers hold in memory."""
    kinds: Counter = Counter()
    int_bytes = 0
    fake = 0
    for m in model.modules():
        if isinstance(m, IntLinear):
            kinds[f"{m.kind}:w{m.w_bit}" + ("a%d" % m.act_quantizer.bit if m.act_quantizer is not None else "")
                  + (":packed" if m.unpack == "call" else "")] += 1
            int_bytes += m.storage_bytes()
        elif isinstance(m, FakeQuantLinear):
            fake += 1
    return {"kinds": dict(kinds), "int_layers": sum(kinds.values()), "fake_layers": fake,
            "int_layer_bytes": int_bytes}
