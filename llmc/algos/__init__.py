"""Quantization algorithms, one module per method, registered in ``ALGO_REGISTRY``."""
