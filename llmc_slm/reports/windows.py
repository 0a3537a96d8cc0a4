"""Two runs of one setting compared on the WikiText-2 windows both evaluated: what a single difference between
the runs moves (the compute dtype, bfloat16 on a CPU with AMX and float32 elsewhere; the machine; the commit).

A paired run (``eval.paired``, ``llmc.eval.perplexity``) records per window its summed NLL, its float
reference's summed NLL, the summed KL(p_float || p_quant) and the tokens whose top-1 agrees. Over the first
``n = min(n_a, n_b)`` windows (``eval.limit`` takes a prefix, so they are the same text in both runs):

* each run's KLD (sum of KL / sum of tokens), its Δ ln ppl against its own float model (mean over windows
  of (NLL - NLL_ref) / tokens, ± the paired SE) and its top-1 agreement;
* B - A for the per-window KLD and Δ ln ppl, paired over the windows (the same text, so most of the text's
  own variation cancels), ± SE; and B / A for the KLD.

The sensitivity table (``sensitivity.py``) sets architectures computed in different dtypes side by side;
this comparison says how much of a difference the dtype alone can explain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmc.results import ResultsError, items_path, read_items, read_result

from ..paired import paired_delta
from .collect import ReportError
from .render import Table


@dataclass(frozen=True)
class WindowRun:
    """One run's paired WikiText-2 columns, per window."""
    label: str
    path: str
    dtype: str
    nll: np.ndarray
    ref_nll: np.ndarray
    kl: np.ndarray
    tokens: np.ndarray
    top1: np.ndarray

    def first(self, n: int) -> "WindowRun":
        return WindowRun(self.label, self.path, self.dtype, self.nll[:n], self.ref_nll[:n], self.kl[:n],
                         self.tokens[:n], self.top1[:n])

    @property
    def window_kld(self) -> np.ndarray:
        return self.kl / self.tokens

    @property
    def window_delta(self) -> np.ndarray:
        return (self.nll - self.ref_nll) / self.tokens


def read_window_run(path: str | Path, position: str = "fake_quant") -> WindowRun:
    """``path``'s paired WikiText-2 per window at ``position``; ReportError (one line) when the file, its
    items file or the paired columns are missing."""
    path = Path(path)
    try:
        run = read_result(path)
        items = read_items(items_path(path))
    except ResultsError as e:
        raise ReportError(f"{path}: {e}") from None
    except OSError as e:
        raise ReportError(f"{e.filename or path}: {e.strerror or e}") from None
    cols = items.get(position, {}).get("wikitext2")
    if not cols:
        raise ReportError(f"{path}: no WikiText-2 windows at {position} (positions: {', '.join(items) or 'none'})")
    missing = [c for c in ("window_kl", "ref_window_nll") if c not in cols]
    if missing:
        raise ReportError(f"{path}: WikiText-2 at {position} was not paired with a float model (no {missing[0]}; "
                          "eval.paired)")
    label = f"{path.stem} ({run.model.name or '?'})"
    return WindowRun(label, str(path), run.environment.dtype or "?", *(np.asarray(cols[k], dtype=float) for k in
                     ("window_nll", "ref_window_nll", "window_kl", "window_tokens", "window_top1")))


def _pm(d, digits: int) -> str:
    return f"{d.delta:+.{digits}f}" + (f" ± {d.stderr:.{digits}f}" if d.stderr is not None else "")


def window_comparison(a: WindowRun, b: WindowRun, name: str = "window_comparison") -> Table:
    """The two runs and B - A on their common windows (module docstring)."""
    n = min(len(a.tokens), len(b.tokens))
    a, b = a.first(n), b.first(n)
    if not np.array_equal(a.tokens, b.tokens):
        raise ReportError("the two runs' windows hold different token counts: another tokenizer or seq_len, "
                          "not the same text")
    t = Table(name, f"Two runs on the same {n} WikiText-2 windows",
              ["Run", "dtype", "KLD", "Δ ln ppl vs float", "top-1 agreement"], left=2)
    for r in (a, b):
        own = paired_delta(r.ref_nll / r.tokens, r.nll / r.tokens)
        t.add([r.label, r.dtype, f"{r.kl.sum() / r.tokens.sum():.4f}", _pm(own, 4),
               f"{r.top1.sum() / r.tokens.sum():.4f}"])
    kld = paired_delta(a.window_kld, b.window_kld)
    delta = paired_delta(a.window_delta, b.window_delta)
    t.add(["B - A (paired over windows)", "", _pm(kld, 4), _pm(delta, 4), ""], new_group=True)
    ratio = b.kl.sum() / a.kl.sum() if a.kl.sum() > 0 else float("nan")
    t.notes.append(f"A = `{a.path}`, B = `{b.path}`; {n} windows of {int(a.tokens[0]) + 1} tokens, the first of "
                   f"each run's. KLD: sum of KL(p_float || p_quant) over the windows' tokens / tokens; B / A of the "
                   f"KLD: {ratio:.3f}. Each run's Δ ln ppl is against its own float model.")
    return t
