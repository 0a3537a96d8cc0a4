"""The local executor: each cell a process on this machine, ``workers`` at a time (the sweep's default).

A thread per running cell waits on its process (``cell.run_cell``) and reports to the sweep through a
queue; the processes are in their own sessions, so a terminal's Ctrl-C reaches only the sweep, which
stops them with SIGTERM (SIGKILL after the grace period, or at once on a second Ctrl-C). A cell whose
process died of a signal nobody in the sweep sent (the out-of-memory killer) is started again up to
``retries`` times.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections import deque
from pathlib import Path

from . import Event
from .cell import Cell, Outcome, run_cell


class LocalExecutor:
    """Cells as local processes, at most ``workers`` at a time."""
    name = "local"

    def __init__(self, workers: int = 1, retries: int = 0, cpus_per_run: float | None = None):
        self.workers = max(1, int(workers))
        self.retries = retries
        self.cpus_per_run = cpus_per_run
        self._queue: deque[Cell] = deque()
        self._threads: dict[str, threading.Thread] = {}
        self._events: queue.Queue[Event] = queue.Queue()
        self._stop = 0

    def start(self, results: Path, cwd: Path, executable: str) -> None:
        """Nothing to check: this machine wrote the plan."""

    def describe(self) -> str:
        return f"local processes, {self.workers} at a time"

    def cell_env(self) -> dict[str, str]:
        """``--cpus-per-run`` threads per run, else (several workers, no OMP_NUM_THREADS set) the cores
        shared out between the workers."""
        if self.cpus_per_run is not None:
            return {"OMP_NUM_THREADS": str(max(1, math.ceil(self.cpus_per_run)))}
        if self.workers > 1 and "OMP_NUM_THREADS" not in os.environ:
            return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // self.workers))}
        return {}

    def submit(self, cell: Cell) -> None:
        self._queue.append(cell)
        self._fill()

    def _fill(self) -> None:
        while self._queue and len(self._threads) < self.workers and not self._stop:
            cell = self._queue.popleft()
            t = threading.Thread(target=self._work, args=(cell,), name=f"sweep {cell.name}", daemon=True)
            self._threads[cell.name] = t
            t.start()

    def _work(self, cell: Cell) -> None:
        def started(pid: int) -> None:
            self._events.put(Event("started", cell.name, pid=pid))

        attempts = 0
        while True:
            attempts += 1
            try:
                out = run_cell(cell, should_stop=lambda: self._stop, on_start=started)
            except Exception as e:   # the process could not start (OSError): a finished cell, not a hang
                out = Outcome(error=f"could not start: {type(e).__name__}: {e}")
            if not (out.killed and attempts <= self.retries and not self._stop):
                break
        out.attempts = attempts
        self._events.put(Event("finished", cell.name, outcome=out))

    def poll(self, timeout: float) -> list[Event]:
        events = []
        try:
            events.append(self._events.get(timeout=timeout))
            while True:
                events.append(self._events.get_nowait())
        except queue.Empty:
            pass
        for e in events:
            if e.kind == "finished":
                self._threads.pop(e.name).join()
        self._fill()
        return events

    def busy(self) -> int:
        return len(self._queue) + len(self._threads)

    def stop(self, force: bool = False) -> None:
        dropped = list(self._queue)
        self._queue.clear()
        for cell in dropped:
            self._events.put(Event("dropped", cell.name))
        self._stop = max(self._stop, 2 if force else 1)

    def close(self) -> None:
        if self._threads:
            self.stop(force=True)
        for t in list(self._threads.values()):
            t.join(timeout=60)
