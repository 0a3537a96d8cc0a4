"""Quantization algorithms, one module per method, registered in ``ALGO_REGISTRY`` by decorator."""

from . import gptq, rtn, smoothquant  # noqa: F401
