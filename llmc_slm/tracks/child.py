"""The fresh measuring process that Track 2 (``inference``) and the interleaved timing (``speed_ab``) run
in, both sides of it.

Parent: :func:`run_module` spawns ``python -m <module> ... --out <tmp>/result.json`` with pinned threads
(:func:`child_env`), optionally the input token ids in ``--ids-file``, and returns the JSON the child wrote.
A failure is one line (:class:`ChildError`, the child's last stderr line), its whole stderr kept on the
exception. The result travels in a file, not on stdout, so that a library printing there cannot corrupt it.

Child: :func:`read_ids_file` reads the input, :func:`emit_json` writes the result.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional, Sequence

from llmc.errors import WorldError


class ChildError(WorldError, RuntimeError):
    """A measuring child that failed or timed out; ``stderr`` holds its error output."""

    def __init__(self, message: str, stderr: str = ""):
        super().__init__(message)
        self.stderr = stderr


def child_env(threads: int, extra: Optional[dict] = None) -> dict:
    """Environment of a measuring child process: its thread count, offline hub, no progress bars, and this
    project importable."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1",
                "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1")})
    env.update(extra or {})
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_module(module: str, args: Sequence[str], *, threads: int, input_ids=None,
               input_source: str = "given by the caller", timeout: Optional[float] = None, nice: int = 0,
               env: Optional[dict] = None, echo_stderr: bool = False, what: Optional[str] = None) -> dict:
    """Run ``python -m module *args --out FILE [--ids-file IDS]`` in a fresh process and return its JSON.

    ``input_ids`` (a [batch, seq_len] tensor) is handed over in ``--ids-file`` with ``input_source``;
    ``echo_stderr`` passes the child's progress lines through to this process's stderr as they come.
    Raises :class:`ChildError` (``<what> failed (exit N): <last stderr line>``) on failure or timeout."""
    what = what or module
    with tempfile.TemporaryDirectory(prefix="slmq_child_") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", module, *map(str, args), "--out", str(out)]
        if input_ids is not None:
            ids_file = Path(tmp) / "ids.json"
            ids_file.write_text(json.dumps({"input_ids": input_ids.tolist(), "source": input_source}))
            cmd += ["--ids-file", str(ids_file)]
        if nice:
            cmd = ["nice", "-n", str(nice)] + cmd
        proc = subprocess.Popen(cmd, env=child_env(threads, env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        tail: collections.deque = collections.deque(maxlen=200)
        reader = threading.Thread(target=_drain, args=(proc.stderr, tail, echo_stderr), daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            reader.join()
            raise ChildError(f"{what} timed out after {timeout:g} s", "".join(tail)) from None
        reader.join()
        stderr = "".join(tail)
        if rc != 0 or not out.is_file():
            last = next((line.strip() for line in reversed(tail) if line.strip()), "no error output")
            raise ChildError(f"{what} failed (exit {rc}): {last}", stderr)
        return json.loads(out.read_text())


def _drain(stream, tail: collections.deque, echo: bool) -> None:
    for line in stream:
        tail.append(line)
        if echo:
            sys.stderr.write(line)
            sys.stderr.flush()


def read_ids_file(path: str | Path) -> tuple[list, str]:
    """(input ids as nested lists, their source) from an ``--ids-file`` written by :func:`run_module`."""
    data = json.loads(Path(path).read_text())
    return data["input_ids"], data.get("source", "given by the caller")


def emit_json(result: dict, out: Optional[str]) -> None:
    """A child's result: written to ``out`` or printed."""
    text = json.dumps(result, indent=2, default=str)
    if out:
        Path(out).write_text(text)
    else:
        print(text)
