"""One cell of the grid as a worker runs it: the engine's process, its log, its time limit and its stop.

Standard library only: this is what a Ray worker imports to run a cell, and what a local thread runs.
The sweep that planned the cell keeps all the bookkeeping (results file, manifest, display); a worker only
starts the command in the sweep's working folder, appends its output to the log, and says how it ended.
"""

from __future__ import annotations

import datetime as _dt
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

POLL_S = 0.05


@dataclass(frozen=True)
class Cell:
    """What a worker needs to run one planned run (picklable; paths as strings, resolved by the sweep)."""
    name: str                    # <model>/<stem>, for messages
    command: list[str]
    log: str                     # absolute path of the run's log (appended to)
    result: str                  # absolute path of the results file the engine writes
    cwd: str                     # the sweep's working folder: relative paths in the command start here
    env: dict[str, str] = field(default_factory=dict)   # added to the worker's environment
    timeout: Optional[float] = None
    grace: float = 30.0          # seconds between SIGTERM and SIGKILL
    token: str = ""              # this submission's id, written in the log header of every attempt
    die_with_worker: bool = False   # SIGKILL the process when the worker that started it dies (Ray)


@dataclass
class Outcome:
    """How a cell's process ended (``returncode`` None when it never ran or its worker died first)."""
    returncode: Optional[int] = None
    seconds: float = 0.0
    timed_out: bool = False
    interrupted: bool = False
    node: Optional[str] = None   # where it ran ("<ip> <node id>" on Ray)
    pid: Optional[int] = None
    attempts: int = 1
    error: Optional[str] = None  # an executor-level failure (the worker or its node died), when no returncode

    @property
    def killed(self) -> bool:
        """The process died of a signal nobody in the sweep sent (the out-of-memory killer, a lost node):
        worth another attempt with ``--retries``."""
        rc = self.returncode
        return rc is not None and (rc < 0 or rc == 137) and not (self.timed_out or self.interrupted)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def header(cell: Cell, node: str | None = None) -> str:
    """The line each attempt writes at the top of its part of the log."""
    where = f" on {node}" if node else ""
    return f"=== {_now()} [{cell.token}]{where} {shlex.join(cell.command)}\n"


def attempts_in_log(cell: Cell) -> int:
    """How many attempts of this submission the log records (each wrote one header with its token); 0 when
    none started."""
    if not cell.token:
        return 0
    mark = f"[{cell.token}]"
    try:
        with open(cell.log, errors="replace") as f:
            return sum(line.startswith("=== ") and mark in line for line in f)
    except OSError:
        return 0


def _prctl():
    """libc's ``prctl``, loaded in the parent (never between fork and exec); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent(prctl) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when the worker that started it dies, so that
    a retried cell never has an orphan of its first attempt still writing its results."""
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(1, int(signal.SIGKILL))   # PR_SET_PDEATHSIG
    return preexec


def send(proc: subprocess.Popen, sig: int, group: bool = False) -> None:
    """Signal the child (or its whole process group); a child already gone is not an error."""
    try:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_cell(cell: Cell, should_stop: Callable[[], int] | None = None, node: str | None = None,
             on_start: Callable[[int], None] | None = None) -> Outcome:
    """Run the cell's command to its end and say how it ended.

    ``should_stop()`` returns 0 (go on), 1 (stop: SIGTERM, the engine records ``interrupted``; SIGKILL after
    ``grace`` s) or 2 (SIGKILL now). A ``KeyboardInterrupt`` raised in this thread (what ``ray.cancel`` does)
    stops the child the same way before it propagates. ``--timeout``: SIGTERM, then SIGKILL after ``grace``."""
    log = Path(cell.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    Path(cell.result).parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(cell.env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log, "a") as logf:
        logf.write(header(cell, node))
        logf.flush()
        t0 = time.monotonic()
        # its own session: a terminal's Ctrl-C reaches only the sweep, and SIGKILL reaches the child's helpers
        proc = subprocess.Popen(cell.command, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cell.cwd, start_new_session=True,
                                preexec_fn=_die_with_parent(_prctl()) if cell.die_with_worker else None)
        if on_start is not None:
            on_start(proc.pid)
        out = Outcome(node=node, pid=proc.pid)
        t_term = None
        try:
            while proc.poll() is None:
                now = time.monotonic()
                level = should_stop() if should_stop is not None else 0
                if level and not out.interrupted:
                    out.interrupted = True
                if t_term is None and (level or (cell.timeout and now - t0 > cell.timeout)):
                    out.timed_out = not level
                    t_term = now
                    send(proc, signal.SIGTERM)
                elif t_term is not None and (level >= 2 or now - t_term > cell.grace):
                    send(proc, signal.SIGKILL, group=True)
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            out.interrupted = True
            stop(proc, cell.grace)
            raise
        out.returncode = proc.returncode
        out.seconds = time.monotonic() - t0
        out.attempts = max(1, attempts_in_log(cell))
        return out


def stop(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the child, wait up to ``grace`` s, then SIGKILL its process group."""
    send(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        send(proc, signal.SIGKILL, group=True)
        proc.wait()
