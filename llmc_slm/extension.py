"""Entry point of the ``llmc.extensions`` group (loaded by ``llmc.catalog``): declares what SLMQuant adds to
the engine by name, without importing it (torch-free): the embedded-model zoo, the accuracy tasks (each
task specification registers its data layout and a lazy evaluator, ``llmc_slm.tasks.spec``) and the Track 2
post-run hook."""

from llmc.registry import register_model_source, register_post_run_hook

from . import tasks  # noqa: F401  (registers every task specification)

register_model_source("llmc_slm.zoo:zoo_source")
register_post_run_hook("llmc_slm.tracks:track2_hook")
