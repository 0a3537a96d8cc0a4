"""Entry point of the ``llmc.extensions`` group: registers the SLM zoo (and, as they land, the harness
tasks and tracks) with the engine's registries."""

from . import zoo  # noqa: F401
from . import harness  # noqa: F401
