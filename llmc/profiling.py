"""Wall time and peak memory of a stretch of work (Track 3 measures quantization with it).

On CUDA the peak is the PyTorch allocator's (``torch.cuda.max_memory_allocated``); on the CPU it is the
process's peak resident set size *during* the stretch, sampled by a background thread from
``/proc/self/statm`` (``ru_maxrss`` would include everything before, such as model loading).
"""

from __future__ import annotations

import os
import threading
import time

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
