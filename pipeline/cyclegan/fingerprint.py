"""The fingerprint of a run's training data: what a checkpoint is compared with before it is continued,
and what the records say the run trained on (no training code: the recording layer reads it too)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.data.dataset import read_split_info
from pipeline.data.manifest import LABEL_SUBSET, PHOTO_SUBSET, SUMMARY, read_manifest, sorted_by_id


def data_fingerprint(split_dir: Path) -> dict[str, Any]:
    """What identifies the training data: `train_sha256`, a hash of the training domains' manifest rows
    and file bytes (about a second for the full split; val and evaluator files do not count), and the
    split's `protocol` (disjoint halves or the paper's full domains) and its two `domains` by name. All
    come from the split's files alone, so a checkpoint holding them depends on nothing but the stage's
    deps."""
    digest = hashlib.sha256()
    for subset in (PHOTO_SUBSET, LABEL_SUBSET):
        rows = sorted_by_id(read_manifest(split_dir, subset=subset))
        for image_id, relative in zip(rows["image_id"], rows["path"], strict=True):
            digest.update(f"{subset}/{image_id}/{relative}\n".encode())
            try:
                digest.update((split_dir / relative).read_bytes())
            except OSError as exc:
                raise PipelineError(
                    f"cannot read {split_dir / relative} ({exc}): rerun the split stage"
                ) from None
    return {
        "train_sha256": digest.hexdigest(),
        "protocol": split_protocol(split_dir),
        "domains": read_split_info(split_dir).domains,
    }


def split_protocol(split_dir: Path) -> str:
    """The protocol the split was made with (its summary.json; `disjoint` for a split without one)."""
    try:
        summary = json.loads((split_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return "disjoint"
    return str(summary.get("config", {}).get("protocol", "disjoint"))
