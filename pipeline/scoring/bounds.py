"""The `bounds` stage: the floor and the ceiling of every FCN score, per val image.

The FCN score rewards layout priors (road at the bottom, sky at the top), so a raw score says little
until it stands between what no translation and a perfect one get from the same scoring code:

- ceiling: the real val images. labels -> photo: the judge on the real val photos (the paper's
  "ground truth" row); photo -> labels: the real val label maps, decoded by nearest colour.
- floor: one content-free output for every input. labels -> photo: the mean training photo
  (domain A), segmented by the judge; photo -> labels: the per-pixel most frequent class of the
  training label maps (domain B), drawn in its colours.

The per-image confusion matrices go to one .npz (``floor/<direction>``, ``ceiling/<direction>``,
``image_ids``) for the report's bootstrap; the scores and what the floor images are go to a JSON.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from pipeline.core.config import check_range
from pipeline.core.device import resolve_device
from pipeline.core.directions import DIRECTIONS
from pipeline.core.fileio import write_json
from pipeline.data.domains import load_domain
from pipeline.data.labels import NUM_CLASSES, VOID, colorize, decode_label_map
from pipeline.data.manifest import LABEL_SUBSET, PHOTO_SUBSET, read_manifest
from pipeline.judge.metrics import segmentation_scores
from pipeline.judge.segment import judge_confusions, load_judge
from pipeline.scoring.confusions import decoded_confusions, save_confusions


@dataclass(frozen=True)
class BoundsConfig:
    """The keys of params section `evaluate` the floor and ceiling are scored with (as every run is)."""

    batch_size: int = 16  # images per judge forward pass
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        check_range(self, "batch_size", ge=1)


def mean_photo(split_dir: Path, size: int) -> np.ndarray:
    """The mean of the training photos at `size` x `size`, as one uint8 ``(H, W, 3)`` image."""
    photos, _ = load_domain(split_dir, PHOTO_SUBSET, size)
    mean = photos.sum(dim=0, dtype=torch.float64) / len(photos)
    return mean.round().to(torch.uint8).permute(1, 2, 0).numpy()


def modal_label_map(split_dir: Path, size: int) -> np.ndarray:
    """The per-pixel most frequent train class of the training label maps (void never wins), drawn
    as a colour label map ``(H, W, 3)``."""
    labels, _ = load_domain(split_dir, LABEL_SUBSET, size)
    counts = np.zeros(size * size * NUM_CLASSES, dtype=np.int64)
    pixels = np.arange(size * size) * NUM_CLASSES
    for label in labels.permute(0, 2, 3, 1).numpy():
        ids = decode_label_map(label).reshape(-1).astype(np.int64)
        known = ids != VOID
        counts += np.bincount(pixels[known] + ids[known], minlength=counts.size)
    modal = counts.reshape(size * size, NUM_CLASSES).argmax(axis=1).astype(np.uint8)
    return colorize(modal.reshape(size, size))


def compute_bounds(split_dir: str | os.PathLike, judge_checkpoint: str | os.PathLike, cfg: BoundsConfig):
    """(scores and description as a dict, per-image matrices by name, val ids)."""
    split_dir = Path(split_dir)
    val = read_manifest(split_dir, subset="val")
    by_kind = {
        kind: dict(zip(rows["image_id"], rows["path"], strict=True)) for kind, rows in val.groupby("kind")
    }
    ids = list(by_kind["mask"])
    masks = [split_dir / by_kind["mask"][i] for i in ids]
    size = int(val["width"].iloc[0])
    judge = load_judge(judge_checkpoint, resolve_device(cfg.device, "evaluate.device"))

    floor_photo, floor_labels = mean_photo(split_dir, size), modal_label_map(split_dir, size)
    matrices = {
        "ceiling/label2photo": judge_confusions(
            judge,
            [split_dir / by_kind["photo"][i] for i in ids],
            masks,
            cfg.batch_size,
            "ceiling label2photo",
        ),
        "ceiling/photo2label": decoded_confusions([split_dir / by_kind["label"][i] for i in ids], masks),
        "floor/label2photo": judge_confusions(
            judge, [floor_photo] * len(ids), masks, cfg.batch_size, "floor"
        ),
        "floor/photo2label": decoded_confusions([floor_labels] * len(ids), masks),
    }
    result: dict[str, Any] = {
        "n_images": len(ids),
        "floor": "labels -> photo: the mean training photo for every label map; photo -> labels: the "
        "per-pixel most frequent class of the training label maps for every photo",
        "ceiling": "labels -> photo: the judge on the real val photos; photo -> labels: the real val label "
        "maps, decoded by nearest colour",
    }
    for bound in ("floor", "ceiling"):
        for direction in DIRECTIONS:
            scores = segmentation_scores(matrices[f"{bound}/{direction}"].sum(axis=0))
            for name in ("pixel_acc", "class_acc", "class_iou"):
                result[f"{bound}/fcn/{direction}/{name}"] = scores[name]
    return result, matrices, ids


def run_bounds(
    split_dir: str | os.PathLike,
    judge_checkpoint: str | os.PathLike,
    out_json: str | os.PathLike,
    confusion_npz: str | os.PathLike,
    cfg: BoundsConfig,
) -> dict[str, Any]:
    """The bounds stage: compute, then write the matrices and the JSON."""
    result, matrices, ids = compute_bounds(split_dir, judge_checkpoint, cfg)
    save_confusions(confusion_npz, ids, matrices)
    write_json(out_json, result)
    return result
