"""Calibration batches: token windows cut from calibration text.

``wikitext2_gptq`` draws ``n_samples`` windows of ``seq_len`` tokens at random offsets of the tokenized
text (GPTQ's ``get_wikitext2`` recipe, seeded); ``general`` takes consecutive non-overlapping windows
from the start, which needs no randomness.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .sources import find_dataset
from .wikitext2 import calibration_text, read_rows

log = logging.getLogger(__name__)


@dataclass
class CalibData:
    input_ids: torch.Tensor   # [n_samples, seq_len]
    info: dict                # provenance: split, file, fallback note, sizes


def resolve_calibration_text(calib_cfg) -> tuple[str, dict]:
    """Read the calibration text (before any model is loaded); errors name calib.path or the search."""
    if calib_cfg.path and Path(calib_cfg.path).expanduser().is_file():
        path = Path(calib_cfg.path).expanduser()
        return "\n\n".join(read_rows(path)), {"split": "user file", "file": str(path)}
    loc = find_dataset("wikitext2", calib_cfg.path, key="calib.path", download=calib_cfg.download)
    text, info = calibration_text(loc)
    info["how"] = loc.how
    return text, info


def make_calibration(tokenizer, text: str, info: dict, n_samples: int, seq_len: int, preproc: str,
                     seed: int) -> CalibData:
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if ids.numel() < seq_len + 1:
        raise UserError(f"calib.seq_len: {seq_len} tokens is longer than the calibration text ({ids.numel()})")
    if preproc == "wikitext2_gptq":
        distinct = ids.numel() - seq_len
        if n_samples > distinct:
            raise UserError(f"calib.n_samples: {n_samples} windows of {seq_len} tokens is more than the "
                            f"{distinct:,} distinct windows the calibration text holds ({ids.numel():,} tokens); "
                            f"lower calib.n_samples or calib.seq_len")
        rng = random.Random(seed)
        starts = [rng.randint(0, ids.numel() - seq_len - 1) for _ in range(n_samples)]
    elif preproc == "general":
        available = ids.numel() // seq_len
        if available < n_samples:
            raise UserError(f"calib.n_samples: the text holds only {available} windows of {seq_len} tokens")
        starts = [i * seq_len for i in range(n_samples)]
    else:
        raise UserError(f"calib.preproc: unknown '{preproc}'")
    batch = torch.stack([ids[s:s + seq_len] for s in starts])
    info = dict(info, n_samples=n_samples, seq_len=seq_len, preproc=preproc, seed=seed, text_tokens=ids.numel())
    if n_samples * seq_len > ids.numel():   # random windows drawn from a text shorter than their total
        info["overlap"] = round(n_samples * seq_len / ids.numel(), 2)
        log.warning("calibration: %d x %d tokens drawn from a text of %d: each token is seen about %.1f times",
                    n_samples, seq_len, ids.numel(), info["overlap"])
    return CalibData(batch, info)
