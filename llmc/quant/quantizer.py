"""Uniform integer quantizer: ranges, codes and fake quantization with a straight-through estimator.

Uniform affine quantization (Jacob et al., 2018, "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference"; Nagel et al., 2021, "A White Paper on Neural Network
Quantization", eq. 1-3)::

    x_q   = clamp(round(x / s) + z, q_min, q_max)        (the integer code)
    x_hat = s * (x_q - z)                                (its dequantized value)

Grids (the LLMC / QuaRot convention):

* symmetric, ``b`` bits: signed codes in ``[-2^(b-1), 2^(b-1) - 1]``, ``z = 0`` and
  ``s = absmax / (2^(b-1) - 1)``, so ``+-absmax`` map to ``+-q_max`` and the code ``-2^(b-1)`` is only
  reached by values below ``-absmax`` (clipped ranges).
* symmetric with ``sym_grid: gptq`` (the GPTQ paper's code, ``quant.py``: ``scale = (xmax - xmin) /
  maxq`` with ``xmin = -absmax`` and the zero point fixed at ``2^(b-1)``): the same signed codes, but
  ``s = 2 absmax / (2^b - 1)``, so all ``2^b`` levels are used: ``-absmax`` reaches ``-2^(b-1) s`` (up
  to rounding) and ``+absmax`` is clipped to ``(2^(b-1) - 1) s`` (half a step below it).
* asymmetric, ``b`` bits: unsigned codes in ``[0, 2^b - 1]``, ``s = (x_max - x_min) / (2^b - 1)`` and
  ``z = round(-x_min / s)``.  The range is widened to contain 0 (``x_min <= 0 <= x_max``) so that zero
  is exactly representable (Jacob et al., section 2.1) and ``z`` always lies in the grid.

Every value inside the range is reproduced within ``s / 2``.  A range of zero width (an all-zero row)
gets the floor ``s = eps`` and quantizes to exact zeros; nothing produces NaN.

Granularity.  The LAST dim of the tensor is the reduction (input) dim; one range is computed per:

==============  ====================================  =========================================
granularity     tensor                                scale / zero shape (``keepdim``)
==============  ====================================  =========================================
per_tensor      any                                   ``[1] * x.ndim``
per_channel     weight ``[out, in]``                  ``[out, 1]`` (one per output row)
per_token       activation ``[..., tokens, feat]``    ``[..., tokens, 1]`` (one per token)
per_group       weight ``[out, in]``                  ``[out, in // g, 1]``: broadcasts against
                                                      ``x.reshape(out, in // g, g)``
per_head        activation ``[..., tokens, H * d]``   ``[..., tokens, H, 1]``: broadcasts against
                                                      ``x.reshape(..., tokens, H, d)``
==============  ====================================  =========================================

``per_channel`` and ``per_token`` are the same computation (one range per row of the last dim); the two
names follow the config's vocabulary.  ``per_head`` expects the heads concatenated in the last dim (the
input of ``o_proj`` or the output of ``k_proj``/``v_proj``); for a ``[batch, heads, tokens, head_dim]``
tensor (HF's KV-cache layout) ``per_token`` already gives one range per token per head.
:meth:`Quantizer.group_view` gives the reshaped view the parameters broadcast against.

Range search (``calib_algo``):

* ``minmax``: the observed ``[min, max]`` (with 0 included) of each group.
* ``mse``: GPTQ's clipping grid (Frantar et al., 2023, ``find_params`` with ``mse=True``; LLMC's
  ``mse`` weight calibration uses the same defaults): the range ``[p * x_min, p * x_max]`` is tried for
  ``p = 1 - i / grid``, ``i = 0 .. int(maxshrink * grid) - 1``; with the defaults ``grid = 100``,
  ``maxshrink = 0.8`` that is the 80 factors 1.00, 0.99, ..., 0.21.  Each group keeps the factor with
  the least ``sum |x_hat - x| ** norm`` (``norm = 2.4``).  ``p = 1`` is a candidate, so the search is
  never worse than ``minmax`` in that error.
* ``learnable``: ``minmax`` ranges multiplied by clipping factors that the algorithm learns and passes
  in (OmniQuant's learnable weight clipping): ``clip_max``/``clip_min`` in ``(0, 1]``, broadcastable to
  the scale's shape, scale ``x_max`` and ``x_min``.  Any quantizer accepts them.

Static activation ranges (``static=True``, per_tensor only): :meth:`Quantizer.observe` keeps the running
min / max over calibration batches and :meth:`Quantizer.freeze` turns them into a fixed ``(scale,
zero)``.  Dynamic quantizers (the default) compute the range from each input.

Gradients (:meth:`Quantizer.fake_quant`): rounding uses the straight-through estimator
``round_ste(t) = (round(t) - t).detach() + t`` (Bengio et al., 2013), the clamp is torch's, so

* d x_hat / d x = 1 where the rounded code lies in the grid (inside the range, and up to half a step
  beyond it) and 0 where the code is clamped;
* d x_hat / d s = round(x/s) - x/s inside the grid and (q_clamped - z) where clamped (LSQ, Esser et al.,
  2020); the zero point is also rounded with the STE so gradients reach ``z`` and the clipping factors.
  When the range is computed from ``x`` itself (dynamic), gradients also flow to ``x`` through ``s`` and
  ``z``; pass detached ``scale``/``zero`` to get the pure identity STE.

Speed: where no gradient is needed, a dynamic min/max range per row (per_token / per_channel / per_group /
per_head) of a bfloat16 or float32 CPU tensor is fake-quantized by a fused C++ kernel
(``llmc.quant.cpu_kernels``, one pass in the input's dtype, the same float32 operations: bit-identical);
elsewhere, or when the kernels are unavailable or turned off (``SLMQUANT_FUSED_KERNELS=0``), by PyTorch ops.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..config import QuantizerConfig

__all__ = ["Quantizer", "round_ste", "GRANULARITIES"]

GRANULARITIES = ("per_tensor", "per_channel", "per_group", "per_token", "per_head")
CALIB_ALGOS = ("minmax", "mse", "learnable")


def _fused_kernels():
    """The fused CPU kernels (``llmc.quant.cpu_kernels``) or None (then PyTorch ops, the same values)."""
    from .cpu_kernels import fused_kernels
    return fused_kernels()


def round_ste(t: Tensor) -> Tensor:
    """``round(t)`` in the forward pass, identity in the backward pass (straight-through estimator)."""
    return (t.round() - t).detach() + t


class Quantizer(nn.Module):
    """A uniform integer quantizer of 2..8 bits (see the module docstring for the equations and shapes).

    Build it from a :class:`~llmc.config.QuantizerConfig` and/or keyword arguments (keywords override
    the config's fields)::

        Quantizer(QuantizerConfig(bit=4, symmetric=False, granularity="per_group", group_size=32))
        Quantizer(bit=8, granularity="per_token")
        Quantizer(cfg, granularity="per_head", head_dim=64)

    Args beyond the config: ``head_dim`` or ``n_heads`` (per_head), the mse grid (``mse_grid``,
    ``mse_maxshrink``, ``mse_norm``; GPTQ's defaults) and ``eps``, the smallest scale.

    It is an ``nn.Module`` without parameters so that the static observer's tensors follow ``.to()``;
    its buffers are not persistent (a model's ``state_dict`` keeps its original keys).
    """

    def __init__(self, config: Optional[QuantizerConfig] = None, *, bit: Optional[int] = None,
                 symmetric: Optional[bool] = None, granularity: Optional[str] = None,
                 group_size: Optional[int] = None, calib_algo: Optional[str] = None,
                 static: Optional[bool] = None, sym_grid: Optional[str] = None, head_dim: Optional[int] = None,
                 n_heads: Optional[int] = None, mse_grid: int = 100, mse_maxshrink: float = 0.8,
                 mse_norm: float = 2.4, eps: float = 1e-8):
        super().__init__()
        cfg = config if config is not None else QuantizerConfig()

        def pick(value, name):
            return getattr(cfg, name) if value is None else value

        self.bit = int(pick(bit, "bit"))
        self.symmetric = bool(pick(symmetric, "symmetric"))
        self.granularity = pick(granularity, "granularity")
        self.group_size = int(pick(group_size, "group_size"))
        self.calib_algo = pick(calib_algo, "calib_algo")
        self.static = bool(pick(static, "static"))
        self.sym_grid = pick(sym_grid, "sym_grid")
        self.head_dim = head_dim
        self.n_heads = n_heads
        self.mse_grid = int(mse_grid)
        self.mse_maxshrink = float(mse_maxshrink)
        self.mse_norm = float(mse_norm)
        self.eps = float(eps)

        if not 2 <= self.bit <= 8:
            raise ValueError(f"bit: {self.bit} is outside the supported range 2..8")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity: '{self.granularity}' is not one of {', '.join(GRANULARITIES)}")
        if self.calib_algo not in CALIB_ALGOS:
            raise ValueError(f"calib_algo: '{self.calib_algo}' is not one of {', '.join(CALIB_ALGOS)}")
        if self.granularity == "per_group" and self.group_size < 1:
            raise ValueError(f"group_size: per_group needs a positive group_size, got {self.group_size}")
        if self.granularity == "per_head":
            if (head_dim is None) == (n_heads is None):
                raise ValueError("per_head needs exactly one of head_dim and n_heads")
            if (head_dim or n_heads) < 1:
                raise ValueError("per_head: head_dim / n_heads must be positive")
        if self.sym_grid not in ("absmax", "gptq"):
            raise ValueError(f"sym_grid: '{self.sym_grid}' is not one of absmax, gptq")
        if self.static and self.granularity != "per_tensor":
            raise ValueError(f"static: static ranges are per_tensor only, got granularity '{self.granularity}'")
        if self.static and self.calib_algo == "mse":
            raise ValueError("static: calib_algo 'mse' is not supported with static=True "
                             "(the static range is the observed min/max)")
        if not (self.mse_grid >= 1 and 0.0 < self.mse_maxshrink <= 1.0 and self.mse_norm > 0):
            raise ValueError("mse_grid must be >= 1, mse_maxshrink in (0, 1], mse_norm > 0")

        if self.symmetric:
            self.qmin, self.qmax = -(2 ** (self.bit - 1)), 2 ** (self.bit - 1) - 1
        else:
            self.qmin, self.qmax = 0, 2 ** self.bit - 1
        # static observer state (None until observed / frozen)
        self.register_buffer("obs_min", None, persistent=False)
        self.register_buffer("obs_max", None, persistent=False)
        self.register_buffer("static_scale", None, persistent=False)
        self.register_buffer("static_zero", None, persistent=False)

    def extra_repr(self) -> str:
        s = (f"bit={self.bit}, symmetric={self.symmetric}, granularity={self.granularity}, "
             f"calib_algo={self.calib_algo}, static={self.static}")
        if self.granularity == "per_group":
            s += f", group_size={self.group_size}"
        if self.granularity == "per_head":
            s += f", head_dim={self.head_dim}" if self.head_dim else f", n_heads={self.n_heads}"
        if self.symmetric and self.sym_grid != "absmax":
            s += f", sym_grid={self.sym_grid}"
        return s

    @property
    def code_dtype(self) -> torch.dtype:
        """Dtype of the integer codes: int8 for the signed grid, uint8 for the unsigned one."""
        return torch.int8 if self.symmetric else torch.uint8

    # ------------------------------------------------------------------------------------ shapes
    def group_view(self, x: Tensor) -> Tensor:
        """``x`` reshaped so that each range covers the last dim (all dims for per_tensor).

        per_group: ``[..., in] -> [..., in // group_size, group_size]``; per_head:
        ``[..., H * d] -> [..., H, d]``; other granularities: ``x`` unchanged.
        """
        width = x.shape[-1]
        if self.granularity == "per_group":
            if width % self.group_size:
                raise ValueError(f"per_group: the input width {width} is not divisible by "
                                 f"group_size {self.group_size}")
            return x.reshape(*x.shape[:-1], width // self.group_size, self.group_size)
        if self.granularity == "per_head":
            if self.head_dim is not None:
                head_dim = self.head_dim
                if width % head_dim:
                    raise ValueError(f"per_head: the feature width {width} is not divisible by "
                                     f"head_dim {head_dim}")
            else:
                if width % self.n_heads:
                    raise ValueError(f"per_head: the feature width {width} is not divisible by "
                                     f"n_heads {self.n_heads}")
                head_dim = width // self.n_heads
            return x.reshape(*x.shape[:-1], width // head_dim, head_dim)
        return x

    def _reduce_dims(self, xg: Tensor) -> Tuple[int, ...]:
        return tuple(range(xg.dim())) if self.granularity == "per_tensor" else (-1,)

    # ------------------------------------------------------------------------------------ params
    def _params_from_range(self, xmin: Tensor, xmax: Tensor) -> Tuple[Tensor, Tensor]:
        """(scale, zero) for ranges with ``xmin <= 0 <= xmax`` (float32, differentiable)."""
        if self.symmetric:
            levels = (self.qmax - self.qmin) / 2 if self.sym_grid == "gptq" else self.qmax
            scale = (torch.maximum(-xmin, xmax) / levels).clamp(min=self.eps)
            zero = torch.zeros_like(scale)
        else:
            scale = ((xmax - xmin) / self.qmax).clamp(min=self.eps)
            zero = round_ste(-xmin / scale).clamp(self.qmin, self.qmax)
        return scale, zero

    def _range(self, xg: Tensor, clip_max: Optional[Tensor], clip_min: Optional[Tensor]):
        dims = self._reduce_dims(xg)
        xmin = xg.amin(dim=dims, keepdim=True).clamp(max=0)
        xmax = xg.amax(dim=dims, keepdim=True).clamp(min=0)
        if clip_min is None:
            clip_min = clip_max
        if clip_max is not None:
            xmax = xmax * clip_max.float()
            xmin = xmin * clip_min.float()
        return xmin, xmax

    def compute_params(self, x: Tensor, clip_max: Optional[Tensor] = None,
                       clip_min: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """(scale, zero) for ``x``, float32, shaped to broadcast against :meth:`group_view` of ``x``.

        ``clip_max``/``clip_min`` (``clip_min`` defaults to ``clip_max``) multiply the range's max and
        min; with them no mse search is done.  A frozen static quantizer returns its fixed params
        (0-dim tensors).  ``zero`` holds integer values (0 for symmetric) as float32.
        """
        if self.static:
            if self.static_scale is None:
                raise RuntimeError("static quantizer used before freeze(): call observe() on calibration "
                                   "inputs, then freeze()")
            return self.static_scale, self.static_zero
        xg = self.group_view(x.float())
        if self.calib_algo == "mse" and clip_max is None and clip_min is None:
            return self._mse_params(xg)
        return self._params_from_range(*self._range(xg, clip_max, clip_min))

    @torch.no_grad()
    def _mse_params(self, xg: Tensor) -> Tuple[Tensor, Tensor]:
        """GPTQ's shrink grid: keep, per range group, the factor with the least sum |x_hat - x|^norm.

        Works on the groups flattened to rows, a chunk of about 2^20 elements at a time, with in-place
        arithmetic (the same operations as :meth:`fake_quant`, so the kept error is the one it gives).
        """
        xmin, xmax = self._range(xg, None, None)
        rows = xg.reshape(1, -1) if self.granularity == "per_tensor" else xg.reshape(-1, xg.shape[-1])
        lo, hi = xmin.reshape(-1, 1), xmax.reshape(-1, 1)
        scale, zero = self._params_from_range(lo, hi)
        chunk = max(1, (1 << 20) // rows.shape[1])
        for r0 in range(0, rows.shape[0], chunk):
            x, l, h = rows[r0:r0 + chunk], lo[r0:r0 + chunk], hi[r0:r0 + chunk]
            best_err = best_scale = best_zero = None
            for i in range(int(self.mse_maxshrink * self.mse_grid)):
                p = 1.0 - i / self.mse_grid
                s, z = self._params_from_range(p * l, p * h)
                err = (x / s).round_().add_(z).clamp_(self.qmin, self.qmax).sub_(z).mul_(s)
                err = err.sub_(x).abs_().pow_(self.mse_norm).sum(dim=-1, keepdim=True)
                if best_err is None:
                    best_err, best_scale, best_zero = err, s, z
                    continue
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_scale = torch.where(better, s, best_scale)
                best_zero = torch.where(better, z, best_zero)
            scale[r0:r0 + chunk], zero[r0:r0 + chunk] = best_scale, best_zero
        return scale.reshape(xmin.shape), zero.reshape(xmin.shape)

    # ------------------------------------------------------------------------------------ static
    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """Static calibration: update the running min / max with one batch."""
        xmin, xmax = x.detach().float().amin(), x.detach().float().amax()
        if self.obs_min is None:
            self.obs_min, self.obs_max = xmin, xmax
        else:
            self.obs_min = torch.minimum(self.obs_min, xmin.to(self.obs_min.device))
            self.obs_max = torch.maximum(self.obs_max, xmax.to(self.obs_max.device))

    @torch.no_grad()
    def freeze(self) -> Tuple[Tensor, Tensor]:
        """Fix (scale, zero), 0-dim float32, from the observed range; later inputs use them (clipped)."""
        if not self.static:
            raise RuntimeError("freeze() is for static quantizers (static=True)")
        if self.obs_min is None:
            raise RuntimeError("freeze() before any observe(): no calibration range")
        self.static_scale, self.static_zero = self._params_from_range(self.obs_min.clamp(max=0),
                                                                      self.obs_max.clamp(min=0))
        return self.static_scale, self.static_zero

    def reset(self) -> None:
        """Forget the observed range and the frozen params."""
        self.obs_min = self.obs_max = self.static_scale = self.static_zero = None

    @property
    def frozen(self) -> bool:
        return self.static_scale is not None

    # ------------------------------------------------------------------------------ (de)quantize
    def _fake(self, xg: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
        q = torch.clamp(round_ste(xg / scale) + zero, self.qmin, self.qmax)
        return (q - zero) * scale

    def quantize(self, x: Tensor, scale: Optional[Tensor] = None, zero: Optional[Tensor] = None) -> Tensor:
        """Integer codes ``clamp(round(x / s) + z, q_min, q_max)`` of ``x``'s shape (:attr:`code_dtype`).

        Params are computed from ``x`` when not given; use :meth:`quantize_with_params` to get them too.
        """
        return self.quantize_with_params(x, scale, zero)[0]

    @torch.no_grad()
    def quantize_with_params(self, x: Tensor, scale: Optional[Tensor] = None,
                             zero: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """(codes, scale, zero) of ``x``; the codes have ``x``'s shape."""
        if scale is None:
            scale, zero = self.compute_params(x)
        scale, zero = self._as_params(scale, zero)
        xg = self.group_view(x.float())
        q = torch.clamp(torch.round(xg / scale) + zero, self.qmin, self.qmax)
        return q.reshape(x.shape).to(self.code_dtype), scale, zero

    def dequantize(self, codes: Tensor, scale: Tensor, zero: Optional[Tensor] = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
        """``s * (x_q - z)`` in ``dtype``, of the codes' shape."""
        scale, zero = self._as_params(scale, zero)
        qg = self.group_view(codes.float())
        return ((qg - zero) * scale).reshape(codes.shape).to(dtype)

    def fake_quant(self, x: Tensor, scale: Optional[Tensor] = None, zero: Optional[Tensor] = None,
                   clip_max: Optional[Tensor] = None, clip_min: Optional[Tensor] = None) -> Tensor:
        """``dequantize(quantize(x))`` in ``x``'s dtype, differentiable with the STE (module docstring).

        Computed in float32.  ``scale``/``zero`` given: used as they are (``zero`` defaults to 0);
        otherwise computed from ``x`` (with the optional clipping factors, see :meth:`compute_params`).
        """
        if scale is None and clip_max is None and clip_min is None:
            fused = self._fused_fake(x)
            if fused is not None:
                return fused
        if not torch.is_grad_enabled():
            return self._fake_no_grad(x, scale, zero, clip_max, clip_min)
        if scale is None:
            scale, zero = self.compute_params(x, clip_max, clip_min)
        scale, zero = self._as_params(scale, zero)
        out = self._fake(self.group_view(x.float()), scale, zero)
        return out.reshape(x.shape).to(x.dtype)

    def _fake_no_grad(self, x, scale, zero, clip_max, clip_min) -> Tensor:
        """The same values as the STE path, with in-place ops (inference: about half the memory passes)."""
        if scale is None:
            scale, zero = self.compute_params(x, clip_max, clip_min)
        scale, zero = self._as_params(scale, zero)
        xg = self.group_view(x.float())
        q = torch.div(xg, scale)
        q.round_().add_(zero).clamp_(self.qmin, self.qmax).sub_(zero).mul_(scale)
        return q.reshape(x.shape).to(x.dtype)

    forward = fake_quant

    def _fused_fake(self, x: Tensor) -> Optional[Tensor]:
        """The fused CPU kernel's result (``llmc.quant.cpu_kernels.fake_quant_rows``: one pass in ``x``'s
        dtype, bit-identical to the op path) where it applies, else None: a dynamic min/max range per row
        of :meth:`group_view` (per_token, per_channel, per_group, per_head), a bfloat16 / float32 CPU
        input, and no gradient to compute (grad mode off, or an input that does not require grad: the
        training paths keep the differentiable STE ops)."""
        if (self.static or self.calib_algo == "mse" or self.granularity == "per_tensor"
                or x.device.type != "cpu" or x.dtype not in (torch.bfloat16, torch.float32) or x.numel() == 0
                or (x.requires_grad and torch.is_grad_enabled())):
            return None
        kernels = _fused_kernels()
        if kernels is None:
            return None
        rows = self.group_view(x)
        levels = (self.qmax - self.qmin) / 2 if self.symmetric and self.sym_grid == "gptq" else self.qmax
        out = kernels.fake_quant_rows(rows.reshape(-1, rows.shape[-1]).contiguous(), float(levels),
                                      float(self.qmin), float(self.qmax), self.eps, self.symmetric)
        return out.reshape(x.shape)

    def _as_params(self, scale: Tensor, zero: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        scale = torch.as_tensor(scale).float()
        zero = torch.zeros_like(scale) if zero is None else torch.as_tensor(zero).float()
        return scale, zero
