"""The `bounds` stage: the floor (and, for the FCN scores, the ceiling) of every score, per test image.

A score says little until it stands between what no translation and a perfect one get from the same
scoring code (the FCN score, for one, rewards layout priors: road at the bottom, sky at the top).

- floor, every metric: one content-free output for every input, scored exactly as a translation. Into
  domain A (F's direction): the mean training image of domain A; into domain B (G's): the mean training
  image of domain B, or, for Cityscapes label maps, the per-pixel most frequent class of the training
  label maps drawn in its colours.
- ceiling, the FCN scores only: the real test images (labels -> photo: the judge on the real photos,
  the paper's "ground truth" row; photo -> labels: the real label maps, decoded by nearest colour).
  SSIM and PSNR of a real image against itself are trivially perfect, and FID and KID of the real
  images against themselves zero: no ceiling row for them.

The per-image values go to one .npz (``floor/<direction>`` and ``ceiling/<direction>`` confusion
matrices, ``floor/ssim/<direction>``, ``floor/psnr/<direction>``, ``image_ids``) for the report's
bootstrap; the scores and what the floor images are go to a JSON.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from pipeline.core.config import check_range
from pipeline.core.device import resolve_device
from pipeline.core.fileio import write_json
from pipeline.core.images import save_png
from pipeline.data.dataset import SplitInfo, read_split_info
from pipeline.data.domains import load_domain
from pipeline.data.labels import NUM_CLASSES, VOID, colorize, decode_label_map
from pipeline.data.manifest import LABEL_SUBSET, PHOTO_SUBSET, read_manifest
from pipeline.judge.metrics import segmentation_scores
from pipeline.judge.segment import judge_confusions, load_judge
from pipeline.scoring.confusions import decoded_confusions, save_confusions
from pipeline.scoring.fid import FidConfig, fid_kid_between
from pipeline.scoring.fidelity import paired_fidelity


@dataclass(frozen=True)
class BoundsConfig:
    """The keys of params section `evaluate` the floor and ceiling are scored with (as every run is)."""

    batch_size: int = 16  # images per judge forward pass
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fid: FidConfig = field(default_factory=FidConfig)

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


def mean_label(split_dir: Path, size: int) -> np.ndarray:
    """The mean of the training images of domain B, as one uint8 ``(H, W, 3)`` image."""
    labels, _ = load_domain(split_dir, LABEL_SUBSET, size)
    mean = labels.sum(dim=0, dtype=torch.float64) / len(labels)
    return mean.round().to(torch.uint8).permute(1, 2, 0).numpy()


def floor_images(split_dir: Path, info: SplitInfo, size: int) -> dict[str, np.ndarray]:
    """The content-free output of each direction (see the module docstring)."""
    into_a, into_b = info.directions
    label_floor = (
        modal_label_map(split_dir, size) if info.classes is not None else mean_label(split_dir, size)
    )
    return {into_a: mean_photo(split_dir, size), into_b: label_floor}


def _fcn_bounds(split_dir: Path, info: SplitInfo, ids: list[str], floors, judge_checkpoint, cfg) -> dict:
    """The FCN scores' per-image matrices, floor and ceiling, by name."""
    val = read_manifest(split_dir, subset="val")
    by_kind = {k: dict(zip(r["image_id"], r["path"], strict=True)) for k, r in val.groupby("kind")}
    masks = [split_dir / by_kind["mask"][i] for i in ids]
    judge = load_judge(judge_checkpoint, resolve_device(cfg.device, "evaluate.device"))
    label2photo, photo2label = info.directions
    return {
        f"ceiling/{label2photo}": judge_confusions(
            judge, [split_dir / by_kind["photo"][i] for i in ids], masks, cfg.batch_size, "ceiling"
        ),
        f"ceiling/{photo2label}": decoded_confusions([split_dir / by_kind["label"][i] for i in ids], masks),
        f"floor/{label2photo}": judge_confusions(
            judge, [floors[label2photo]] * len(ids), masks, cfg.batch_size, "floor"
        ),
        f"floor/{photo2label}": decoded_confusions([floors[photo2label]] * len(ids), masks),
    }


def _distribution_floor(split_dir: Path, info: SplitInfo, floors, cfg: BoundsConfig, result: dict) -> None:
    """FID and KID of each direction's content-free output (its floor image, as many times as there are
    translations) against the real images of its target domain; null without the Inception weights."""
    with tempfile.TemporaryDirectory(prefix="cyclegan-floor-") as tmp:
        reason = None
        for direction in info.directions:
            sources = read_manifest(split_dir, subset="val", kind=info.source_kind(direction))
            targets = read_manifest(split_dir, subset="val", kind=info.target_kind(direction))
            floor = Path(tmp) / f"{direction}.png"
            save_png(floors[direction], floor)
            scores = fid_kid_between(
                [floor] * len(sources), [split_dir / p for p in targets["path"]], cfg.fid
            )
            result[f"floor/fid/{direction}"] = scores.fid
            result[f"floor/kid/{direction}/mean"] = scores.kid_mean
            reason = reason or scores.reason
            if scores.fid is None:  # no weights: the other direction would only fail again
                result.update({f"floor/fid/{d}": None for d in info.directions})
                result.update({f"floor/kid/{d}/mean": None for d in info.directions})
                break
        if reason:
            result["floor_fid_unavailable"] = reason


def compute_bounds(split_dir: str | os.PathLike, judge_checkpoint: str | os.PathLike, cfg: BoundsConfig):
    """(scores and description as a dict, per-image values by name, the paired test ids)."""
    split_dir = Path(split_dir)
    info = read_split_info(split_dir)
    val = read_manifest(split_dir, subset="val")
    size = int(val["width"].iloc[0])
    floors = floor_images(split_dir, info, size)
    ids = list(read_manifest(split_dir, subset="val", kind="photo")["image_id"]) if info.paired_test else []
    into_a, into_b = info.directions
    b_floor = (
        "the per-pixel most frequent class of the training label maps"
        if info.classes
        else (f"the mean training {info.domains['B']} image")
    )
    result: dict[str, Any] = {
        "n_images": len(ids) if ids else len(val),
        "floor": f"{into_a}: the mean training {info.domains['A']} image for every input; "
        f"{into_b}: {b_floor} for every input",
    }
    arrays: dict[str, np.ndarray] = {}
    if info.judged:
        result["ceiling"] = (
            f"{into_a}: the judge on the real test photos; {into_b}: the real test label maps, decoded by "
            "nearest colour"
        )
        arrays.update(_fcn_bounds(split_dir, info, ids, floors, judge_checkpoint, cfg))
        for bound in ("floor", "ceiling"):
            for direction in info.directions:
                scores = segmentation_scores(arrays[f"{bound}/{direction}"].sum(axis=0))
                for name in ("pixel_acc", "class_acc", "class_iou"):
                    result[f"{bound}/fcn/{direction}/{name}"] = scores[name]
    if info.paired_test:
        for direction in info.directions:
            targets = read_manifest(split_dir, subset="val", kind=info.target_kind(direction))
            by_id = dict(zip(targets["image_id"], targets["path"], strict=True))
            fidelity = paired_fidelity([floors[direction]] * len(ids), [split_dir / by_id[i] for i in ids])
            arrays[f"floor/ssim/{direction}"], arrays[f"floor/psnr/{direction}"] = (
                fidelity.ssim,
                fidelity.psnr,
            )
            result[f"floor/ssim/{direction}"] = fidelity.mean_ssim
            result[f"floor/psnr/{direction}"] = fidelity.mean_psnr
    _distribution_floor(split_dir, info, floors, cfg, result)
    return result, arrays, ids


def run_bounds(
    split_dir: str | os.PathLike,
    judge_checkpoint: str | os.PathLike,
    out_json: str | os.PathLike,
    confusion_npz: str | os.PathLike,
    cfg: BoundsConfig,
) -> dict[str, Any]:
    """The bounds stage: compute, then write the matrices and the JSON."""
    result, arrays, ids = compute_bounds(split_dir, judge_checkpoint, cfg)
    save_confusions(confusion_npz, ids, arrays)
    write_json(out_json, result)
    return result
