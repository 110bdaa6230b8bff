"""Score one variant's val translations: the paper's FCN scores in both directions, and FID.

- labels -> photo (paper Table 4): the judge segments F(y) for every val label map y; its prediction
  is scored against y's class ids.
- photo -> labels (paper Table 5): G(x) is decoded to class ids by nearest colour
  (`pipeline.labels.decode_label_map`); a pixel decoded to void counts as wrong.

One confusion matrix per direction over all val images (void ground truth ignored), scored once by
`pipeline.scoring.metrics`. FID compares translated with real val images (`pipeline.scoring.fid`;
null offline).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from pipeline.core.config import check_range
from pipeline.core.device import resolve_device
from pipeline.core.directions import DIRECTIONS
from pipeline.core.errors import PipelineError
from pipeline.core.fileio import write_json
from pipeline.core.images import read_mask, read_rgb, resize_to
from pipeline.core.progress import progress
from pipeline.core.urls import redact_text
from pipeline.cyclegan.checkpoint import load_checkpoint
from pipeline.data.labels import CLASS_NAMES, NUM_CLASSES, decode_label_map
from pipeline.data.manifest import image_id_key, read_manifest
from pipeline.judge.scoring import Judge, judge_confusion, load_judge
from pipeline.scoring.fid import FidConfig, FidResult, fid_between
from pipeline.scoring.metrics import SCORES, confusion_matrix, segmentation_scores


@dataclass(frozen=True)
class EvaluateConfig:
    """Params section `evaluate`."""

    batch_size: int = 16  # images per judge forward pass
    device: Literal["auto", "cpu", "cuda"] = "auto"  # the judge's device (FID has its own)
    log_samples: int = 4  # translated val images per direction attached to the variant's MLflow run
    fid: FidConfig = field(default_factory=FidConfig)

    def __post_init__(self) -> None:
        check_range(self, "batch_size", ge=1)
        check_range(self, "log_samples", ge=0)


@dataclass(frozen=True)
class ValImage:
    """One val id's files: real photo, real label map, class-id mask, and its two translations."""

    image_id: str
    photo: Path
    label: Path
    mask: Path
    translated: dict[str, Path]  # direction -> translation


def val_images(split_dir: Path, translations_dir: Path) -> list[ValImage]:
    """Every val id with its files, in manifest order; a missing translation is a `PipelineError`."""
    manifest = read_manifest(split_dir, subset="val")
    by_kind = {
        kind: dict(zip(rows["image_id"], rows["path"], strict=True))
        for kind, rows in manifest.groupby("kind")
    }
    masks = by_kind.get("mask", {})
    if not masks:
        raise PipelineError(f"{split_dir} lists no val masks: re-run the split stage (`dvc repro split`)")
    images = []
    for image_id, mask in masks.items():
        if image_id not in by_kind.get("photo", {}) or image_id not in by_kind.get("label", {}):
            raise PipelineError(
                f"val id {image_id} lacks its photo or label map in {split_dir}: re-run the split"
            )
        translated = {d: translations_dir / d / f"{image_id}.png" for d in DIRECTIONS}
        for path in translated.values():
            if not path.is_file():
                raise PipelineError(
                    f"translation {path} is missing: re-run the translate stage for this variant "
                    f"(`dvc repro translate@<variant>`)"
                )
        images.append(
            ValImage(
                image_id,
                split_dir / by_kind["photo"][image_id],
                split_dir / by_kind["label"][image_id],
                split_dir / mask,
                translated,
            )
        )
    return images


def score_photo2label(images: list[ValImage]) -> dict:
    """FCN scores of G(x): each translated label map decoded to class ids, against the val mask."""
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES + 1), dtype=np.int64)
    for image in progress(images, desc="photo2label", unit="img"):
        gt = read_mask(image.mask)
        # Nearest, not bilinear: blending two class colours would invent a third class.
        rgb = resize_to(read_rgb(image.translated["photo2label"]), gt.shape, Image.Resampling.NEAREST)
        cm += confusion_matrix(gt, decode_label_map(rgb))
    return segmentation_scores(cm)


def score_label2photo(images: list[ValImage], judge: Judge, batch_size: int) -> dict:
    """FCN scores of F(y): the judge segments each translated photo, against y's val mask."""
    photos = [image.translated["label2photo"] for image in images]
    cm = judge_confusion(judge, photos, [image.mask for image in images], batch_size, desc="label2photo")
    return segmentation_scores(cm)


def evaluate_variant(
    variant: str,
    translations_dir: str | os.PathLike,
    split_dir: str | os.PathLike,
    judge_checkpoint: str | os.PathLike,
    cfg: EvaluateConfig,
) -> dict:
    """The metrics dict of ``metrics/<variant>.json`` (see `pipeline.report.build` for its reader)."""
    split_dir, translations_dir = Path(split_dir), Path(translations_dir)
    images = val_images(split_dir, translations_dir)
    device = resolve_device(cfg.device, "evaluate.device")
    judge = load_judge(judge_checkpoint, device)
    scores = {
        "label2photo": score_label2photo(images, judge, cfg.batch_size),
        "photo2label": score_photo2label(images),
    }
    real = {"label2photo": [i.photo for i in images], "photo2label": [i.label for i in images]}
    fids: dict[str, FidResult] = {}
    for direction in DIRECTIONS:
        if fids and all(result.value is None for result in fids.values()):
            # A null FID means the Inception weights are missing: asking again would only repeat the
            # failed download (up to its timeout) for the same answer.
            fids[direction] = next(iter(fids.values()))
            continue
        fids[direction] = fid_between([i.translated[direction] for i in images], real[direction], cfg.fid)

    metrics: dict = {"variant": variant, "n_images": len(images)}
    for direction in DIRECTIONS:
        for score in SCORES:
            metrics[f"fcn/{direction}/{score}"] = scores[direction][score]
    for direction in DIRECTIONS:
        metrics[f"fid/{direction}"] = fids[direction].value
    missing = {d: fids[d].reason or "unknown" for d in DIRECTIONS if fids[d].value is None}
    if len(missing) == len(DIRECTIONS) and len(set(missing.values())) == 1:
        metrics["fid_unavailable"] = missing[DIRECTIONS[0]]  # the usual case: no weights at all
    elif missing:
        metrics["fid_unavailable"] = "; ".join(f"{d}: {reason}" for d, reason in missing.items())
    metrics["per_class_iou"] = {
        d: dict(zip(CLASS_NAMES, scores[d]["per_class_iou"], strict=True)) for d in DIRECTIONS
    }
    return metrics


def tracked_metrics(metrics: dict) -> dict[str, float]:
    """The scalar scores under their MLflow names (``eval/fcn/...``, ``eval/fid/...``); nulls left out."""
    return {
        f"eval/{key}": float(value)
        for key, value in metrics.items()
        if key.startswith(("fcn/", "fid/")) and value is not None
    }


def log_to_run(
    run_id: str, metrics: dict, metrics_json: Path, translations_dir: Path, n_samples: int, step: int | None
) -> None:
    """Log the scores, the metrics file and a few translated samples to the variant's run."""
    from pipeline.orchestration import tracking

    tracking.log_metrics(run_id, tracked_metrics(metrics), step=step)
    tracking.log_artifacts(run_id, metrics_json, artifact_path="eval")
    if n_samples:
        with tempfile.TemporaryDirectory() as tmp:
            for direction in DIRECTIONS:
                (Path(tmp) / direction).mkdir()
                files = sorted(
                    (translations_dir / direction).glob("*.png"), key=lambda p: image_id_key(p.stem)
                )
                for path in files[:n_samples]:
                    shutil.copy2(path, Path(tmp) / direction / path.name)
            tracking.log_artifacts(run_id, tmp, artifact_path="eval/samples")


def run_evaluation(
    variant: str,
    translations_dir: str | os.PathLike,
    split_dir: str | os.PathLike,
    judge_checkpoint: str | os.PathLike,
    out_json: str | os.PathLike,
    cfg: EvaluateConfig,
    checkpoint: str | os.PathLike | None = None,
) -> dict:
    """The evaluate stage: score, write `out_json`, log to the variant's MLflow run.

    The run id comes from the variant's training `checkpoint`. Without one, or when the store cannot
    be reached, a warning says so and the JSON is still written: tracking is a record, the file is
    the stage's output.
    """
    run_id, step = None, None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        if state.get("variant") not in (None, variant):
            raise PipelineError(
                f"{checkpoint} holds variant {state['variant']!r}, not {variant!r}: check the stage's paths"
            )
        run_id, step = state.get("mlflow_run_id"), state.get("step")
        del state
    metrics = evaluate_variant(variant, translations_dir, split_dir, judge_checkpoint, cfg)
    # Lets the report find the ablation's parent run through the variant runs.
    metrics["mlflow_run_id"] = run_id
    out_json = Path(out_json)
    write_json(out_json, metrics)
    if run_id is None:
        warnings.warn(
            f"no MLflow run id for {variant} (checkpoint: {checkpoint}); scores only in {out_json}",
            stacklevel=2,
        )
        return metrics
    try:
        log_to_run(run_id, metrics, out_json, Path(translations_dir), cfg.log_samples, step)
    except Exception as exc:  # an unreachable store must not lose the scores
        warnings.warn(
            f"scores not logged to MLflow run {run_id} ({type(exc).__name__}: {redact_text(str(exc))}); "
            f"they are in {out_json}",
            stacklevel=2,
        )
    return metrics
