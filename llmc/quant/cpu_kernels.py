"""Fused CPU kernels for :class:`~llmc.quant.int_linear.IntLinear` (``csrc/act_int8.cpp``), compiled on
first use with PyTorch's C++ extension builder and cached.

What they replace, and why: around each int8 GEMM an ``IntLinear`` quantizes its input per token and
rescales the int32 / float32 result per token. In PyTorch ops that is a chain of element-wise passes
(copy to float32, max, min, divide, round, convert; multiply into bfloat16), and for Qwen2.5-0.5B's
layers at 1 x 128 tokens on the 2-core Sapphire Rapids VM (1 thread) the chain cost about as much time
as the int8 GEMMs saved against bfloat16 (down_proj's 128 x 4864 input: quantization 0.75-1.2 ms and
its GEMM 0.7 ms). The fused kernels make one pass per step:

* ``quantize_rows_sym(x, qmax, eps, unsigned)``: symmetric per-token int8 codes (or uint8 codes + 128,
  oneDNN's input) and scales of a bfloat16 or float32 ``[M, K]`` tensor, computed with the same float32
  operations as ``Quantizer.fake_quant`` (IEEE division, round-half-even): the codes and scales are
  identical (tests compare them bit for bit). 128 x 4864 bf16: 0.24 ms against 1.19 ms.
* ``rescale_rows(acc, s_x, bias, dtype)``: ``acc * s_x (+ bias)`` from float32 into bfloat16 / float32;
  without a bias bit-identical to the op path, with one the bias is added by a fused multiply-add (one
  rounding instead of two). 128 x 4864: 0.21 ms against 0.56 ms.
* ``quantize_rows_asym(x, qmax, eps, shift)`` and ``int_epilogue_rows(...)``: the same for asymmetric
  per-token activations (OmniQuant's and SpinQuant's configs) and for the ``torch._int_mm`` path with its
  exact integer zero-point corrections; bit-identical to the op path.
* ``fake_quant_rows(x, levels, qmin, qmax, eps, symmetric)``: the fake-quant model's quantize-dequantize
  (:meth:`Quantizer.fake_quant` with a dynamic min/max range per row: per token, per channel, per group
  or per head), one pass in the input's dtype instead of about ten (copy to float32 twice, min, max,
  divide, round, add, clamp, subtract, multiply, copy back); bit-identical to the op path (symmetric and
  asymmetric, bfloat16 and float32). Profile of SmolLM2-135M W8A8 at 1 x 2048 bf16, 2 threads (busy VM):
  the op chain took about 18 s per forward against 20 s for all the GEMMs, the fake-quant forward 2.0x the
  float one (``benchmarks/fake_quant_speed.py`` times it).

Building: the first call compiles the source with ``-O3 -march=native`` (about 35 s here; needs a C++
compiler and ninja) into ``$SLMQUANT_CACHE/kernels/<hash>`` (the hash covers the source, the flags, the
torch version and the CPU's feature flags, so another machine type builds its own), under a file lock;
later processes load it in about a second. If anything fails (no compiler, no ninja, a build error),
:func:`fused_kernels` returns None once and for all, says why in the log, and ``IntLinear`` keeps its
PyTorch-op path (the same results, slower), as does ``Quantizer.fake_quant``. ``SLMQUANT_FUSED_KERNELS=0``
turns the kernels off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger(__name__)

__all__ = ["fused_kernels", "fused_kernels_status", "SOURCE"]

SOURCE = Path(__file__).with_name("csrc") / "act_int8.cpp"
FUNCTIONS = ["quantize_rows_sym", "quantize_rows_asym", "rescale_rows", "int_epilogue_rows", "fake_quant_rows"]
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-ffinite-math-only",
          "-fno-signed-zeros", "-ffp-contract=off"]

_MODULE = None
_STATUS: Optional[str] = None     # None: not tried yet; "ok"; otherwise why the kernels are off


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build_dir(source: str) -> Path:
    from llmc.utils import cache_root
    key = hashlib.sha256("\n".join([source, " ".join(CFLAGS), torch.__version__, _cpu_flags()]).encode())
    return cache_root() / "kernels" / key.hexdigest()[:16]


def fused_kernels():
    """The compiled kernel module, or None where it is turned off or cannot be built (see the module
    docstring); the build is tried once per process."""
    global _MODULE, _STATUS
    if _STATUS is not None:
        return _MODULE
    if os.environ.get("SLMQUANT_FUSED_KERNELS", "1").lower() in ("0", "false", "no", "off"):
        _STATUS = "turned off by SLMQUANT_FUSED_KERNELS"
        return None
    try:
        from torch.utils.cpp_extension import load_inline
        source = SOURCE.read_text()
        build = _build_dir(source)
        build.mkdir(parents=True, exist_ok=True)
        if not (build / "slmq_act_int8.so").exists():
            log.info("building the fused int8 CPU kernels (first use on this machine, ~30 s) in %s", build)

        def load():
            return load_inline("slmq_act_int8", cpp_sources=[source], functions=FUNCTIONS, extra_cflags=CFLAGS,
                               build_directory=str(build), verbose=False)
        try:
            _MODULE = load()
        except Exception as exc:  # noqa: BLE001 - a cached build that no longer loads is rebuilt once
            if not (build / "slmq_act_int8.so").exists():
                raise
            log.warning("kernel cache %s is damaged (%s): rebuilding it", build, type(exc).__name__)
            shutil.rmtree(build, ignore_errors=True)
            build.mkdir(parents=True, exist_ok=True)
            _MODULE = load()
        _STATUS = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure: keep the PyTorch-op path
        _MODULE = None
        _STATUS = f"build failed: {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        log.warning("fused int8 CPU kernels unavailable (%s); IntLinear uses PyTorch ops (same results, slower)",
                    _STATUS)
    return _MODULE


def fused_kernels_status() -> str:
    """"ok", why the kernels are off, or "not tried"."""
    return _STATUS or "not tried"
