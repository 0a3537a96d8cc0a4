"""Wall time and peak memory of a stretch of work.

:class:`Measure` (Track 3 measures quantization with it): on CUDA the peak is the PyTorch allocator's
(``torch.cuda.max_memory_allocated``); on the CPU it is the process's peak resident set size *during* the
stretch, sampled by a background thread from ``/proc/self/statm`` (``ru_maxrss`` would include everything
before, such as model loading).

:class:`PeakMemory` (Track 2 measures inference with it, in a fresh process): on the CPU the kernel's own
peak (``VmHWM``), reset at the start after ``gc`` and ``malloc_trim`` so that freed loading buffers do not
count; where the reset is impossible it falls back to :class:`Measure`'s sampling.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

import torch

from .rss import peak_rss_bytes, release_free_memory, reset_peak_rss, rss_bytes  # noqa: F401 (re-exported)


class Measure:
    """``with Measure(device) as m: ...`` then ``m.seconds``, ``m.peak_bytes``, ``m.as_dict()``."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.02):
        self.device = torch.device(device)
        self.interval = interval
        self.seconds = 0.0
        self.peak_bytes = 0
        self.start_bytes = 0
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, rss_bytes())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self.start_bytes = self.peak_bytes = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, rss_bytes())
        self.seconds = time.perf_counter() - self._t0
        return False

    def as_dict(self) -> dict:
        kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_peak_rss"
        return {"time_s": self.seconds, "peak_mem_bytes": self.peak_bytes, "start_mem_bytes": self.start_bytes,
                "peak_mem_mb": self.peak_bytes / 2**20, "memory_kind": kind}


class PeakMemory:
    """``with PeakMemory(device) as m: <inference>`` then ``m.as_dict()``: ``peak_mem`` (bytes),
    ``memory_kind`` (``cuda_max_allocated``, ``cpu_peak_rss`` or ``cpu_rss_sampled``), ``mem_at_start``
    and, on the CPU, ``peak_mem_process`` (the whole process's peak, loading included: ``VmHWM`` before the
    reset, not ``ru_maxrss``, which Linux carries from a parent into a forked child) and ``memory_detail``."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak_bytes = self.start_bytes = self.process_peak = 0
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_peak_rss"
        self._sampler: Optional[Measure] = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            return self
        release_free_memory()
        self.start_bytes = rss_bytes()
        self.process_peak = peak_rss_bytes() or 0
        if not reset_peak_rss():
            self.kind = "cpu_rss_sampled"
            self._sampler = Measure("cpu", interval=0.005).__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self._sampler is not None:
            self._sampler.__exit__(None, None, None)
            self.peak_bytes = self._sampler.peak_bytes
        else:
            self.peak_bytes = peak_rss_bytes() or 0
        return False

    def as_dict(self) -> dict:
        out = {"peak_mem": int(self.peak_bytes), "memory_kind": self.kind, "mem_at_start": int(self.start_bytes)}
        if self.device.type == "cpu":
            out["peak_mem_process"] = max(self.process_peak, out["peak_mem"])
            out["memory_detail"] = ("RSS sampled every 5 ms during inference" if self._sampler is not None else
                                    "peak RSS (VmHWM) from the start of inference, after loading, gc and malloc_trim")
        return out
