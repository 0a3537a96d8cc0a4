"""Integer kernels and the integer-deployed linear layer (``IntLinear``), the real-quant counterpart of
:class:`~llmc.quant.fake_linear.FakeQuantLinear`.

What ``FakeQuantLinear`` computes in float, ``IntLinear`` computes with integers::

    y = F.linear(s_x (q_x - z_x), s_w (q_w - z_w)) + b                        (fake quant, float)
      = s_x s_w * sum_k (q_x - z_x)(q_w - z_w) + b                             (IntLinear)

The sum is an int8 x int8 -> int32 GEMM (``torch._int_mm``; oneDNN with VNNI on x86 CPUs, cuBLASLt on
CUDA) over shifted codes ``a = q_x - c_x`` and ``b = q_w - c_w`` that fit int8, followed by exact integer
zero-point corrections (``z' = z - c``)::

    sum_k (a - z'_x)(b - z'_w) = a.b  -  z'_x * (sum_k b - K z'_w)  -  z'_w * sum_k a

Shifts: symmetric grids are already signed (``c = 0``, ``z' = 0``); asymmetric grids of <= 7 bits use
``c = z`` (``q - z`` lies in [-127, 127]) so no correction is needed; 8-bit asymmetric grids use
``c = 128`` and the corrections above (both are needed by SpinQuant's asymmetric W8A8). The int32
result is rescaled in float32 by ``s_x`` (per token or per tensor) and ``s_w`` (per output channel or
per tensor), the bias is added in float32, and the result is cast to the activation dtype.

Exactness: activation codes are computed with the same float32 operations as ``Quantizer.fake_quant``
(so the codes are identical), the integer products are exact; the only differences from the
fake-quant model are float rounding (the fake model rounds ``s * q`` and its dot products to the model
dtype, e.g. bf16, while ``IntLinear`` accumulates exactly and rounds once).

Kernels (``IntLinear.kind``):

* ``int``: per-channel / per-tensor weights and per-token / per-tensor (dynamic or static) activations:
  the integer GEMM above. Weights are kept as int8 ``[in, out]`` (the faster ``_int_mm`` layout on
  x86 for prefill). 4-bit weights are nibble-packed on disk; ``unpack="load"`` (default) unpacks them
  once into int8 (1 byte per weight in memory, fastest), ``unpack="call"`` keeps them packed in memory
  (0.5 byte per weight) and unpacks at every call (slower).
* ``dequant``: the fallbacks whose scales vary along the reduction dimension, where an integer GEMM
  with one rescale per output does not exist: per-group weights, per-head activations, and
  weight-only layers (no activation quantizer). The integer codes stay in memory (int8) and are
  dequantized at every call; the computation is then exactly the fake-quant model's
  (``F.linear(fake_quant(x), s_w (q_w - z_w))``), bit for bit.

Shared activation quantization: q/k/v (and gate/up) projections read the same input tensor; with the
same dynamic activation quantizer and no input transform the int8 activation is computed once and
reused (``share_act_quant``; keyed on the input tensor object and its version counter).
"""

from __future__ import annotations

import copy
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .quantizer import Quantizer

__all__ = ["IntLinear", "int_mm", "quantize_act_int8", "unpack_int4_signed", "pack_int4_signed",
           "KINDS", "int_mm_info"]

KINDS = ("int", "dequant")
_FAST_ACT_GRANULARITIES = ("per_token", "per_channel", "per_tensor")


# ------------------------------------------------------------------------------------------ GEMM
def _int_mm_reference(a: Tensor, b: Tensor) -> Tensor:
    """int8 [M, K] x int8 [K, N] -> int32, exact (int64 accumulation), for devices without _int_mm."""
    return torch.mm(a.to(torch.int64), b.to(torch.int64)).to(torch.int32)


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def int_mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for int8 ``a`` [M, K] and int8 ``b`` [K, N] (any strides), int32 result [M, N].

    CPU: ``torch._int_mm`` has no shape constraints (checked with torch 2.13: M = 1, K = 7, N = 5 work).
    CUDA: cuBLASLt needs M > 16 and K, N multiples of 8: the operands are zero-padded (exact) as needed.
    Where ``_int_mm`` is missing or refuses the shapes, an exact int64 matmul is used instead.
    """
    if a.device.type == "cuda":
        m, k = a.shape
        n = b.shape[1]
        mp, kp, np_ = max(m, 17), _round_up(k, 8), _round_up(n, 8)
        if (mp, kp, np_) != (m, k, n):
            a = F.pad(a, (0, kp - k, 0, mp - m))
            b = F.pad(b, (0, np_ - n, 0, kp - k))
            try:
                return torch._int_mm(a.contiguous(), b)[:m, :n]
            except RuntimeError:
                return _int_mm_reference(a, b)[:m, :n]
    try:
        return torch._int_mm(a, b)
    except (RuntimeError, AttributeError):
        return _int_mm_reference(a, b)


def int_mm_info() -> dict:
    """What ``int_mm`` runs on here (for result records)."""
    return {"kernel": "torch._int_mm" if hasattr(torch, "_int_mm") else "int64 torch.mm fallback",
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


# ------------------------------------------------------------------------------------- packing
def pack_int4_signed(w: Tensor) -> Tensor:
    """int8 values in [-8, 7], shape [N, K] (K even) -> uint8 [N, K/2], even column in the low nibble
    (the layout of ``llmc.quant.packed.pack_codes``)."""
    raw = w.to(torch.int16) & 0x0F
    return (raw[:, 0::2] | (raw[:, 1::2] << 4)).to(torch.uint8)


def unpack_int4_signed(p: Tensor) -> Tensor:
    """Inverse of :func:`pack_int4_signed` with sign extension by arithmetic shifts: int8 [N, 2 * K/2]."""
    s = p.view(torch.int8)
    lo = torch.bitwise_left_shift(s, 4).bitwise_right_shift_(4)   # low nibble, sign-extended
    hi = torch.bitwise_right_shift(s, 4)                          # high nibble, sign-extended
    return torch.stack((lo, hi), dim=-1).reshape(p.shape[0], p.shape[1] * 2)


# --------------------------------------------------------------------------------- activations
def _fast_act(q: Optional[Quantizer]) -> bool:
    """Symmetric dynamic min/max activation quantizer of one range per token (or per tensor)."""
    return (q is not None and q.symmetric and not q.static and q.calib_algo != "mse"
            and q.granularity in _FAST_ACT_GRANULARITIES)


def quantize_act_int8(x2d: Tensor, q: Quantizer) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Integer codes of activations ``x2d`` [M, K] for an ``int`` kernel.

    Returns ``(a, s_x, z)``: ``a`` int8 [M, K] = q_x - c_x, ``s_x`` float32 ([M, 1] per token, [1, 1]
    per tensor), ``z`` int32 of ``s_x``'s shape = z_x - c_x, or None when zero. The codes equal
    ``q.quantize(x)`` (same float32 operations as ``Quantizer.fake_quant``).
    """
    xf = x2d.float()
    if _fast_act(q):
        # the quantizer's range is max(-min(x, 0), max(x, 0)) = max |x|, the same float32 value
        if q.granularity == "per_tensor":
            amax = xf.abs().amax().reshape(1, 1)
        else:
            amax = xf.abs().amax(dim=-1, keepdim=True)
        s = amax.div_(q.qmax).clamp_(min=q.eps)
        codes = torch.div(xf, s).round_().clamp_(q.qmin, q.qmax)
        return codes.to(torch.int8), s, None
    scale, zero = q.compute_params(xf)
    scale, zero = scale.float(), zero.float()
    if scale.dim() < 2:     # static (0-dim) or per-tensor params: one range for the whole input
        scale, zero = scale.reshape(1, 1), zero.reshape(1, 1)
    codes = torch.clamp(torch.round(xf / scale) + zero, q.qmin, q.qmax)
    if q.symmetric:
        return codes.to(torch.int8), scale, None
    if q.bit <= 7:
        return (codes - zero).to(torch.int8), scale, None
    return (codes - 128).to(torch.int8), scale, (zero - 128).to(torch.int32)


class _SharedActCache:
    """The last activation quantized by an ``int`` IntLinear: sibling projections that read the same
    tensor (q/k/v, gate/up) reuse it. Holds a reference to that tensor (so its id cannot be reused) and
    checks its version counter (so an in-place change invalidates it)."""

    def __init__(self):
        self.clear()

    def clear(self):
        self.x, self.version, self.key, self.value = None, -1, None, None

    @staticmethod
    def _version(x: Tensor):
        try:
            return x._version
        except RuntimeError:    # inference-mode tensors have no version counter: do not share
            return None

    def get(self, x: Tensor, key):
        if self.x is x and self.key == key:
            v = self._version(x)
            if v is not None and v == self.version:
                return self.value
        return None

    def put(self, x: Tensor, key, value):
        v = self._version(x)
        if v is None:
            self.clear()
        else:
            self.x, self.version, self.key, self.value = x, v, key, value


SHARED_ACT_CACHE = _SharedActCache()


def _act_key(q: Quantizer):
    return (q.bit, q.symmetric, q.granularity, q.calib_algo, q.eps)


# ----------------------------------------------------------------------------------- the layer
class IntLinear(nn.Module):
    """A linear layer deployed with integer weights (and, with an activation quantizer, integer GEMMs).

    Built from a weight's integer codes, as ``FakeQuantLinear.export_int()`` and
    ``llmc.quant.packed.load_packed_model`` give them::

        IntLinear(codes, scale, zero, bias, weight_quantizer, act_quantizer, input_transform, dtype)

    Args:
        codes: ``[out, in]`` int8 (symmetric grid) or uint8 (asymmetric grid) codes.
        scale, zero: float32 weight scale / zero point shaped as ``Quantizer.compute_params`` returns
            them (``zero`` None or ignored for symmetric grids).
        bias: float bias or None.
        weight_quantizer: the weights' ``Quantizer`` (bits, symmetry, granularity, group size).
        act_quantizer: the activations' ``Quantizer`` (None: weight-only, ``dequant`` kernel); a static
            quantizer must be frozen.
        input_transform: callable applied to the input first (e.g. ``OnlineHadamard``), as in
            ``FakeQuantLinear``.
        dtype: the model's float dtype (the output dtype follows the input's).
        unpack: for 4-bit weights of the ``int`` kernel: ``"load"`` (int8 in memory) or ``"call"``
            (nibble-packed in memory, unpacked at each call).
        share_act_quant: reuse the quantized activation of a sibling projection (see module docstring).
    """

    def __init__(self, codes: Tensor, scale: Tensor, zero: Optional[Tensor], bias: Optional[Tensor],
                 weight_quantizer: Quantizer, act_quantizer: Optional[Quantizer] = None,
                 input_transform: Optional[Callable] = None, dtype: torch.dtype = torch.float32, *,
                 unpack: str = "load", share_act_quant: bool = True):
        super().__init__()
        if unpack not in ("load", "call"):
            raise ValueError(f"unpack must be 'load' or 'call', got {unpack!r}")
        wq = weight_quantizer
        if wq is None:
            raise ValueError("IntLinear needs the weight quantizer of the codes")
        aq = copy.deepcopy(act_quantizer)
        if aq is not None and aq.static and not aq.frozen:
            raise RuntimeError("IntLinear: static activation quantizer is not frozen (calibrate it first)")
        self.out_features, self.in_features = codes.shape
        self.weight_quantizer = wq
        self.act_quantizer = aq
        self.input_transform = input_transform
        self.dtype = dtype
        self.share_act_quant = share_act_quant
        self.w_bit, self.w_symmetric = wq.bit, wq.symmetric
        self.unpack = "load"

        int_weights = wq.granularity in ("per_channel", "per_tensor")
        int_acts = aq is not None and aq.granularity in _FAST_ACT_GRANULARITIES
        self.kind = "int" if (int_weights and int_acts) else "dequant"

        codes = codes.detach()
        scale = scale.detach().float()
        zero_f = None
        if not wq.symmetric:
            zero_f = torch.zeros_like(scale) if zero is None else zero.detach().float()
        q = codes.to(torch.int16)
        # shift the codes into int8: b = q - c, z' = z - c
        if wq.symmetric:
            shifted, zero_shift = q, None
        elif wq.bit <= 7 and self.kind == "int" and not (unpack == "call" and wq.bit <= 4):
            shifted, zero_shift = q - zero_f.to(torch.int16).reshape(-1, 1), None
        else:
            c = 2 ** (wq.bit - 1)   # 128 for 8 bits, 8 for 4 bits: the grid's middle
            shifted = q - c
            zero_shift = zero_f - c

        b = shifted.to(torch.int8)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        if self.kind == "int":
            self.register_buffer("w_scale", scale.reshape(1, -1).contiguous())   # [1, out] or [1, 1]
            if unpack == "call" and wq.bit <= 4 and self.in_features % 2 == 0:
                self.unpack = "call"
                self.register_buffer("qweight", pack_int4_signed(b))             # uint8 [out, in / 2]
            else:
                self.register_buffer("qweight", b.t().contiguous())              # int8 [in, out]
            if zero_shift is not None:
                zw = zero_shift.round().to(torch.int32).reshape(1, -1)
                self.register_buffer("w_zero", zw)                               # z'_w [1, out]
                col = b.to(torch.int32).sum(dim=1).reshape(1, -1) - self.in_features * zw
                self.register_buffer("w_colterm", col)                           # sum_k b - K z'_w
            else:
                self.register_buffer("w_zero", None)
                self.register_buffer("w_colterm", b.to(torch.int32).sum(dim=1).reshape(1, -1))
        else:
            self.register_buffer("qweight", b.contiguous())                      # int8 [out, in]
            self.register_buffer("w_scale", scale.contiguous())                  # quantizer's shape
            self.register_buffer("w_zero", None if zero_shift is None else zero_shift.contiguous())
            self.register_buffer("w_colterm", None)

    # -------------------------------------------------------------------------------- helpers
    @classmethod
    def from_fake(cls, module, **kwargs) -> "IntLinear":
        """An IntLinear computing what a ``FakeQuantLinear`` (with a weight quantizer) computes."""
        codes, scale, zero = module.export_int()
        return cls(codes, scale, zero, module.bias, module.weight_quantizer, module.act_quantizer,
                   module.input_transform, module.weight.dtype, **kwargs)

    def extra_repr(self) -> str:
        a = self.act_quantizer
        act = "none" if a is None else f"{a.bit}-bit {'sym' if a.symmetric else 'asym'} {a.granularity}" + \
            (" static" if a.static else "")
        return (f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}, "
                f"w={self.w_bit}-bit {'sym' if self.w_symmetric else 'asym'} "
                f"{self.weight_quantizer.granularity}, act={act}, unpack={self.unpack}, "
                f"bias={self.bias is not None}")

    def weight_int8(self) -> Tensor:
        """Shifted weight codes ``b = q - c`` as int8 ``[in, out]`` (``int`` kernel)."""
        if self.unpack == "call":
            return unpack_int4_signed(self.qweight).t()
        return self.qweight

    def dequantized_weight(self, dtype: Optional[torch.dtype] = None) -> Tensor:
        """``s_w (q_w - z_w)`` [out, in] in ``dtype`` (the fake-quant model's weight)."""
        dtype = dtype or self.dtype
        if self.kind == "int":
            b = self.weight_int8().t().float()
            if self.w_zero is not None:
                b = b - self.w_zero.float().reshape(-1, 1)
            return (b * self.w_scale.reshape(-1, 1)).to(dtype)
        wq = self.weight_quantizer
        return wq.dequantize(self.qweight, self.w_scale, self.w_zero, dtype=dtype)

    def storage_bytes(self) -> int:
        """Bytes this layer holds in memory (codes, scales, zeros, corrections, bias)."""
        return sum(t.numel() * t.element_size() for t in self.buffers(recurse=False))

    # -------------------------------------------------------------------------------- forward
    def _act_int(self, x: Tensor, x2d: Tensor, shareable: bool):
        aq = self.act_quantizer
        if not (shareable and self.share_act_quant):
            return quantize_act_int8(x2d, aq)
        key = _act_key(aq)
        hit = SHARED_ACT_CACHE.get(x, key)
        if hit is None:
            hit = quantize_act_int8(x2d, aq)
            SHARED_ACT_CACHE.put(x, key, hit)
        return hit

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "dequant":
            return self._forward_dequant(x)
        out_dtype = x.dtype
        shareable = self.input_transform is None and not self.act_quantizer.static
        if self.input_transform is not None:
            x = self.input_transform(x)
        shape = x.shape
        x2d = x.reshape(-1, shape[-1])
        a, sx, zx = self._act_int(x, x2d, shareable)
        acc = int_mm(a, self.weight_int8())
        if zx is not None or self.w_zero is not None:
            acc = self._zero_correction(acc, a, zx)
        y = acc.to(torch.float32)
        y.mul_(sx).mul_(self.w_scale)
        if self.bias is not None:
            y.add_(self.bias)
        return y.to(out_dtype).reshape(*shape[:-1], self.out_features)

    def _zero_correction(self, acc: Tensor, a: Tensor, zx: Optional[Tensor]) -> Tensor:
        """acc - z'_x (sum_k b - K z'_w) - z'_w sum_k a, in int64 when int32 could overflow."""
        k = self.in_features
        wide = k * (128 * 128 + 255 * 383 + 128 * 255) >= 2 ** 31
        it = torch.int64 if wide else torch.int32
        out = acc.to(it)
        if zx is not None:
            out = out - zx.to(it) * self.w_colterm.to(it)
        if self.w_zero is not None:
            out = out - a.to(it).sum(dim=1, keepdim=True) * self.w_zero.to(it)
        return out

    def _forward_dequant(self, x: Tensor) -> Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        if self.act_quantizer is not None:
            x = self.act_quantizer.fake_quant(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)
