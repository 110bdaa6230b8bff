"""What identifies a run's data and the ablation it belongs to (no training code: the report and the
flow compute these too)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.core.project import dvc_output_md5
from pipeline.cyclegan.config import TrainConfig
from pipeline.data.manifest import LABEL_SUBSET, PHOTO_SUBSET, SUMMARY, read_manifest, sorted_by_id


def data_fingerprint(split_dir: Path) -> dict[str, str | None]:
    """What identifies the training data: `train_sha256`, a hash of the training domains' manifest rows
    and file bytes (about a second for the full split; val and evaluator files do not count);
    `data_version`, DVC's md5 of the whole split folder (a tag for MLflow, None outside a DVC repo); and
    the split's `protocol` (disjoint halves or the paper's full domains)."""
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
        "data_version": dvc_output_md5(split_dir),
        "protocol": split_protocol(split_dir),
    }


def split_protocol(split_dir: Path) -> str:
    """The protocol the split was made with (its summary.json; `disjoint` for a split without one)."""
    try:
        summary = json.loads((split_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return "disjoint"
    return str(summary.get("config", {}).get("protocol", "disjoint"))


def ablation_key(
    data: dict[str, str | None],
    cfg: TrainConfig,
    variants: Mapping[str, Mapping[str, Any]],
    seeds: Sequence[int],
) -> str:
    """The key of one launched ablation, and so of its MLflow parent run: the training data, the train
    section (seed aside), and which variants (with their switches) and seeds it runs. Changing any of
    them is another ablation: removing a variant gives a parent that no longer lists it."""
    train = {k: v for k, v in cfg.identity().items() if k != "seed"}
    payload = {
        "data": data["train_sha256"],
        "train": train,
        "variants": {name: dict(switches) for name, switches in sorted(variants.items())},
        "seeds": sorted(seeds),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
