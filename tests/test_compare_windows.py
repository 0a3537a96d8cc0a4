"""tools/compare_windows.py and llmc_slm.reports.windows: two runs compared on their common WikiText-2
windows, from synthetic results and items files."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from llmc_slm.reports.collect import ReportError
from llmc_slm.reports.windows import read_window_run, window_comparison

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import compare_windows  # noqa: E402

TOKENS = 2047


def write_run(folder: Path, stem: str, dtype: str, kl, delta, n_ref=None, paired=True) -> Path:
    """A results file and its items file: per window a KL sum and an NLL change of ``delta`` nats per token
    over a reference NLL that varies from window to window (the text's own difficulty)."""
    n = len(kl)
    ref = np.asarray(n_ref if n_ref is not None else [3.0 + 0.3 * i for i in range(n)]) * TOKENS
    cols = {"window_nll": (ref + np.asarray(delta) * TOKENS).tolist(), "window_tokens": [TOKENS] * n}
    if paired:
        cols.update(ref_window_nll=ref.tolist(), window_kl=list(kl), window_top1=[1800] * n)
    record = {"schema_version": 1, "status": "complete", "config": {"model": {"path": "m"}},
              "model": {"name": "m"}, "environment": {"device": "cpu", "dtype": dtype}, "metrics": {}}
    (folder / f"{stem}.json").write_text(json.dumps(record))
    items = {"schema_version": 1, "positions": {"fake_quant": {"wikitext2": cols}}}
    (folder / f"{stem}.items.json.gz").write_bytes(gzip.compress(json.dumps(items).encode()))
    return folder / f"{stem}.json"


def test_the_difference_is_paired_over_the_common_windows(tmp_path):
    a = write_run(tmp_path, "bf16", "bfloat16", kl=[60.0, 62.0, 58.0, 61.0, 59.0],
                  delta=[0.030, 0.034, 0.028, 0.033, 0.031])
    b = write_run(tmp_path, "fp32", "float32", kl=[57.0, 60.0, 55.0], delta=[0.029, 0.032, 0.026])
    t = window_comparison(read_window_run(a), read_window_run(b))
    assert t.title == "Two runs on the same 3 WikiText-2 windows"          # the first 3 of A's 5
    rows = {r[0].split(" ")[0]: r for r in t.rows}
    assert rows["bf16"][1:3] == ["bfloat16", f"{180 / (3 * TOKENS):.4f}"]
    assert rows["bf16"][3] == f"{+0.030667:+.4f} ± {np.std([0.030, 0.034, 0.028], ddof=1) / 3 ** 0.5:.4f}"
    diff_kl = (np.array([57.0, 60.0, 55.0]) - np.array([60.0, 62.0, 58.0])) / TOKENS
    diff = rows["B"]
    assert diff[2] == f"{diff_kl.mean():+.4f} ± {diff_kl.std(ddof=1) / 3 ** 0.5:.4f}"
    assert diff[3] == "-0.0017 ± 0.0003"                   # (-1, -2, -2) / 1000 nats per token, paired
    assert f"B / A of the KLD: {172 / 180:.3f}" in t.notes[0]


def test_runs_that_cannot_be_compared_are_one_line_errors(tmp_path, capsys):
    a = write_run(tmp_path, "a", "bfloat16", kl=[1.0, 2.0], delta=[0.01, 0.02])
    unpaired = write_run(tmp_path, "u", "float32", kl=[1.0, 2.0], delta=[0.01, 0.02], paired=False)
    with pytest.raises(ReportError, match="u.json: WikiText-2 at fake_quant was not paired"):
        read_window_run(unpaired)
    with pytest.raises(ReportError, match="no WikiText-2 windows at real_quant"):
        read_window_run(a, "real_quant")
    other = read_window_run(a)
    shorter = type(other)(**{**other.__dict__, "tokens": other.tokens - 1})
    with pytest.raises(ReportError, match="different token counts"):
        window_comparison(other, shorter)
    assert compare_windows.main([str(a), str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing.json" in err and "\n" not in err


def test_the_tool_prints_and_writes_the_markdown(tmp_path, capsys):
    a = write_run(tmp_path, "a", "bfloat16", kl=[60.0, 62.0], delta=[0.03, 0.034])
    b = write_run(tmp_path, "b", "float32", kl=[57.0, 60.0], delta=[0.029, 0.032])
    out = tmp_path / "cmp.md"
    assert compare_windows.main([str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("### Two runs on the same 2 WikiText-2 windows") and out.read_text() == printed
