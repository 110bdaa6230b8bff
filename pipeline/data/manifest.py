"""The split's manifest (`manifest.csv`): one row per file, and the one order of image ids.

Columns: ``image_id`` (the archive file stem, e.g. ``17``), ``subset`` (`SUBSETS`), ``kind``
(``photo``, ``label``, ``mask``), ``path`` (relative to the split folder), ``width``, ``height``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from pipeline.core.errors import PipelineError

MANIFEST = "manifest.csv"
SUMMARY = "summary.json"  # the split's config and counts
PHOTO_SUBSET = "train_photo"  # domain A: street photos
LABEL_SUBSET = "train_label"  # domain B: colour label maps
SUBSETS = (PHOTO_SUBSET, LABEL_SUBSET, "val", "evaluator")
COLUMNS = ["image_id", "subset", "kind", "path", "width", "height"]


def image_id_key(image_id: str) -> tuple[int, int | str]:
    """Sort key for image ids: archive stems are numbers ("2" before "10"), anything else after them."""
    return (0, int(image_id)) if image_id.isdigit() else (1, image_id)


def read_manifest(
    split_dir: str | os.PathLike, subset: str | None = None, kind: str | None = None
) -> pd.DataFrame:
    """The split's manifest, optionally filtered; `path` stays relative to `split_dir`."""
    path = Path(split_dir) / MANIFEST
    if not path.exists():
        raise PipelineError(f"{path} not found: run the split stage first (`dvc repro split`)")
    manifest = pd.read_csv(path, dtype={"image_id": str})
    if subset is not None:
        if subset not in SUBSETS:
            raise ValueError(f"unknown subset {subset!r}; expected one of {SUBSETS}")
        manifest = manifest[manifest["subset"] == subset]
    if kind is not None:
        manifest = manifest[manifest["kind"] == kind]
    return manifest.reset_index(drop=True)


def sorted_by_id(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` in image-id order (stable)."""
    order = sorted(range(len(rows)), key=lambda i: image_id_key(rows["image_id"].iloc[i]))
    return rows.iloc[order]
