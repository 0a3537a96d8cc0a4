"""The process's resident memory from ``/proc`` (Linux), torch-free: its resident set now, its peak since
the start or since a reset (the kernel's ``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``), and
``gc`` + ``malloc_trim`` so that the resident set is what is live. Shared by :mod:`llmc.profiling` (Tracks
2 and 3 in torch) and ``llmc_slm.tracks.memory`` (the edge runtimes' children, which must not import
torch to measure themselves)."""

from __future__ import annotations

import ctypes
import gc
import os
import re
from pathlib import Path
from typing import Optional

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status_bytes(field: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in bytes; None where unreadable."""
    try:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def peak_rss_bytes() -> Optional[int]:
    """The process's peak resident set since it started or since :func:`reset_peak_rss` (``VmHWM``)."""
    return _status_bytes("VmHWM")


def release_free_memory() -> None:
    """gc, then hand freed heap memory back to the OS (glibc ``malloc_trim``) so that RSS is what is live."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``) of this process; False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return peak_rss_bytes() is not None
