"""WikiText-2 (Merity et al. 2016) as the GPTQ/LLMC perplexity convention reads it.

The raw test split's rows are the file's lines, each keeping its newline, blank lines as empty strings
(how the Hugging Face ``wikitext-2-raw-v1`` builder yields them). The evaluated text is the rows joined
with ``"\\n\\n"``, tokenized once (Frantar et al. 2022, GPTQ, ``datautils.get_wikitext2``).

Calibration reads the train split when a folder holds ``wiki.train.raw``; offline only validation text is
at hand (``wiki.valid.raw`` or the tokenized v1 ``wiki.valid.tokens``), and that fallback is recorded.
The test split is never used for calibration.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .sources import DataLocation

CALIB_FILES = (("train", "wiki.train.raw"), ("validation", "wiki.valid.raw"),
               ("validation (tokenized v1, <unk> for rare words)", "wiki.valid.tokens"))


def read_rows(path: Path) -> list[str]:
    """The file's lines with their newline kept; whitespace-only lines become ``""``."""
    with open(path, encoding="utf-8", newline="") as f:
        return [line if line.strip() else "" for line in f]


def _hub_rows(loc: DataLocation, split: str) -> list[str]:
    import datasets
    return list(datasets.load_dataset(*loc.hub_args, split=split)["text"])


def evaluation_text(loc: DataLocation) -> str:
    if loc.kind == "hub":
        return "\n\n".join(_hub_rows(loc, "test"))
    return "\n\n".join(read_rows(loc.file(loc.extra.get("file", "wiki.test.raw"))))


def calibration_text(loc: DataLocation) -> tuple[str, dict]:
    """Text for calibration and a record of which split/file it came from."""
    if loc.kind == "hub":
        return "\n\n".join(_hub_rows(loc, "train")), {"split": "train", "source": "hub"}
    for split, name in CALIB_FILES:
        path = loc.file(name)
        if path.is_file():
            info = {"split": split, "file": str(path)}
            if split != "train":
                info["fallback"] = "no WikiText-2 train split found; calibrating on validation text"
            return "\n\n".join(read_rows(path)), info
    raise UserError(f"calib: no WikiText-2 train or validation file in {loc.root} "
                    f"(looked for {', '.join(n for _, n in CALIB_FILES)}); the test split is never used")
