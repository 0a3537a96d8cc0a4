"""Where the sweep's cells run: one interface, two executors.

- ``local`` (the default): each cell a process on this machine, ``--workers`` at a time
  (``llmc_slm/executors/local.py``);
- ``ray``: each cell a Ray task on a cluster (``--address``) or a Ray started for this sweep, with its
  resources declared (``--cpus-per-run``, ``--gpus-per-run``) and Ray's own retries of cells whose worker
  died (``llmc_slm/executors/ray.py``; Ray is the optional ``cluster`` extra).

Either way a cell is the same ``python -m llmc`` command run in the sweep's working folder
(``cell.run_cell``), so the results and logs land in the same layout and the sweep's bookkeeping
(``llmc_slm/sweep.py``: skip, resume, failures, manifest, display) does not depend on where it ran.

The sweep drives an executor as: ``start`` (checks: resources, the results folder seen by the workers),
``submit`` every cell, ``poll`` for ``started`` / ``finished`` / ``dropped`` events until ``busy`` is 0,
``stop`` on Ctrl-C (``force`` on a second one), ``close``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

from llmc.errors import UserError

from .cell import Cell, Outcome

EXECUTORS = ("local", "ray")


@dataclass
class Event:
    """Something that happened to a submitted cell: ``started`` (its process or task is launched),
    ``finished`` (with its ``outcome``) or ``dropped`` (stopped before it ever started)."""
    kind: str
    name: str
    pid: Optional[int] = None
    outcome: Optional[Outcome] = None


class Executor(Protocol):
    """What the sweep needs from a place that runs cells."""
    name: str
    workers: Optional[int]

    def start(self, results: Path, cwd: Path, executable: str) -> None:
        """Connect and check before any cell is submitted; a problem is a one-line ``UserError``."""

    def describe(self) -> str:
        """One line: where the cells run and how many at a time."""

    def cell_env(self) -> dict[str, str]:
        """Environment variables every cell's process gets (threads per run)."""

    def submit(self, cell: Cell) -> None:
        """Queue a cell; it starts when the concurrency limit and the resources allow."""

    def poll(self, timeout: float) -> list[Event]:
        """Wait up to ``timeout`` s for events and return them (possibly none)."""

    def busy(self) -> int:
        """Cells submitted and not yet finished or dropped."""

    def stop(self, force: bool = False) -> None:
        """Stop: queued cells are dropped, running ones get SIGTERM (their engine records ``interrupted``),
        or with ``force`` are killed at once."""

    def close(self) -> None:
        """Release what ``start`` acquired."""


def make_executor(kind: str = "local", *, workers: int | None = None, retries: int = 0,
                  cpus_per_run: float | None = None, gpus_per_run: float = 0.0,
                  address: str | None = None) -> Executor:
    """The executor named ``kind`` with the command line's settings; a setting it cannot honour is a
    one-line ``UserError``."""
    if kind not in EXECUTORS:
        raise UserError(f"--executor: {kind!r} is not one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise UserError("--workers: must be at least 1")
    if retries < 0:
        raise UserError("--retries: must be 0 or more")
    if cpus_per_run is not None and cpus_per_run <= 0:
        raise UserError("--cpus-per-run: must be more than 0")
    if gpus_per_run < 0:
        raise UserError("--gpus-per-run: must be 0 or more")
    if kind == "local":
        if address:
            raise UserError("--address: only with --executor ray")
        if gpus_per_run:
            raise UserError("--gpus-per-run: only with --executor ray (local runs use the GPUs they see)")
        from .local import LocalExecutor
        return LocalExecutor(workers=workers or 1, retries=retries, cpus_per_run=cpus_per_run)
    from .ray import RayExecutor
    return RayExecutor(address=address, workers=workers, retries=retries,
                       cpus_per_run=1.0 if cpus_per_run is None else cpus_per_run, gpus_per_run=gpus_per_run)


__all__ = ["Cell", "Outcome", "Event", "Executor", "EXECUTORS", "make_executor"]
