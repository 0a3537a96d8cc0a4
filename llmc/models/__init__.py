"""Model adapters (one Layout per family) and loading from directories, GGUF files, hub ids or the zoo."""

from .base import DecoderModel, Layout, Subset, SubsetSpec  # noqa: F401
from . import families  # noqa: F401  (registers the adapters)
