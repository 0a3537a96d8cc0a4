"""Integer kernels and the integer-deployed linear layer (``IntLinear``), the real-quant counterpart of
:class:`~llmc.quant.fake_linear.FakeQuantLinear`.

What ``FakeQuantLinear`` computes in float, ``IntLinear`` computes with integers::

    y = F.linear(s_x (q_x - z_x), s_w (q_w - z_w)) + b                        (fake quant, float)
      = s_x s_w * sum_k (q_x - z_x)(q_w - z_w) + b                             (IntLinear)

The sum is an int8 x int8 -> int32 GEMM over shifted codes ``a = q_x - c_x`` and ``b = q_w - c_w``
that fit int8, with exact integer zero-point corrections (``z' = z - c``)::

    sum_k (a - z'_x)(b - z'_w) = a.b  -  z'_x * (sum_k b - K z'_w)  -  z'_w * sum_k a

Shifts: symmetric grids are already signed (``c = 0``, ``z' = 0``); asymmetric grids of <= 7 bits use
``c = z`` (``q - z`` lies in [-127, 127]) so no correction is needed; 8-bit asymmetric grids use
``c = 128`` and the corrections above (SpinQuant's asymmetric W8A8 needs both). The int32 result is
rescaled in float32 by ``s_x`` (per token or per tensor) and ``s_w`` (per output channel or per
tensor), the bias is added in float32 and the result is cast to the activation dtype.

Exactness: activation codes are computed with the same float32 operations as ``Quantizer.fake_quant``
(the codes are identical) and the integer products are exact; the only differences from the fake-quant
model are float rounding (the fake model rounds ``s * q`` and its dot products to the model dtype, e.g.
bf16, while ``IntLinear`` accumulates exactly and rounds once at the end).

Kernels (``IntLinear.kind``):

* ``int``: per-channel / per-tensor weights and per-token / per-tensor (dynamic or static) activations:
  the integer GEMM above, on one of two backends (``IntLinear.backend``):

  - ``onednn`` (x86 CPUs, the default there): ``torch.ops.onednn.qlinear_pointwise`` with the weight
    pre-packed once by ``onednn.qlinear_prepack`` (PyTorch's own x86 int8 linear, used by Inductor's
    quantization); activations are passed as uint8 ``a + 128`` with zero point 128 (exact), the
    per-channel weight scale (and, for per-tensor activations, the activation scale and the bias) are
    applied inside the kernel, a per-token scale and the bias in one pass afterwards (the fused
    ``rescale_rows`` of ``llmc.quant.cpu_kernels``; ``addcmul`` where it is not built).
    Used for symmetric activations and weights without a zero-point correction.
  - ``int_mm``: ``torch._int_mm`` (int8 x int8 -> int32; any shape on CPU, padded to cuBLASLt's
    constraints on CUDA) with the corrections and rescale in PyTorch ops. Everything else (8-bit
    asymmetric grids, CUDA, ``unpack="call"``).

  4-bit weights are nibble-packed on disk; ``unpack="load"`` (default) unpacks them once into int8
  (1 byte per weight in memory, the fast path), ``unpack="call"`` keeps them packed in memory
  (0.5 byte per weight) and unpacks at each call (``int_mm`` backend; slower).
* ``weight_only`` (no activation quantizer; float activations times integer weights): PyTorch's CPU
  weight-only kernels, which dequantize inside the GEMM: ``aten._weight_int8pack_mm`` (8-bit weights per
  channel: int8 [out, in] and one scale per output; an asymmetric grid adds ``- rowsum(x) s z'``) and
  ``aten._weight_int4pack_mm_for_cpu`` (4-bit weights in groups of 32, 64, 128 or 256 along the input:
  codes ``u`` in [0, 15] packed two per byte by ``aten._convert_weight_to_int4pack_for_cpu``, and per group
  a scale and a float offset, ``w = s (u - 8) + o``; the layout torchao's int4 weight-only CPU path uses).
  The weights stay 1 byte (8-bit) or half a byte (4-bit) per value in memory. These kernels are
  matrix-vector kernels: at one token (decoding) they beat the float bfloat16 linear (SmolLM2's gate_proj,
  1 thread: 0.10 ms int8 / 0.11 ms int4 against 0.15-0.18 ms), at 128 tokens they are 6-12x slower than
  the float GEMM (4.1-4.8 ms against 0.4-0.8 ms). Above ``WEIGHT_ONLY_KERNEL_TOKENS`` tokens an 8-bit
  layer therefore dequantizes its weight from the same codes (0.4 ms) and runs the float GEMM; the result
  is the same function. A 4-bit layer always runs the kernel: unpacking its layout costs as much as the
  kernel itself at 128 tokens (~4 ms), so its prefill is slow and its decoding fast. The int4 kernel's packed layout
  depends on the CPU torch runs on: ``[out / 64, in, 32]`` bytes, rows ``j`` and ``j + 32`` of each 64-row
  block in the low and high nibble, where torch uses its AVX-512 kernels; blocks of 32 rows (``j`` and
  ``j + 16``) on a CPU with AVX2 only. The layer finds which one holds against the codes when it is built
  (so a packed model is packed again on each machine, never shared in aten's layout); a layer with an
  output width that is not a multiple of 64 uses ``dequant``.
* ``dequant``: the fallbacks whose scales vary along the reduction dimension, where an integer GEMM with
  one rescale per output does not exist: per-group weights with quantized activations, per-head
  activations, and weight-only layers the two kernels above do not take (e.g. 4-bit per-channel weights). The integer codes stay in memory (int8) and are dequantized at each call;
  the computation is then exactly the fake-quant model's (``F.linear(fake_quant(x), s_w (q_w - z_w))``),
  bit for bit, at float speed plus the dequantization.

Shared activation quantization: q/k/v (and gate/up) projections read the same input tensor; with the
same dynamic activation quantizer and no input transform, the integer activation is computed once and
reused (``share_act_quant``; keyed on the input tensor object and its version counter, so an in-place
change invalidates it; inference-mode tensors, which have no version counter, are never shared).
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cpu_kernels import fused_kernels, fused_kernels_status
from .quantizer import Quantizer

log = logging.getLogger(__name__)

__all__ = ["IntLinear", "int_mm", "quantize_act_int8", "unpack_int4_signed", "pack_int4_signed",
           "onednn_available", "int_mm_info", "SHARED_ACT_CACHE", "KINDS", "BACKENDS"]

KINDS = ("int", "weight_only", "dequant")
INT4_GROUPS = (32, 64, 128, 256)     # the group sizes aten._weight_int4pack_mm_for_cpu takes
WEIGHT_ONLY_KERNEL_TOKENS = 16       # weight_only: up to this many tokens the kernel, above it dequantize + GEMM
BACKENDS = ("auto", "onednn", "int_mm")
_FAST_ACT_GRANULARITIES = ("per_token", "per_channel", "per_tensor")


# ------------------------------------------------------------------------------------------ GEMM
def _int_mm_reference(a: Tensor, b: Tensor) -> Tensor:
    """int8 [M, K] x int8 [K, N] -> int32, exact (int64 accumulation), where _int_mm is unavailable."""
    return torch.mm(a.to(torch.int64), b.to(torch.int64)).to(torch.int32)


def _int_mm_float64(a: Tensor, b: Tensor) -> Tensor:
    """int8 [M, K] x int8 [K, N] -> int32 by a float64 GEMM: exact (every product is at most 2^14 in
    magnitude, so a sum of K of them is an integer float64 holds exactly for K below 2^39), and on a CPU
    without int8 dot-product instructions 12x faster than ``torch._int_mm``'s fallback there (AMD EPYC with
    AVX2 only, 1 thread, 512 x 576 x 1536: 22 against 1.8 GOP/s)."""
    return torch.mm(a.to(torch.float64), b.to(torch.float64)).to(torch.int32)


INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})   # /proc/cpuinfo names
_INT8_DOT: Optional[bool] = None


def cpu_has_int8_dot() -> bool:
    """Whether this CPU has int8 dot-product instructions (VNNI or AMX), which ``torch._int_mm`` needs to be
    fast on the CPU (checked once)."""
    global _INT8_DOT
    if _INT8_DOT is None:
        from ..utils import cpu_flags
        _INT8_DOT = bool(INT8_DOT_FLAGS & cpu_flags())
    return _INT8_DOT


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def cublaslt_int8_operands(a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """``a`` [M, K] and ``b`` [K, N] as cuBLASLt's int8 GEMM takes them, with the same product in the top-left
    [M, N]: M above 16 and K, N multiples of 8 (zero padding, which is exact), ``a`` row-major and ``b``
    column-major (the "TN" layout, the only one cuBLASLt's int8 kernels are sure to have: PyTorch's
    ``_int_mm_out_cuda``, aten/src/ATen/native/cuda/Blas.cpp, passes the layouts through to cuBLASLt, which
    refused a row-major ``b`` with CUBLAS_STATUS_NOT_SUPPORTED on an H200 with torch 2.11 at M = 48, K = 64, N = 64).
    ``IntLinear``'s ``b`` is the transpose of its contiguous ``[out, in]`` codes, already column-major: no
    copy unless padding is needed."""
    m, k = a.shape
    n = b.shape[1]
    mp, kp, np_ = max(m, 17), _round_up(k, 8), _round_up(n, 8)
    bt = b.t()                                     # [N, K], contiguous when b is column-major
    if (mp, kp, np_) != (m, k, n):
        a = F.pad(a, (0, kp - k, 0, mp - m))
        bt = F.pad(bt, (0, kp - k, 0, np_ - n))
    return a.contiguous(), bt.contiguous().t()


_CUDA_FALLBACK_WARNED = False


def int_mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for int8 ``a`` [M, K] and int8 ``b`` [K, N] (any strides): int32 [M, N].

    CPU: ``torch._int_mm`` has no shape constraints (checked with torch 2.13: M = 1, K = 7, N = 5 work). On
    a CPU without VNNI or AMX (:func:`cpu_has_int8_dot`) it falls back to a slow reference kernel, and the
    same integers come from an exact float64 GEMM instead (:func:`_int_mm_float64`).
    CUDA: the operands are shaped and laid out as cuBLASLt needs them (:func:`cublaslt_int8_operands`). Where
    ``_int_mm`` still refuses them, the same integers come from an exact float64 GEMM (CUDA has no int64
    matmul), with a warning once: it is slow, and a timing taken through it is not the integer kernel's.
    """
    global _CUDA_FALLBACK_WARNED
    if a.device.type == "cuda":
        m, n = a.shape[0], b.shape[1]
        a, b = cublaslt_int8_operands(a, b)
        try:
            return torch._int_mm(a, b)[:m, :n]
        except RuntimeError as e:
            if not _CUDA_FALLBACK_WARNED:
                _CUDA_FALLBACK_WARNED = True
                log.warning("int_mm: torch._int_mm refused %s x %s on CUDA (%s); exact float64 GEMMs instead, "
                            "slow", tuple(a.shape), tuple(b.shape), str(e).splitlines()[0][:100])
            return _int_mm_float64(a, b)[:m, :n]
    if not cpu_has_int8_dot():
        return _int_mm_float64(a, b)
    try:
        return torch._int_mm(a, b)
    except (RuntimeError, AttributeError):
        return _int_mm_reference(a, b)


_ONEDNN: Optional[bool] = None


def onednn_available() -> bool:
    """Whether PyTorch's x86 oneDNN int8 linear (``onednn.qlinear_pointwise``) runs here (checked once
    on a tiny exact case). ``$SLMQUANT_INT_BACKEND=int_mm`` turns it off."""
    global _ONEDNN
    if os.environ.get("SLMQUANT_INT_BACKEND", "").lower() == "int_mm":
        return False
    if _ONEDNN is None:
        try:
            ok = torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")
            if ok:
                g = torch.Generator().manual_seed(0)
                a = torch.randint(-128, 128, (3, 16), dtype=torch.int8, generator=g)
                w = torch.randint(-127, 128, (8, 16), dtype=torch.int8, generator=g)
                y = _onednn_linear(a.view(torch.uint8) ^ 0x80, 1.0, torch.ops.onednn.qlinear_prepack(w, None),
                                   torch.ones(8), torch.zeros(8, dtype=torch.int32), None, torch.float32)
                ok = torch.equal(y, (a.to(torch.int64) @ w.to(torch.int64).t()).float())
        except Exception:  # noqa: BLE001 - any failure means: not usable here
            ok = False
        _ONEDNN = bool(ok)
    return _ONEDNN


def _onednn_linear(a_u8: Tensor, x_scale: float, w_packed: Tensor, w_scale: Tensor, w_zp: Tensor,
                   bias: Optional[Tensor], out_dtype: torch.dtype) -> Tensor:
    """x_scale * w_scale[n] * sum_k (a_u8 - 128) w + bias, by oneDNN (u8 activations, zero point 128).

    Not signed int8 activations with zero point 0, although torch 2.13 takes them: for one token and a
    narrow output (SmolLM2's k_proj, 576 -> 192; Qwen2.5's, 896 -> 128) oneDNN then runs a ~100x slower
    kernel (4.0 ms against 0.04 ms on the development machine), which made decoding 5x slower."""
    return torch.ops.onednn.qlinear_pointwise(a_u8, x_scale, 128, w_packed, w_scale, w_zp, bias, 1.0, 0,
                                              out_dtype, "none", [], "")


def int_mm_info() -> dict:
    """What the integer kernels run on here (for result records)."""
    return {"onednn_qlinear": onednn_available(), "int_mm": hasattr(torch, "_int_mm"),
            "int_mm_cpu": "torch._int_mm" if cpu_has_int8_dot() else "float64 GEMM (no VNNI or AMX on this CPU)",
            "fused_kernels": _fused_status(),
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "backend_env": os.environ.get("SLMQUANT_INT_BACKEND") or None}


# ------------------------------------------------------------------------------------- packing
def pack_int4_signed(w: Tensor) -> Tensor:
    """int8 values in [-8, 7], shape [N, K] (K even) -> uint8 [N, K/2], even column in the low nibble
    (the layout of ``llmc.quant.packed.pack_codes``)."""
    raw = w.to(torch.int16) & 0x0F
    return (raw[:, 0::2] | (raw[:, 1::2] << 4)).to(torch.uint8)


def unpack_int4_signed(p: Tensor) -> Tensor:
    """Inverse of :func:`pack_int4_signed`, sign-extending with arithmetic shifts: int8 [N, K]."""
    s = p.view(torch.int8)
    lo = torch.bitwise_left_shift(s, 4).bitwise_right_shift_(4)   # low nibble, sign-extended
    hi = torch.bitwise_right_shift(s, 4)                          # high nibble, sign-extended
    return torch.stack((lo, hi), dim=-1).reshape(p.shape[0], p.shape[1] * 2)


# --------------------------------------------------------------------------------- activations
def _fused_status() -> str:
    fused_kernels()
    return fused_kernels_status()


def _fused():
    """The fused CPU kernels (``llmc.quant.cpu_kernels``) or None (then PyTorch ops, same results)."""
    return fused_kernels()


def _fast_act(q: Optional[Quantizer]) -> bool:
    """Symmetric dynamic min/max activation quantizer with one range per token (or per tensor)."""
    return (q is not None and q.symmetric and not q.static and q.calib_algo != "mse"
            and q.granularity in _FAST_ACT_GRANULARITIES)


def quantize_act_int8(x2d: Tensor, q: Quantizer, unsigned: bool = False
                      ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Integer codes of activations ``x2d`` [M, K] for the ``int`` kernel.

    Returns ``(a, s_x, z)``: ``a`` int8 [M, K] = q_x - c_x, ``s_x`` float32 ([M, 1] per token, [1, 1]
    per tensor), ``z`` int32 of ``s_x``'s shape = z_x - c_x, or None when zero. The codes are those of
    ``q.quantize(x)`` (the same float32 operations as ``Quantizer.fake_quant``). ``unsigned=True``
    (symmetric grids only) returns ``a + 128`` as uint8, the oneDNN kernel's input.
    """
    if _fast_act(q):
        kernels = _fused()
        if (kernels is not None and q.granularity != "per_tensor" and x2d.device.type == "cpu"
                and x2d.dtype in (torch.bfloat16, torch.float32) and x2d.is_contiguous()):
            codes, s = kernels.quantize_rows_sym(x2d, float(q.qmax), float(q.eps), unsigned)
            return codes, s, None
        # The quantizer's range max(-min(x, 0), max(x, 0)) is max |x|: the same float32 value, also when
        # taken in bf16 (abs and max are exact). x / s is computed in float32 as the quantizer does
        # (torch.div promotes a bf16 x). No clamp: |x| <= max|x| = qmax * s up to float32 rounding, so
        # |x / s| < qmax + 1/2 and the rounded code is always inside [-qmax, qmax].
        # Speed (CPU, 1 x 128 x 4864 bf16, 1 thread): one float32 copy worked on in place, max |x| as
        # max(max x, -min x) (no |x| temporary): 0.84 ms; dividing the bf16 tensor by the float32 scale
        # (a mixed-dtype division) and reducing |x| took 2.7 ms, more than the int8 GEMM after it.
        xf = x2d.to(torch.float32, copy=True)
        dim = None if q.granularity == "per_tensor" else -1
        hi = xf.amax() if dim is None else xf.amax(dim=-1, keepdim=True)
        lo = xf.amin() if dim is None else xf.amin(dim=-1, keepdim=True)
        s = torch.maximum(hi, lo.neg_()).reshape(-1, 1).div_(q.qmax).clamp_(min=q.eps)
        codes = xf.div_(s).round_().to(torch.int8)
        if unsigned:
            codes = codes.view(torch.uint8).bitwise_xor_(0x80)   # int8 v -> uint8 v + 128
        return codes, s, None
    kernels = _fused()
    if (kernels is not None and not unsigned and not q.symmetric and q.bit == 8 and not q.static
            and q.calib_algo != "mse" and q.granularity in ("per_token", "per_channel")
            and x2d.device.type == "cpu" and x2d.dtype in (torch.bfloat16, torch.float32) and x2d.is_contiguous()):
        return tuple(kernels.quantize_rows_asym(x2d, float(q.qmax), float(q.eps), 128))
    xf = x2d.float()
    scale, zero = q.compute_params(xf)
    scale, zero = scale.float(), zero.float()
    if scale.dim() < 2:     # static (0-dim) params: one range for the whole input
        scale, zero = scale.reshape(1, 1), zero.reshape(1, 1)
    codes = torch.clamp(torch.round(xf / scale) + zero, q.qmin, q.qmax)
    if q.symmetric:
        a = codes.to(torch.int8)
        return (a.view(torch.uint8).bitwise_xor_(0x80) if unsigned else a), scale, None
    if unsigned:
        raise ValueError("unsigned activation codes are for symmetric grids")
    if q.bit <= 7:
        return (codes - zero).to(torch.int8), scale, None
    return (codes - 128).to(torch.int8), scale, (zero - 128).to(torch.int32)


def _rows(t: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """A per-row (or per-column) parameter as ``n`` contiguous values (a single value repeated)."""
    t = t.reshape(-1).to(dtype)
    return t.expand(n).contiguous() if t.numel() == 1 and n != 1 else t.contiguous()


class _SharedActCache:
    """The last activation quantized by an ``int`` IntLinear: sibling projections reading the same tensor
    (q/k/v, gate/up) reuse it. Holds a reference to that tensor (so its id cannot be reused) and checks
    its version counter (an in-place change invalidates it)."""

    def __init__(self):
        self.clear()

    def clear(self):
        self.x, self.version, self.key, self.value = None, -1, None, None

    @staticmethod
    def _version(x: Tensor):
        try:
            return x._version
        except RuntimeError:    # inference-mode tensors have no version counter: never shared
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


def weight_only_kernel(wq: Quantizer, in_features: int) -> bool:
    """Whether a weight-only layer has a CPU kernel here (``weight_only``; module docstring)."""
    if wq.bit == 8:
        return wq.granularity in ("per_channel", "per_tensor")
    return (wq.bit == 4 and wq.granularity == "per_group" and wq.group_size in INT4_GROUPS
            and in_features % wq.group_size == 0)


INT4PACK_BLOCKS = (64, 32)   # rows per block of aten's int4 CPU packing: AVX-512 builds, then AVX2 ones


def unpack_int4pack_cpu(packed: Tensor, out_features: int, in_features: int, block: int = 64) -> Tensor:
    """The codes ``u`` [out, in] (int16, 0..15) of ``aten._convert_weight_to_int4pack_for_cpu``'s layout
    (module docstring) with ``block`` rows per block: 64 where torch runs its AVX-512 kernels, 32 on a CPU
    with AVX2 only (``aten/src/ATen/native/cpu/int4mm_kernel.cpp`` packs per CPU capability). The caller
    checks it against the codes it packed (:func:`int4pack_block`)."""
    v = packed.reshape(out_features // block, in_features, block // 2)
    u = torch.cat(((v & 0x0F), (v >> 4)), dim=2).to(torch.int16)           # [blocks, in, block]
    return u.transpose(1, 2).reshape(out_features, in_features)


def int4pack_block(packed: Tensor, codes: Tensor) -> int:
    """The block size of ``packed`` (aten's int4 CPU packing of ``codes`` [out, in]) that gives back the codes;
    ``RuntimeError`` when none does (a PyTorch change to the layout)."""
    out_features, in_features = codes.shape
    for block in INT4PACK_BLOCKS:
        if out_features % block == 0 and torch.equal(
                unpack_int4pack_cpu(packed, out_features, in_features, block), codes.to(torch.int16)):
            return block
    raise RuntimeError("IntLinear: aten's int4 CPU packing is not a layout this module reads "
                       f"(blocks of {' or '.join(map(str, INT4PACK_BLOCKS))} rows; a PyTorch change); the "
                       "weight_only int4 path must be updated")


# ----------------------------------------------------------------------------------- the layer
class IntLinear(nn.Module):
    """A linear layer deployed with integer weights (and, with an activation quantizer, integer GEMMs).

    Built from a weight's integer codes, as ``FakeQuantLinear.export_int()`` and
    ``llmc.quant.packed.load_packed_model`` give them::

        IntLinear(codes, scale, zero, bias, weight_quantizer, act_quantizer, input_transform, dtype)

    Args:
        codes: ``[out, in]`` int8 (symmetric grid) or uint8 (asymmetric grid) codes.
        scale, zero: float32 weight scale / zero point shaped as ``Quantizer.compute_params`` returns
            them (``zero`` is ignored for symmetric grids).
        bias: float bias or None.
        weight_quantizer: the weights' ``Quantizer`` (bits, symmetry, granularity, group size).
        act_quantizer: the activations' ``Quantizer`` (None: weight-only, ``dequant`` kernel); a static
            quantizer must be frozen.
        input_transform: callable applied to the input first (e.g. ``OnlineHadamard``), as in
            ``FakeQuantLinear``.
        dtype: the model's float dtype (the output dtype follows the input's).
        unpack: 4-bit weights of the ``int`` kernel: ``"load"`` (int8 in memory) or ``"call"``
            (nibble-packed in memory, unpacked at each call).
        backend: ``"auto"`` (oneDNN where available and applicable, else ``_int_mm``), ``"onednn"``
            (error if not applicable) or ``"int_mm"``.
        share_act_quant: reuse the quantized activation of a sibling projection (module docstring).
    """

    def __init__(self, codes: Tensor, scale: Tensor, zero: Optional[Tensor], bias: Optional[Tensor],
                 weight_quantizer: Quantizer, act_quantizer: Optional[Quantizer] = None,
                 input_transform: Optional[Callable] = None, dtype: torch.dtype = torch.float32, *,
                 unpack: str = "load", backend: str = "auto", share_act_quant: bool = True):
        super().__init__()
        if unpack not in ("load", "call"):
            raise ValueError(f"unpack must be 'load' or 'call', got {unpack!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        wq = weight_quantizer
        if wq is None:
            raise ValueError("IntLinear needs the weight quantizer of the codes")
        aq = copy.deepcopy(act_quantizer)
        if aq is not None and aq.static and not aq.frozen:
            raise RuntimeError("IntLinear: the static activation quantizer is not frozen (calibrate it first)")
        self.out_features, self.in_features = codes.shape
        self.weight_quantizer = wq
        self.act_quantizer = aq
        self.input_transform = input_transform
        self.dtype = dtype
        self.share_act_quant = share_act_quant
        self.w_bit, self.w_symmetric = wq.bit, wq.symmetric
        self.unpack = "load"
        self.backend = None
        self._w_packed = None     # oneDNN's pre-packed weight (an opaque mkldnn tensor), not a buffer

        int_weights = wq.granularity in ("per_channel", "per_tensor")
        int_acts = aq is not None and aq.granularity in _FAST_ACT_GRANULARITIES
        self.kind = "int" if (int_weights and int_acts) else \
            "weight_only" if aq is None and weight_only_kernel(wq, self.in_features) \
            and (wq.bit == 8 or self.out_features % 64 == 0) else "dequant"
        packed_call = unpack == "call" and wq.bit <= 4 and self.in_features % 2 == 0 and self.kind == "int"

        # own copies: a tensor of a loaded checkpoint may be a view of its memory-mapped file, which
        # would then stay mapped (and its pages resident) as long as the layer lives
        codes = codes.detach()
        scale = scale.detach().float().clone()
        zero_f = None
        if not wq.symmetric:
            zero_f = torch.zeros_like(scale) if zero is None else zero.detach().float().clone()
        q = codes.to(torch.int16)
        # shift the codes into int8: b = q - c, z'_w = z - c
        if wq.symmetric:
            shifted, zero_shift = q, None
        elif wq.bit <= 7 and self.kind == "int" and not packed_call:
            shifted, zero_shift = q - zero_f.to(torch.int16).reshape(-1, 1), None
        else:
            c = 2 ** (wq.bit - 1)   # the grid's middle: 128 for 8 bits, 8 for 4 bits
            shifted, zero_shift = q - c, zero_f - c
        b = shifted.to(torch.int8)

        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        if self.kind == "weight_only":
            self._init_weight_only(b, scale, zero_shift)
            return
        if self.kind == "dequant":
            self.register_buffer("qweight", b.contiguous())                      # int8 [out, in]
            self.register_buffer("w_scale", scale.contiguous())                  # the quantizer's shape
            self.register_buffer("w_zero", None if zero_shift is None else zero_shift.contiguous())
            self.register_buffer("w_colterm", None)
            return

        self.register_buffer("w_scale", scale.reshape(1, -1).contiguous())       # [1, out] or [1, 1]
        if zero_shift is not None:
            zw = zero_shift.round().to(torch.int32).reshape(1, -1)
            self.register_buffer("w_zero", zw)                                   # z'_w [1, out] / [1, 1]
            col = b.to(torch.int32).sum(dim=1, dtype=torch.int32).reshape(1, -1) - self.in_features * zw
        else:
            self.register_buffer("w_zero", None)
            col = b.to(torch.int32).sum(dim=1, dtype=torch.int32).reshape(1, -1)
        self.register_buffer("w_colterm", col)                                   # sum_k b - K z'_w
        if packed_call:
            self.unpack = "call"
            self.register_buffer("qweight", pack_int4_signed(b))                 # uint8 [out, in / 2]
        else:
            # int8 [out, in]; weight_int8() is its [in, out] view: torch._int_mm on CPU is 5-7x faster with
            # this column-major right operand than with a contiguous [in, out] one (Qwen2.5-0.5B's shapes at
            # 128 tokens: gate_proj 1.24 vs 8.7 ms, down_proj 0.93 vs 6.9 ms)
            self.register_buffer("qweight", b.contiguous())
        self.set_backend(backend)

    def _init_weight_only(self, b: Tensor, scale: Tensor, zero_shift: Optional[Tensor]) -> None:
        """Buffers of the ``weight_only`` kernels from the shifted codes ``b`` (``w = s (b - z')``)."""
        self.register_buffer("w_colterm", None)
        if self.w_bit == 8:
            self.register_buffer("qweight", b.contiguous())                              # int8 [out, in]
            self.register_buffer("w_scale", scale.reshape(-1).expand(self.out_features).contiguous())
            self.register_buffer("w_zero", None if zero_shift is None else
                                 zero_shift.reshape(-1).expand(self.out_features).contiguous())   # z' [out]
            return
        g = self.weight_quantizer.group_size
        u = (b.to(torch.int32) + 8).contiguous()                                          # [0, 15]
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 1)
        self.int4_block_rows = int4pack_block(packed, u)      # this machine's layout; packed again at load
        self.register_buffer("qweight", packed)
        s_g = scale.reshape(self.out_features, self.in_features // g)                    # [out, groups]
        offset = torch.zeros_like(s_g) if zero_shift is None else -s_g * zero_shift.reshape(s_g.shape)
        self.register_buffer("w_scale", torch.stack((s_g.t(), offset.t()), dim=-1).contiguous())  # [groups, out, 2]
        self.register_buffer("w_zero", None)

    # ------------------------------------------------------------------------------ backends
    def onednn_applicable(self) -> bool:
        """oneDNN's kernel takes symmetric activations and weights without a zero-point correction."""
        return (self.kind == "int" and self.unpack == "load" and self.act_quantizer.symmetric
                and self.w_zero is None and self.w_scale.device.type == "cpu")

    def set_backend(self, backend: str = "auto") -> "IntLinear":
        """Choose the ``int`` kernel's backend (see the module docstring); re-packs the weight."""
        if self.kind != "int":
            return self
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        use = self.onednn_applicable() and onednn_available() if backend == "auto" else backend == "onednn"
        if use and not (self.onednn_applicable() and onednn_available()):
            raise ValueError("backend 'onednn' does not apply to this layer or is unavailable here")
        dense = self.weight_int8() if self.qweight is None else None     # [in, out], from oneDNN's packing
        if use:
            w_kn = self.weight_int8()
            self._w_packed = torch.ops.onednn.qlinear_prepack(w_kn.t().contiguous(), None)
            self.qweight = None     # one copy of the weight in memory: oneDNN's
            self._w_scale_vec = self.w_scale.float().reshape(-1).expand(self.out_features).contiguous()
            self._w_zp = torch.zeros(self.out_features, dtype=torch.int32)
            self.backend = "onednn"
        else:
            if dense is not None:
                self.qweight = dense.t().contiguous()
            self._w_packed = None
            self.backend = "int_mm"
        return self

    def __getstate__(self):
        # oneDNN's packed tensor cannot be copied or pickled: carry the plain int8 weight instead
        state = self.__dict__.copy()
        if state.get("_w_packed") is not None:
            buffers = dict(state["_buffers"])
            buffers["qweight"] = self._w_packed.to_dense().t().contiguous()   # [out, in]
            state["_buffers"] = buffers
            state["_w_packed"] = None
            state["_repack"] = True
        return state

    def __setstate__(self, state):
        repack = state.pop("_repack", False)
        super().__setstate__(state)
        if repack:
            self.set_backend("onednn")

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
                f"backend={self.backend}, w={self.w_bit}-bit {'sym' if self.w_symmetric else 'asym'} "
                f"{self.weight_quantizer.granularity}, act={act}, unpack={self.unpack}, "
                f"bias={self.bias is not None}")

    def weight_int8(self) -> Tensor:
        """Shifted weight codes ``b = q - c`` as int8 ``[in, out]`` (``int`` kernel)."""
        if self._w_packed is not None:
            return self._w_packed.to_dense()
        if self.unpack == "call":
            return unpack_int4_signed(self.qweight).t()
        return self.qweight.t()

    def dequantized_weight(self, dtype: Optional[torch.dtype] = None) -> Tensor:
        """``s_w (q_w - z_w)`` [out, in] in ``dtype`` (the fake-quant model's weight)."""
        dtype = dtype or self.dtype
        if self.kind == "weight_only":
            if self.w_bit == 8:    # in the target dtype directly: 0.4 ms for a 1536 x 576 weight in bfloat16
                w = self.qweight.to(dtype) * self.w_scale.to(dtype).reshape(-1, 1)
                return w if self.w_zero is None else w - (self.w_scale * self.w_zero).to(dtype).reshape(-1, 1)
            g = self.weight_quantizer.group_size
            u = unpack_int4pack_cpu(self.qweight, self.out_features, self.in_features,
                                    self.int4_block_rows).float() - 8
            scale, offset = (self.w_scale[..., i].t().repeat_interleave(g, dim=1) for i in (0, 1))
            return (u * scale + offset).to(dtype)
        if self.kind == "int":
            b = self.weight_int8().t().float()
            if self.w_zero is not None:
                b = b - self.w_zero.float().reshape(-1, 1)
            return (b * self.w_scale.float().reshape(-1, 1)).to(dtype)
        return self.weight_quantizer.dequantize(self.qweight, self.w_scale, self.w_zero, dtype=dtype)

    def storage_bytes(self) -> int:
        """Bytes this layer holds in memory (codes, oneDNN's packed weight, scales, zeros, bias)."""
        n = sum(t.numel() * t.element_size() for t in self.buffers(recurse=False))
        if self._w_packed is not None:
            n += self._w_packed.numel() * self._w_packed.element_size()
        return n

    # -------------------------------------------------------------------------------- forward
    def _act(self, x: Tensor, x2d: Tensor, shareable: bool, unsigned: bool):
        aq = self.act_quantizer
        if not (shareable and self.share_act_quant):
            return quantize_act_int8(x2d, aq, unsigned)
        key = (aq.bit, aq.symmetric, aq.granularity, aq.calib_algo, aq.eps, unsigned)
        hit = SHARED_ACT_CACHE.get(x, key)
        if hit is None:
            hit = quantize_act_int8(x2d, aq, unsigned)
            SHARED_ACT_CACHE.put(x, key, hit)
        return hit

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "dequant":
            return self._forward_dequant(x)
        if self.kind == "weight_only":
            return self._forward_weight_only(x)
        out_dtype = x.dtype
        shareable = self.input_transform is None and not self.act_quantizer.static
        if self.input_transform is not None:
            x = self.input_transform(x)
        shape = x.shape
        x2d = x.reshape(-1, shape[-1])
        if self._w_packed is not None:
            y = self._forward_onednn(x, x2d, shareable, out_dtype)
        else:
            y = self._forward_int_mm(x, x2d, shareable, out_dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def _forward_onednn(self, x, x2d, shareable, out_dtype):
        a, sx, _ = self._act(x, x2d, shareable, unsigned=True)
        direct = out_dtype in (torch.float32, torch.bfloat16)
        if sx.numel() == 1 and direct:       # one activation scale: everything inside the kernel
            return _onednn_linear(a, float(sx), self._w_packed, self._w_scale_vec, self._w_zp, self.bias,
                                  out_dtype)
        y = _onednn_linear(a, 1.0, self._w_packed, self._w_scale_vec, self._w_zp, None, torch.float32)
        kernels = _fused()
        if kernels is not None and direct:
            return kernels.rescale_rows(y, _rows(sx, y.shape[0], torch.float32), self.bias, out_dtype)
        out = torch.empty(y.shape, dtype=out_dtype if direct else torch.float32)
        if self.bias is not None:
            torch.addcmul(self.bias, y, sx, out=out)
        else:
            torch.mul(y, sx, out=out)
        return out if direct else out.to(out_dtype)

    def _forward_int_mm(self, x, x2d, shareable, out_dtype):
        a, sx, zx = self._act(x, x2d, shareable, unsigned=False)
        acc = int_mm(a, self.weight_int8())
        kernels = _fused()
        if kernels is not None and acc.device.type == "cpu" and out_dtype in (torch.float32, torch.bfloat16):
            m, n = acc.shape
            rowsum = None if self.w_zero is None else a.sum(dim=1, dtype=torch.int32)
            return kernels.int_epilogue_rows(
                acc.contiguous(), _rows(sx, m, torch.float32), None if zx is None else _rows(zx, m, torch.int32),
                self.w_colterm.reshape(-1), None if self.w_zero is None else _rows(self.w_zero, n, torch.int32),
                rowsum, _rows(self.w_scale, n, torch.float32), self.bias, out_dtype)
        if zx is not None or self.w_zero is not None:
            acc = self._zero_correction(acc, a, zx)
        y = acc.to(torch.float32)
        y.mul_(sx).mul_(self.w_scale)
        if self.bias is not None:
            y.add_(self.bias)
        return y.to(out_dtype)

    def _zero_correction(self, acc: Tensor, a: Tensor, zx: Optional[Tensor]) -> Tensor:
        """acc - z'_x (sum_k b - K z'_w) - z'_w sum_k a, in int64 where int32 could overflow."""
        wide = self.in_features * (128 * 128 + 255 * 383 + 128 * 255) >= 2 ** 31
        it = torch.int64 if wide else torch.int32
        out = acc.to(it)
        if zx is not None:
            out = out - zx.to(it) * self.w_colterm.to(it)
        if self.w_zero is not None:
            out = out - a.to(it).sum(dim=1, keepdim=True) * self.w_zero.to(it)
        return out

    def _scales_as(self, dtype: torch.dtype) -> Tensor:
        """``w_scale`` in the input's dtype, as the kernels take it (converted once per dtype, not per call)."""
        cached = getattr(self, "_scales_cast", None)
        if cached is None or cached.dtype != dtype or cached.device != self.w_scale.device:
            cached = self._scales_cast = self.w_scale.to(dtype)
        return cached

    def _weight_only_mm(self, x2d: Tensor) -> Tensor:
        """``x w^T`` [tokens, out] with the weight-only kernels, in x's dtype (float32 or bfloat16)."""
        if self.w_bit == 8:
            y = torch.ops.aten._weight_int8pack_mm(x2d, self.qweight, self._scales_as(x2d.dtype))
            if self.w_zero is not None:
                y = y - x2d.float().sum(dim=1, keepdim=True).mul(self.w_scale * self.w_zero).to(y.dtype)
            return y
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2d, self.qweight, self.weight_quantizer.group_size,
                                                          self._scales_as(x2d.dtype))

    def _forward_weight_only(self, x: Tensor) -> Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        shape, out_dtype = x.shape, x.dtype
        x2d = x.reshape(-1, shape[-1])
        if x2d.dtype not in (torch.float32, torch.bfloat16):
            x2d = x2d.float()
        bias = None if self.bias is None else self.bias.to(x2d.dtype)
        if self.w_bit == 8 and x2d.shape[0] > WEIGHT_ONLY_KERNEL_TOKENS:
            y = F.linear(x2d, self.dequantized_weight(x2d.dtype), bias)
        else:
            y = self._weight_only_mm(x2d.contiguous())
            if bias is not None:
                y = y + bias
        return y.to(out_dtype).reshape(*shape[:-1], self.out_features)

    def _forward_dequant(self, x: Tensor) -> Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        if self.act_quantizer is not None:
            x = self.act_quantizer.fake_quant(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)
