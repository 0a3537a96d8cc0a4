"""What the report command lines share: a user mistake (a missing folder, no results, an unwritable output)
is one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import sys
from typing import Callable

from .collect import ReportError


def run_reporting(action: Callable[[], int]) -> int:
    """``action()``'s exit status, or 2 after printing ``error: ...`` for a ReportError or OSError."""
    try:
        return action()
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
    return 2
