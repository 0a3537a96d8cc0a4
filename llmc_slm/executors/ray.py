"""The Ray executor: each cell a Ray task on a cluster (``--address``) or on a Ray started for the sweep.

Ray does the distributed part: each task declares its resources (``num_cpus``, ``num_gpus``: Ray places
it on a node that has them and sets ``CUDA_VISIBLE_DEVICES``), a task whose worker died (or whose engine
process was killed by a signal: ``CellKilled``) is retried by Ray (``max_retries``, ``retry_exceptions``),
``ray.wait`` reports the finished ones and ``ray.cancel`` stops them (a ``KeyboardInterrupt`` in the task,
which SIGTERMs the engine so that it records ``interrupted``; ``force`` on a second Ctrl-C).

What stays ours: the cell runs the same command in the same working folder as a local run (so results
and logs land in the same layout, on a filesystem every node mounts at the same path), and before any
cell is submitted the sweep refuses, in one line, a cluster that cannot run it: no node with the
resources a cell asks for (it would stay pending for ever), or workers that cannot see the results
folder (each node writes a probe file there, which this machine must then read back).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import uuid
from collections import deque
from pathlib import Path

from llmc.errors import UserError, WorldError

from . import Event
from .cell import Cell, Outcome, attempts_in_log, run_cell

PROBE_TIMEOUT_S = 120.0


class CellKilled(Exception):
    """Raised in a task whose engine process died of a signal nobody in the sweep sent: Ray retries it
    (``retry_exceptions``); after the last attempt the sweep reads the outcome it carries."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome)
        self.outcome = outcome

    def __str__(self) -> str:
        return f"the cell's process was killed (return code {self.outcome.returncode})"


def node_label() -> str:
    """``<ip> <node id>`` of the node this task runs on (the first 12 hex digits of the id)."""
    import ray
    return f"{ray.util.get_node_ip_address()} {ray.get_runtime_context().get_node_id()[:12]}"


def ray_cell(cell: Cell) -> Outcome:
    """The task: run the cell on this node; a killed engine raises ``CellKilled`` so that Ray retries it."""
    out = run_cell(cell, node=node_label())
    if out.killed:
        raise CellKilled(out)
    return out


def probe_worker(results: str, cwd: str, executable: str, token: str) -> dict:
    """On one node: check the working folder and the engine's executable exist, and write the probe file
    ``<results>/.probe-<token>-<node id>`` holding the node id (never creating the folder: a folder that
    is not shared must stay missing there). Returns the node, the file and the problems found."""
    import ray
    node_id = ray.get_runtime_context().get_node_id()
    report = {"node": node_label(), "node_id": node_id, "file": None, "problems": []}
    if not os.path.isdir(cwd):
        report["problems"].append(f"the working folder {cwd} does not exist there")
    if os.path.isabs(executable) and not os.access(executable, os.X_OK):
        report["problems"].append(f"the engine's interpreter {executable} is not there")
    path = os.path.join(results, f".probe-{token}-{node_id[:12]}")
    try:
        with open(path, "w") as f:
            f.write(node_id)
        report["file"] = path
    except OSError as e:
        report["problems"].append(f"cannot write in the results folder {results} ({e.strerror or e})")
    return report


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray: Ray is not installed (pip install -e '.[cluster]')") from None
    return ray


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class RayExecutor:
    """Cells as Ray tasks with declared resources, at most ``workers`` in flight (None: as many as the
    cluster's resources run at once), each started at most ``retries + 1`` times."""
    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, retries: int = 0,
                 cpus_per_run: float = 1.0, gpus_per_run: float = 0.0, init_kwargs: dict | None = None):
        self.address = address
        self.workers = workers
        self.retries = retries
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run
        self.init_kwargs = init_kwargs or {}
        self._ray = None
        self._owned = False          # this executor started Ray (or connected): it shuts it down
        self._task = None
        self._queue: deque[Cell] = deque()
        self._inflight: dict = {}    # ObjectRef -> Cell
        self._stopped = False
        self._nodes: list[dict] = []

    # ------------------------------------------------------------------ start: connect, check, probe
    def start(self, results: Path, cwd: Path, executable: str) -> None:
        ray = self._ray = _import_ray()
        if not ray.is_initialized():
            where = f"--address {self.address}" if self.address else "a local Ray"
            kwargs = dict(address=self.address, include_dashboard=False, log_to_driver=False,
                          logging_level=logging.WARNING, configure_logging=False)
            kwargs.update(self.init_kwargs)
            try:
                ray.init(**kwargs)
            except Exception as e:   # Ray raises bare Exception when its node fails to start in time
                if self.address:     # most likely a wrong address (or the cluster's auth token missing here)
                    raise UserError(f"{where}: cannot reach a Ray cluster there ({_first_line(e)})") from None
                raise WorldError(f"{where}: Ray did not start ({_first_line(e)})") from None
            self._owned = True
        self._nodes = [n for n in ray.nodes() if n.get("Alive")]
        self._check_resources()
        self._probe(Path(results).resolve(), Path(cwd).resolve(), executable)
        self._task = ray.remote(ray_cell)

    def _where(self) -> str:
        return f"the Ray cluster at {self.address}" if self.address else "the local Ray"

    def _check_resources(self) -> None:
        """Refuse, before anything is submitted, a cell that no node can ever run (Ray would keep it
        pending for ever)."""
        cpus, gpus = self.cpus_per_run, self.gpus_per_run

        def has(n, key, amount):
            return n.get("Resources", {}).get(key, 0.0) >= amount

        if any(has(n, "CPU", cpus) and has(n, "GPU", gpus) for n in self._nodes):
            return
        nodes = "; ".join(f"{n.get('NodeManagerAddress', '?')}: {n.get('Resources', {}).get('CPU', 0):g} CPU, "
                          f"{n.get('Resources', {}).get('GPU', 0):g} GPU" for n in self._nodes) or "none alive"
        if gpus and not any(has(n, "GPU", gpus) for n in self._nodes):
            raise UserError(f"--gpus-per-run {gpus:g}: no node of {self._where()} has {gpus:g} GPU "
                            f"(nodes: {nodes}); ask for --gpus-per-run 0 or add GPU nodes")
        raise UserError(f"--cpus-per-run {cpus:g} --gpus-per-run {gpus:g}: no node of {self._where()} has "
                        f"that much (nodes: {nodes})")

    def _probe(self, results: Path, cwd: Path, executable: str) -> None:
        """One probe task on every alive node writes a file in the results folder; each file must be seen
        here with the node's id in it, else the address is refused."""
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        token = uuid.uuid4().hex[:8]
        probe = ray.remote(probe_worker)
        refs = [probe.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
                    n["NodeID"], soft=False)).remote(str(results), str(cwd), executable, token)
                for n in self._nodes]
        try:
            reports = ray.get(refs, timeout=PROBE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise UserError(f"{self._where()}: its workers did not answer the probe in {PROBE_TIMEOUT_S:g} s") \
                from None
        except ray.exceptions.RayError as e:
            raise UserError(f"{self._where()}: its workers cannot run the sweep's tasks ({_first_line(e)}); "
                            f"install the project on every node: pip install -e '.[cluster]'") from None
        problems = []
        for rep in reports:
            seen = None
            if rep["file"]:
                try:
                    seen = Path(rep["file"]).read_text()
                except OSError:
                    seen = None
                if seen == rep["node_id"]:
                    Path(rep["file"]).unlink(missing_ok=True)
                else:
                    rep["problems"].append(f"it cannot see the results folder {results} (its probe file "
                                           f"never appeared here)")
            problems += [f"node {rep['node']}: {p}" for p in rep["problems"]]
        if problems:
            raise UserError(f"{self._where()}: {problems[0]}"
                            f"{f' (+{len(problems) - 1} more)' if len(problems) > 1 else ''}; results must be "
                            f"in a folder every node mounts at the same path")

    def describe(self) -> str:
        cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in self._nodes)
        gpus = sum(n.get("Resources", {}).get("GPU", 0) for n in self._nodes)
        limit = f"at most {self.workers} at a time" if self.workers else "as many at a time as fit"
        per = f"{self.cpus_per_run:g} CPU" + (f" + {self.gpus_per_run:g} GPU" if self.gpus_per_run else "")
        return (f"Ray: {self._where()}, {len(self._nodes)} node(s), {cpus:g} CPU, {gpus:g} GPU; {per} per run, "
                f"{limit}, {self.retries} retr{'y' if self.retries == 1 else 'ies'}")

    def cell_env(self) -> dict[str, str]:
        return {"OMP_NUM_THREADS": str(max(1, math.ceil(self.cpus_per_run)))}

    # ------------------------------------------------------------------ running
    def submit(self, cell: Cell) -> None:
        self._queue.append(cell)

    def _fill(self) -> list[Event]:
        events = []
        while self._queue and not self._stopped and (self.workers is None or len(self._inflight) < self.workers):
            cell = self._queue.popleft()
            cell = dataclasses.replace(cell, die_with_worker=True)
            ref = self._task.options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                     max_retries=self.retries, retry_exceptions=[CellKilled],
                                     name=f"slmquant {cell.name}").remote(cell)
            self._inflight[ref] = cell
            events.append(Event("started", cell.name))
        return events

    def poll(self, timeout: float) -> list[Event]:
        events = self._fill()
        if not self._inflight:
            if not events:
                time.sleep(timeout)
            return events
        ray = self._ray
        ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(self._inflight), num_returns=len(self._inflight), timeout=0)
        for ref in ready:
            cell = self._inflight.pop(ref)
            out = self._outcome(ref, cell)
            events.append(Event("dropped", cell.name) if out is None else Event("finished", cell.name, outcome=out))
        return events + self._fill()

    def _outcome(self, ref, cell: Cell) -> Outcome | None:
        """The task's outcome, or one made from how it failed; None for a task cancelled before it began."""
        ray = self._ray
        try:
            return ray.get(ref)
        except CellKilled as e:
            return getattr(e, "cause", e).outcome
        except ray.exceptions.TaskCancelledError:
            return Outcome(interrupted=True, attempts=attempts_in_log(cell)) if attempts_in_log(cell) else None
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None) or e
            return Outcome(error=f"its Ray task failed ({_first_line(cause)})",
                           attempts=max(1, attempts_in_log(cell)))
        except ray.exceptions.RayError as e:   # the worker or its node died, and so did every retry
            n = attempts_in_log(cell)
            if self._stopped:
                return Outcome(interrupted=True, attempts=n) if n else None
            return Outcome(error=f"its Ray worker died ({type(e).__name__})", attempts=max(1, n))

    def busy(self) -> int:
        return len(self._queue) + len(self._inflight)

    def stop(self, force: bool = False) -> None:
        self._stopped = True
        self._queue.clear()
        for ref in list(self._inflight):
            try:
                self._ray.cancel(ref, force=force)
            except Exception:   # already finished, or its worker already gone
                pass

    def close(self) -> None:
        if self._owned and self._ray is not None and self._ray.is_initialized():
            self._ray.shutdown()
        self._owned = False
