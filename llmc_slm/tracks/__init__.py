"""SLMQuant's deployment tracks: Track 2 (inference performance, ``inference``) and Track 3 (quantization
consumption, ``quant_cost``). See shared/guide/protocol.md for the definitions."""


def track2_hook(cfg, record, device, dtype) -> None:
    """Post-run hook (registered by ``llmc_slm.extension``): with ``eval.inference`` the run's packed
    checkpoint and its float baseline are profiled in fresh processes and written to the record."""
    if not cfg.eval.inference:
        return
    from llmc.paths import packed_dir

    from .inference import track2_for_run
    record.data["inference"] = track2_for_run(
        packed_dir(cfg), cfg.model.path, dtype=str(dtype).replace("torch.", ""), seed=cfg.base.seed,
        threads=cfg.eval.inference_threads, data_path=cfg.eval.path, device=device.type)
    record.save()
