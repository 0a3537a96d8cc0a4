"""The sections SLMQuant's tracks add to a run's results record (``llmc.results``), typed.

``inference`` (Track 2, written by :func:`llmc_slm.tracks.track2_hook`)::

    {baseline: profile, compressed: profile, scores: {measured, paper_compatible, counted_macs: {slmq_infer,
     ratios, inputs}, memory_kind, peak_above_idle?: {baseline_bytes, compressed_bytes, ratio}, warning?},
     input: {source...}, protocol: {...}, notes: [...]}

a profile being the dict a measuring child returns (``llmc_slm.tracks.inference``: ``peak_mem``, ``size``,
``tps``, ``macs``, ``params_calflops``, ``idle_rss_bytes`` and ``peak_above_idle_bytes`` (the peak above the
process's footprint before loading, :mod:`llmc_slm.tracks.memory`; older results have it only as
``peak_mem_above_runtime``, or not at all)...). Track 3's ``quant_cost`` is the engine's
(:class:`llmc.results.QuantCost`). Torch-free: the reports read these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from llmc.results import RunResult, Section
from llmc_slm.scoring import infer_variants
from llmc_slm.tracks.memory import peak_above_idle


@dataclass
class InferenceSection(Section):
    """Track 2 of one run: the float baseline's and the compressed model's profiles and their scores."""
    baseline: dict = field(default_factory=dict)
    compressed: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    input: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, result: RunResult) -> Optional["InferenceSection"]:
        """The run's ``inference`` section, or None."""
        return cls.from_dict(result.section("inference"))

    def slmq_infer(self, variant: str) -> Optional[float]:
        """SLMQ_infer of one variant (``measured``, ``paper_compatible``...): the stored score, else computed
        from the two profiles (:func:`llmc_slm.scoring.infer_variants`); None when neither is possible."""
        stored = self.scores.get(variant)
        if isinstance(stored, dict) and isinstance(stored.get("slmq_infer"), (int, float)):
            return float(stored["slmq_infer"])
        computed = infer_variants(self.baseline, self.compressed, skip_invalid=True).get(variant)
        return computed["slmq_infer"] if computed else None

    def peak_above_idle(self, which: str = "compressed") -> Optional[int]:
        """Bytes of ``which`` profile's (``baseline`` / ``compressed``) peak above its idle footprint, or None
        for a result written before it was recorded."""
        return peak_above_idle(getattr(self, which))
