"""Resident memory of a measuring child, torch-free: its idle footprint and its peak above it.

Every edge runtime's child (:mod:`llmc_slm.tracks.runtimes`) runs in a fresh process and reports these four
figures (the torch child, :mod:`llmc_slm.tracks.inference`, measures the same way with
``llmc.profiling.PeakMemory`` and reports the first three under its own names):

* ``idle_rss_bytes``: the process's resident set after its imports (Python, the runtime's library, and
  whatever the runtime builds before it sees weights), ``gc`` and ``malloc_trim``, before the model loads;
* ``peak_rss_bytes``: the peak resident set during inference (the kernel's ``VmHWM``, reset after loading
  by writing 5 to ``/proc/self/clear_refs``, after ``gc`` and ``malloc_trim`` so that freed loading buffers
  do not count); where the reset is impossible, RSS sampled every 5 ms by a thread;
* ``peak_above_idle_bytes``: the difference, i.e. resident weights + activations + caches, without the
  runtime's own footprint. On a CPU this is the figure that compares with the GPU allocator's peak the
  paper reports (which counts tensors, not the CUDA context), and the one whose ratio to a float model says
  how much memory quantization saved (the whole-process peak hides it: a ~0.4 GB torch runtime under a
  0.26 GB model);
* ``peak_process_bytes``: the whole process's peak, loading included (``VmHWM`` before the reset).

Use::

    probe = Footprint()      # after the imports
    probe.idle()             # before loading
    ... load ...
    with probe.inference():  # resets the peak
        ... prefill, decode ...
    probe.as_dict()

This module imports nothing but the standard library and :mod:`llmc.rss` (torch-free), so that a runtime's
child does not pay torch's ~0.3 GB just to measure itself.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Optional

from llmc.rss import peak_rss_bytes, release_free_memory, reset_peak_rss, rss_bytes  # noqa: F401 (re-exported)

MEMORY_KIND = "cpu_peak_rss"
SAMPLED_KIND = "cpu_rss_sampled"


class Footprint:
    """The idle footprint and the inference peak of this process (module docstring)."""

    def __init__(self):
        self.idle_bytes: Optional[int] = None
        self.peak_bytes: Optional[int] = None
        self.process_peak: Optional[int] = None
        self.kind = MEMORY_KIND

    def idle(self) -> int:
        """Record the idle footprint (call after the imports, before loading the model)."""
        release_free_memory()
        self.idle_bytes = rss_bytes()
        return self.idle_bytes

    @contextmanager
    def inference(self):
        """The peak resident set of the ``with`` body (reset at its start, after gc and malloc_trim)."""
        release_free_memory()
        self.process_peak = peak_rss_bytes() or rss_bytes()
        stop, samples = threading.Event(), [rss_bytes()]
        sampler = None
        if not reset_peak_rss():
            self.kind = SAMPLED_KIND

            def sample():
                while not stop.wait(0.005):
                    samples[0] = max(samples[0], rss_bytes())
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        try:
            yield self
        finally:
            if sampler is not None:
                stop.set()
                sampler.join()
                self.peak_bytes = max(samples[0], rss_bytes())
            else:
                self.peak_bytes = peak_rss_bytes() or rss_bytes()
            self.process_peak = max(self.process_peak or 0, self.peak_bytes)

    def as_dict(self) -> dict:
        above = (self.peak_bytes - self.idle_bytes
                 if self.peak_bytes is not None and self.idle_bytes is not None else None)
        return {"idle_rss_bytes": self.idle_bytes, "peak_rss_bytes": self.peak_bytes,
                "peak_above_idle_bytes": above, "peak_process_bytes": self.process_peak,
                "memory_kind": self.kind}


def peak_above_idle(profile: dict) -> Optional[int]:
    """The peak above the idle footprint of a Track 2 profile, whichever child wrote it: the runtimes'
    ``peak_above_idle_bytes``, or the torch child's ``peak_mem_above_runtime`` (its name before the runtimes
    existed); None for an older result that has neither."""
    for key in ("peak_above_idle_bytes", "peak_mem_above_runtime"):
        value = profile.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
    return None
