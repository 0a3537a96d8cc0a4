"""Progress of a run's long loops, shown twice: as a tqdm bar for a person at a terminal, and as the
record's ``progress`` field for whoever watches a run that has no terminal (``--quiet``, a sweep's child,
a Ray worker): ``{"what": "OmniQuant blocks", "done": 14, "total": 18, "updated": ...}`` beside its
``stage``.

The loops that take minutes report here: a blockwise method's blocks (``llmc.algos.base``), SpinQuant's
learning steps (``llmc.algos.spinquant``), WikiText-2's windows (``llmc.eval.perplexity``) and a task's
loglikelihood requests (``llmc_slm.backend``). The pipeline points the reports at its record with
:func:`listen`; :meth:`llmc.results.RunRecord.stage` clears the field when the next stage starts. Writes are throttled (``min_interval`` seconds, default 20, and the
last step), so a record is rewritten a few times a minute at most, whatever the loop's pace.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterable, Iterator, Optional

from tqdm.auto import tqdm

from .utils import progress_disabled

Listener = Callable[[str, int, Optional[int]], None]

_listener: Optional[Listener] = None
_min_interval = 20.0


@contextlib.contextmanager
def listen(listener: Listener, min_interval: float = 20.0) -> Iterator[None]:
    """Send every bar's position to ``listener(what, done, total)`` (at most once per ``min_interval``
    seconds per bar, and at its last step) while the block runs."""
    global _listener, _min_interval
    saved = _listener, _min_interval
    _listener, _min_interval = listener, min_interval
    try:
        yield
    finally:
        _listener, _min_interval = saved


class Bar:
    """A tqdm bar (off with ``--quiet`` or ``disable``) whose position also goes to the listener, if any."""

    def __init__(self, total: Optional[int], desc: str, disable: bool = False, **tqdm_kwargs):
        self.total, self.desc, self.done = total, desc, 0
        tqdm_kwargs.setdefault("leave", False)
        self._bar = tqdm(total=total, desc=desc, disable=disable or progress_disabled(), **tqdm_kwargs)
        self._sent = None
        self._tell(force=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        self._bar.update(n)
        self._tell(force=self.total is not None and self.done >= self.total)

    def set_postfix(self, **values) -> None:
        """Shown on the terminal's bar only (e.g. the running perplexity)."""
        self._bar.set_postfix(**values)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tell(self, force: bool) -> None:
        if _listener is None:
            return
        now = time.monotonic()
        if force or self._sent is None or now - self._sent >= _min_interval:
            self._sent = now
            _listener(self.desc, self.done, self.total)


def track(items: Iterable, desc: str, total: Optional[int] = None, disable: bool = False) -> Iterator:
    """``items`` one by one, each counted on a :class:`Bar` once the loop body has finished with it."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Bar(total, desc, disable=disable) as bar:
        for item in items:
            yield item
            bar.update(1)
