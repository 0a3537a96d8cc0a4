"""Entry point of the ``llmc.extensions`` group: registers the SLM zoo, the harness tasks (their names
and lazy evaluator entries: lm-eval is imported only when a task is evaluated) and the tracks with the
engine's registries."""

from . import zoo  # noqa: F401
from . import tasks  # noqa: F401

from llmc.registry import register_post_run_hook  # noqa: E402

from .tracks import track2_hook  # noqa: E402

register_post_run_hook(track2_hook)
