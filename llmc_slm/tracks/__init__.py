"""SLMQuant's deployment tracks: Track 2 (inference performance, the ``inference`` section) and Track 3
(quantization consumption, ``quant_cost``). See shared/guide/protocol.md for the definitions.

- ``inference``: Track 2 of a checkpoint in a fresh process, and of a run (:func:`track2_hook`);
- ``loading`` / ``macs``: what the measuring child loads, and its MAC count;
- ``child``: the fresh-process launcher shared by ``inference`` and ``speed_ab``;
- ``speed_ab``: interleaved speed comparison of several checkpoints in one process;
- ``records``: the ``inference`` section, typed;
- ``quant_cost``: SLMQ_quant of typed results.
"""


def track2_hook(cfg, record, device, dtype) -> None:
    """Post-run hook (registered by ``llmc_slm.extension``): with ``eval.inference`` the run's packed
    checkpoint and its float baseline are profiled in fresh processes and written to the record."""
    if not cfg.eval.inference:
        return
    from llmc.paths import packed_dir

    from .inference import track2_for_run
    record.set_section("inference", track2_for_run(
        packed_dir(cfg), cfg.model.path, dtype=str(dtype).replace("torch.", ""), seed=cfg.base.seed,
        threads=cfg.eval.inference_threads, data_path=cfg.eval.path, device=device.type))
