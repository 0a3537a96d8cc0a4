"""Evaluators by data-set name (``llmc.registry.EVALUATOR_REGISTRY``). The engine provides WikiText-2
perplexity; extensions register more (``llmc_slm`` declares the lm-evaluation-harness tasks) with
``register_evaluator`` or a lazy ``EVALUATOR_REGISTRY.declare(name, "module:Class")``.

An evaluator is built from the config before the model is loaded (so missing data fails fast) and then
``run(adapter)`` returns a dict of metrics. An evaluator with ``uses_reference = True`` is called as
``run(adapter, reference=...)`` at a quantized position when the run keeps the float model
(``llmc.eval.reference``, ``eval.paired``). A ``per_item`` entry of the result (the outcome of every item
or window) is moved by the pipeline into the run's items file (``llmc.results.RunRecord.set_items``). An evaluator that reports one headline number also returns
``table_metric`` (its name), ``table_value``, ``table_stderr`` and ``n``: what the run summary prints.
"""

from __future__ import annotations

from pathlib import Path

from .config import Config
from .data.sources import find_dataset
from .data.wikitext2 import evaluation_text
from .errors import ConfigError
from .eval.perplexity import perplexity, window_ids
from .registry import EVALUATOR_REGISTRY, register_evaluator
from .utils import progress_disabled


REFERENCE_CACHE = ".reference_cache"    # under save.save_path (eval.reference_cache)


@register_evaluator("wikitext2")
class WikiText2Perplexity:
    """Perplexity on the raw WikiText-2 test split, seq_len windows (protocol.md). Given the float
    ``reference`` (``llmc.eval.reference``, at a quantized position with ``eval.paired``), also the KL
    divergence from it, top-1 agreement and the paired log-perplexity difference (``vs_float``). With
    ``eval.reference_cache`` the reference's final hidden states are kept in ``<save.save_path>/.reference_cache``
    for the next run of the same model and windows (``llmc.eval.reference_cache``), and with
    ``eval.reference_summary`` a summary of its distributions that spares float32 runs its output layer
    (``llmc.eval.reference_summary``)."""

    uses_reference = True

    def __init__(self, name: str, cfg: Config):
        self.cfg = cfg
        self.location = find_dataset("wikitext2", cfg.eval.path, key="eval.path", download=cfg.eval.download)
        self.text = evaluation_text(self.location)
        self._windows = None

    def describe(self) -> dict:
        return self.location.describe()

    def run(self, adapter, reference=None) -> dict:
        if self._windows is None:  # tokenized once per run, reused at every eval position
            ids = adapter.tokenizer(self.text, return_tensors="pt").input_ids[0]
            self._windows = window_ids(ids, self.cfg.eval.seq_len)
        limit = self.cfg.eval.limit
        windows = self._windows[:limit] if limit else self._windows
        if reference is None:
            result = perplexity(adapter.model, windows, bs=self.cfg.eval.bs, progress=not progress_disabled())
        else:
            with reference.on(next(adapter.model.parameters()).device) as ref:
                cache = Path(self.cfg.save.save_path) / REFERENCE_CACHE if self.cfg.eval.reference_cache else None
                result = perplexity(adapter.model, windows, bs=self.cfg.eval.bs, progress=not progress_disabled(),
                                    reference=ref, reference_cache=cache,
                                    reference_summary=self.cfg.eval.reference_summary)
            result["vs_float"]["reference"] = reference.description
        result["limit"] = limit if limit and limit < self._windows.shape[0] else None
        result["windows_in_split"] = int(self._windows.shape[0])
        return result


def make_evaluators(cfg: Config) -> dict:
    """One evaluator per ``eval.name``, built now (each finds its data: a missing file fails here)."""
    from . import catalog
    catalog.load()
    out = {}
    for name in cfg.eval.name:
        if name not in EVALUATOR_REGISTRY:
            raise ConfigError(f"eval.name: no evaluator for '{name}' is installed (available: "
                              f"{', '.join(EVALUATOR_REGISTRY)})")
        out[name] = EVALUATOR_REGISTRY[name](name, cfg)
    return out
