"""A linear layer with fake-quantized weights and activations, and a helper to swap it into a model.

``FakeQuantLinear`` computes ``y = F.linear(Q_a(T(x)), Q_w(W), b)`` where ``T`` is an optional input
transform (e.g. an online Hadamard rotation, whose inverse the algorithm has already folded into ``W``),
``Q_a`` fake-quantizes activations on the fly (per-token dynamic in the benchmark's protocol) and ``Q_w``
quantized the weight once, at construction.  The dequantized weight is stored in the original linear's
dtype as ``.weight`` (so ``state_dict`` keys are unchanged); the integer codes, scale and zero are kept
as non-persistent buffers for packing (:meth:`FakeQuantLinear.export_int`).
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils import swap_module
from .quantizer import Quantizer

__all__ = ["FakeQuantLinear", "replace_linears"]


class FakeQuantLinear(nn.Module):
    """``nn.Linear`` replacement: weights quantized once, activations fake-quantized at each forward.

    Args:
        linear: the float layer (its weight is read, not modified; its bias Parameter is reused).
        weight_quantizer: quantizes the weight ``[out, in]`` (per_tensor / per_channel / per_group);
            ``None`` keeps the float weight.
        act_quantizer: fake-quantizes the input ``[..., in]`` (per_token / per_tensor / per_head);
            ``None`` leaves it in float.  The layer keeps its own copy (``copy.deepcopy``) so that a
            static quantizer's observed range belongs to this layer only.
        input_transform: callable applied to the input before activation quantization (identity when
            ``None``); it is stored as given (an ``nn.Module`` becomes a submodule).
        weight_params: ``(scale, zero)`` to quantize the weight with (e.g. from GPTQ, whose output
            weight is already on that grid) instead of computing them.
        clip_max, clip_min: clipping factors for the weight range (OmniQuant's learned clipping), see
            :meth:`Quantizer.compute_params`.

    Static activation calibration: set ``layer.calibrating = True``, run calibration data (the layer
    observes its transformed float input and does not quantize it), then ``layer.calibrating = False``
    and ``layer.act_quantizer.freeze()``.
    """

    def __init__(self, linear: nn.Linear, weight_quantizer: Optional[Quantizer] = None,
                 act_quantizer: Optional[Quantizer] = None, input_transform: Optional[Callable] = None,
                 weight_params: Optional[Tuple[Tensor, Tensor]] = None,
                 clip_max: Optional[Tensor] = None, clip_min: Optional[Tensor] = None):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"FakeQuantLinear wraps an nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight_quantizer = weight_quantizer
        self.act_quantizer = copy.deepcopy(act_quantizer)
        self.input_transform = input_transform
        self.calibrating = False
        self.bias = linear.bias

        w = linear.weight.detach()
        self.register_buffer("w_codes", None, persistent=False)
        self.register_buffer("w_scale", None, persistent=False)
        self.register_buffer("w_zero", None, persistent=False)
        if weight_quantizer is None:
            w_hat = w.clone()
        else:
            with torch.no_grad():
                if weight_params is not None:
                    scale, zero = weight_params
                else:
                    scale, zero = weight_quantizer.compute_params(w, clip_max, clip_min)
                codes, scale, zero = weight_quantizer.quantize_with_params(w, scale.detach(),
                                                                           None if zero is None else zero.detach())
                w_hat = weight_quantizer.dequantize(codes, scale, zero, dtype=w.dtype)
            self.w_codes, self.w_scale, self.w_zero = codes, scale, zero
        self.weight = nn.Parameter(w_hat, requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_quantizer: Optional[Quantizer] = None,
                    act_quantizer: Optional[Quantizer] = None, input_transform: Optional[Callable] = None,
                    **kwargs) -> "FakeQuantLinear":
        """Same as the constructor (kept for LLMC-style call sites)."""
        return cls(linear, weight_quantizer, act_quantizer, input_transform, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")

    def export_int(self) -> Tuple[Tensor, Tensor, Tensor]:
        """(codes, scale, zero) of the weight: codes ``[out, in]`` (int8 signed / uint8 unsigned grid),
        scale and zero float32 shaped as :meth:`Quantizer.compute_params` returns them (``[out, 1]``
        per_channel, ``[out, in // g, 1]`` per_group, ``[1, 1]`` per_tensor); the grid's bits and
        symmetry are ``self.weight_quantizer``'s."""
        if self.w_codes is None:
            raise RuntimeError("export_int: this layer has no weight quantizer")
        return self.w_codes, self.w_scale, self.w_zero

    def forward(self, x: Tensor) -> Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        if self.act_quantizer is not None:
            if self.calibrating:
                self.act_quantizer.observe(x)
            else:
                x = self.act_quantizer.fake_quant(x)
        return F.linear(x, self.weight, self.bias)


QuantSpec = Union[Tuple[Optional[Quantizer], Optional[Quantizer]], Mapping[str, object]]


def replace_linears(model: nn.Module, specs: Mapping[str, QuantSpec]) -> Dict[str, FakeQuantLinear]:
    """Swap the ``nn.Linear`` submodules named by dotted path (``"model.layers.0.mlp.down_proj"``) for
    ``FakeQuantLinear``s, in place; return the new modules by name.

    Each spec is ``(weight_quantizer, act_quantizer)`` or a mapping of :class:`FakeQuantLinear`'s
    keyword arguments (``weight_quantizer``, ``act_quantizer``, ``input_transform``, ...).  Raises
    ``KeyError`` for a name that is not in the model and ``TypeError`` for one that is not an
    ``nn.Linear``.
    """
    replaced = {}
    for name, spec in specs.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise KeyError(f"replace_linears: no submodule named '{name}'") from None
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"replace_linears: '{name}' is a {type(linear).__name__}, not an nn.Linear")
        kwargs = dict(spec) if isinstance(spec, Mapping) else dict(zip(("weight_quantizer", "act_quantizer"), spec))
        new = FakeQuantLinear(linear, **kwargs)
        swap_module(model, name, new)
        replaced[name] = new
    return replaced
