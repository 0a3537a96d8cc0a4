"""A deadline for the whole test session: a pytest plugin, loaded by ``conftest.py``.

CI kills a run at 90 minutes and keeps only the tail of its output; a suite that hangs there leaves no trace
of where (it happened once, 2026-12-03, with nothing after pytest's command line). So the session gets its
own deadline, ``SLMQUANT_TEST_DEADLINE_S`` seconds (default 4,800: 80 minutes; 0 turns it off): when it
passes, the plugin prints one line naming the test that is running and how long it has run, then every
thread's Python stack (``faulthandler``), and ends the process with exit status 3, before CI's kill. Each
test's own limit is pytest-timeout's (``make test`` passes ``--timeout``), which fails that test and goes
on; this one catches what a per-test limit cannot (a hang between tests, in a fixture's teardown, or a
stuck signal handler).
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time

import pytest

DEFAULT_DEADLINE_S = 80 * 60
EXIT_STATUS = 3

_state = {"test": "(no test started)", "since": time.monotonic(), "timer": None, "config": None}


def deadline_seconds() -> float:
    raw = os.environ.get("SLMQUANT_TEST_DEADLINE_S", str(DEFAULT_DEADLINE_S))
    try:
        return float(raw)
    except ValueError:
        raise pytest.UsageError(f"SLMQUANT_TEST_DEADLINE_S={raw!r}: not a number of seconds") from None


def _expire(limit: float) -> None:
    capture = _state["config"].pluginmanager.getplugin("capturemanager") if _state["config"] else None
    if capture is not None:            # give fds 1 and 2 back to the terminal or CI's log: pytest's
        capture.suspend_global_capture(in_=True)   # capture file is lost with the process
    sys.stdout.flush()
    err = sys.__stderr__
    ran = time.monotonic() - _state["since"]
    err.write(f"\nerror: the test session passed its deadline of {limit:.0f} s (SLMQUANT_TEST_DEADLINE_S) "
              f"in {_state['test']}, running for {ran:.0f} s; every thread's stack follows\n")
    err.flush()
    faulthandler.dump_traceback(file=err, all_threads=True)
    err.flush()
    os._exit(EXIT_STATUS)


def pytest_sessionstart(session) -> None:
    _state["config"] = session.config
    limit = deadline_seconds()
    if limit > 0:
        timer = threading.Timer(limit, _expire, args=(limit,))
        timer.daemon = True
        timer.start()
        _state["timer"] = timer


def pytest_runtest_logstart(nodeid, location) -> None:
    _state["test"], _state["since"] = nodeid, time.monotonic()


def pytest_sessionfinish(session, exitstatus) -> None:
    if _state["timer"] is not None:
        _state["timer"].cancel()
