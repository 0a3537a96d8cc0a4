"""The test session's own deadline (tests/session_deadline.py): a hung suite ends itself, loudly, naming the
running test and showing every thread's stack, before CI's kill leaves no trace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_session(tmp_path, body: str, deadline: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_subject.py").write_text(body)
    env = dict(os.environ, SLMQUANT_TEST_DEADLINE_S=deadline, PYTHONPATH=str(HERE))
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "session_deadline", "-p", "no:cacheprovider",
                           "test_subject.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_hung_session_ends_at_its_deadline_naming_the_test_and_its_stack(tmp_path):
    body = "import time\n\ndef test_quick():\n    pass\n\ndef test_hangs():\n    time.sleep(600)\n"
    proc = run_session(tmp_path, body, "3")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("error:"))
    assert line.startswith("error: the test session passed its deadline of 3 s (SLMQUANT_TEST_DEADLINE_S) in "
                           "test_subject.py::test_hangs, running for "), line
    assert 'test_subject.py", line 7 in test_hangs' in proc.stderr      # the hung line, from faulthandler


def test_a_session_within_its_deadline_is_untouched(tmp_path):
    proc = run_session(tmp_path, "def test_quick():\n    pass\n", "30")
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "deadline" not in proc.stderr


def test_a_deadline_that_is_not_a_number_is_refused_in_one_line(tmp_path):
    proc = run_session(tmp_path, "def test_quick():\n    pass\n", "eighty minutes")
    assert proc.returncode != 0
    assert "SLMQUANT_TEST_DEADLINE_S='eighty minutes': not a number of seconds" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
