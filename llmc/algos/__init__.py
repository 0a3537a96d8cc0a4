"""Quantization algorithms, one module per method, registered in ``ALGO_REGISTRY`` by decorator."""

from . import gptq, omniquant, rtn, smoothquant, spinquant  # noqa: F401
