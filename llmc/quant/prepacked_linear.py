"""Float linears with their weight pre-packed once for oneDNN (x86 CPUs): the float counterpart of the
pre-packed int8 weights that :class:`~llmc.quant.int_linear.IntLinear` uses.

``F.linear`` on a bfloat16 CPU tensor re-lays the weight out into oneDNN's blocked (AMX) format on every
call; ``torch.ops.mkldnn._reorder_linear_weight`` does it once and ``torch.ops.mkldnn._linear_pointwise``
then reads the packed weight (PyTorch's own path, the one Inductor's CPU ``freezing`` uses). In bfloat16
the results are bit-identical to ``F.linear`` (checked in the tests; only the speed changes), so only
bfloat16 linears are packed (float32 ``F.linear`` runs another BLAS, with another summation order).
Measured on the 2-core Sapphire Rapids VM, 1 thread, 128 x 896 bf16 input: Qwen2.5-0.5B's gate_proj
(896 -> 4864) 2.08 -> 1.17 ms, its lm_head (896 -> 151,936) 92 -> 70 ms.

Why it exists: an integer-deployed model pre-packs its int8 weights, so a speed comparison against the
stock float model mixes two effects, integer arithmetic and weight pre-packing. Pre-packing the float
model's linears too (``benchmarks/deploy_speed.py``'s ``bf16_packed`` configuration) separates them.
A tied weight (an lm_head sharing the embedding's) is packed into a copy: the embedding keeps the plain
tensor, so the model holds that matrix twice.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils import swap_module

__all__ = ["PrepackedLinear", "prepack_available", "prepack_float_linears"]

_AVAILABLE: Optional[bool] = None


def prepack_available() -> bool:
    """Whether oneDNN's pre-packed float linear runs here (x86 CPU build with mkldnn; checked once)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            w = torch.randn(8, 16, dtype=torch.bfloat16)
            x = torch.randn(3, 16, dtype=torch.bfloat16)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 3)
            y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
            _AVAILABLE = bool(torch.equal(y, F.linear(x, w)))
        except Exception:  # noqa: BLE001 - any failure means: not usable here
            _AVAILABLE = False
    return _AVAILABLE


class PrepackedLinear(nn.Module):
    """``F.linear(x, weight, bias)`` with ``weight`` held in oneDNN's packed layout (CPU inference only).

    ``batch_hint`` is the number of rows the packing is tuned for (any number of rows works)."""

    def __init__(self, linear: nn.Linear, batch_hint: int = 128):
        super().__init__()
        w = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.dtype = w.dtype
        self._packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), batch_hint)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != self.dtype:
            raise TypeError(f"PrepackedLinear holds a {self.dtype} weight and got a {x.dtype} input")
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")

    def storage_bytes(self) -> int:
        n = self._packed.numel() * self._packed.element_size()
        return n + (0 if self.bias is None else self.bias.numel() * self.bias.element_size())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}, "
                f"bias={self.bias is not None}, oneDNN pre-packed")


def prepack_float_linears(model: nn.Module, batch_hint: int = 128) -> int:
    """Replace, in place, every plain bfloat16 ``nn.Linear`` of a CPU model by a
    :class:`PrepackedLinear`; returns how many. Integer and fake-quant layers are not ``nn.Linear`` and
    stay as they are. Raises RuntimeError where the packed kernel is unavailable."""
    if not prepack_available():
        raise RuntimeError("oneDNN's pre-packed float linear is not available in this PyTorch build")
    count = 0
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and module.weight.device.type == "cpu" \
                and module.weight.dtype == torch.bfloat16:
            swap_module(model, name, PrepackedLinear(module, batch_hint))
            count += 1
    return count
