"""Entry point of the ``llmc.extensions`` group (loaded by ``llmc.catalog``): declares what SLMQuant adds to
the engine by name, without importing it (torch-free): the embedded-model zoo, the accuracy tasks (one
evaluator per task specification) and the Track 2 post-run hook."""

from llmc.registry import EVALUATOR_REGISTRY, register_model_source, register_post_run_hook

from .tasks import TASK_NAMES

register_model_source("llmc_slm.zoo:zoo_source")
for _name in TASK_NAMES:
    EVALUATOR_REGISTRY.declare(_name, "llmc_slm.harness:HarnessTask")
register_post_run_hook("llmc_slm.tracks:track2_hook")
