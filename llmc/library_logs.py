"""Library loggers that speak while their package is imported, quieted by the entry points (torch-free)."""

from __future__ import annotations

import logging

# Loggers of libraries that warn while they are imported (not about the run): torchao, which ExecuTorch brings,
# reports each optional CUDA/cutlass kernel library it cannot load on a CPU machine, and its import makes torch's
# pytree warn about Enum registration. Left alone they print five lines before a run's one-line error.
IMPORT_NOISE_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_import_noise() -> None:
    """Raise :data:`IMPORT_NOISE_LOGGERS` to ERROR (entry points call this before any model loads)."""
    for name in IMPORT_NOISE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
