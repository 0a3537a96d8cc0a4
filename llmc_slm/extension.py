"""Entry point of the ``llmc.extensions`` group: registers the SLM zoo (and, as they land, the harness
tasks and tracks) with the engine's registries."""

from . import zoo  # noqa: F401
from . import harness  # noqa: F401

from llmc.registry import register_post_run_hook  # noqa: E402

from .tracks import track2_hook  # noqa: E402

register_post_run_hook(track2_hook)
