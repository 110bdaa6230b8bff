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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from pipeline.core.config import check_range
from pipeline.core.device import resolve_device
from pipeline.core.directions import DIRECTIONS
from pipeline.core.errors import PipelineError
from pipeline.core.fileio import atomic_file, write_json
from pipeline.core.images import read_mask, read_rgb, resize_to
from pipeline.core.progress import progress
from pipeline.core.urls import redact_text
from pipeline.cyclegan.checkpoint import load_checkpoint
from pipeline.data.labels import CLASS_NAMES, NUM_CLASSES, decode_label_map
from pipeline.data.manifest import image_id_key, read_manifest
from pipeline.judge.scoring import Judge, judge_confusions, load_judge
from pipeline.scoring.fid import FidConfig, FidResult, fid_between
from pipeline.scoring.metrics import SCORES, confusion_matrix, segmentation_scores

# The training settings a report names beside its scores (the rest is in the MLflow run).
TRAINING_SUMMARY = (
    "load_size",
    "crop_size",
    "max_images",
    "batch_size",
    "ngf",
    "ndf",
    "n_blocks",
    "epochs_constant",
    "epochs_decay",
    "max_steps",
)


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


def decoded_confusions(
    label_maps: Sequence[str | os.PathLike | np.ndarray], mask_paths: Sequence[str | os.PathLike]
) -> np.ndarray:
    """Per-image confusion matrices ``(N, 19, 20)`` of colour label maps (files or uint8 arrays), each
    decoded to class ids by nearest colour and scored against its class-id mask (the FCN score of G)."""
    out = np.zeros((len(label_maps), NUM_CLASSES, NUM_CLASSES + 1), dtype=np.int64)
    pairs = zip(label_maps, mask_paths, strict=True)
    for index, (label_map, mask) in enumerate(
        progress(pairs, total=len(out), desc="photo2label", unit="img")
    ):
        gt = read_mask(mask)
        rgb = label_map if isinstance(label_map, np.ndarray) else read_rgb(label_map)
        # Nearest, not bilinear: blending two class colours would invent a third class.
        out[index] = confusion_matrix(
            gt, decode_label_map(resize_to(rgb, gt.shape, Image.Resampling.NEAREST))
        )
    return out


def per_image_confusions(images: list[ValImage], judge: Judge, batch_size: int) -> dict[str, np.ndarray]:
    """Both directions' per-image matrices: the judge on F(y) (labels -> photo), decoded G(x) (photo ->
    labels)."""
    masks = [image.mask for image in images]
    return {
        "label2photo": judge_confusions(
            judge, [image.translated["label2photo"] for image in images], masks, batch_size, "label2photo"
        ),
        "photo2label": decoded_confusions([image.translated["photo2label"] for image in images], masks),
    }


def save_confusions(
    path: str | os.PathLike, image_ids: Sequence[str], confusions: dict[str, np.ndarray]
) -> None:
    """Per-image matrices (`per_image_confusions`) with their val ids, atomically, as one .npz."""
    with atomic_file(path, "wb") as handle:
        np.savez_compressed(handle, image_ids=np.asarray(image_ids, dtype=str), **confusions)


def evaluate_variant(
    variant: str,
    translations_dir: str | os.PathLike,
    split_dir: str | os.PathLike,
    judge_checkpoint: str | os.PathLike,
    cfg: EvaluateConfig,
) -> tuple[dict, dict[str, np.ndarray], list[str]]:
    """The metrics dict of ``metrics/<variant>-<seed>.json`` and the per-image confusion matrices
    behind it (`pipeline.report.results` reads both)."""
    split_dir, translations_dir = Path(split_dir), Path(translations_dir)
    images = val_images(split_dir, translations_dir)
    device = resolve_device(cfg.device, "evaluate.device")
    judge = load_judge(judge_checkpoint, device)
    confusions = per_image_confusions(images, judge, cfg.batch_size)
    scores = {d: segmentation_scores(confusions[d].sum(axis=0)) for d in DIRECTIONS}
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
    return metrics, confusions, [image.image_id for image in images]


def log_to_run(
    run_id: str, metrics: dict, metrics_json: Path, translations_dir: Path, n_samples: int, step: int | None
) -> None:
    """Log the scores, the metrics file, why FID is missing (a tag) and the first `n_samples` translated
    val images per direction, as stepped images the UI shows side by side across runs."""
    from pipeline.orchestration import tracking

    tracking.log_metrics(run_id, tracking.eval_metrics(metrics), step=step)
    tracking.log_artifacts(run_id, metrics_json, artifact_path="eval")
    if metrics.get("fid_unavailable"):
        tracking.set_tags(run_id, {"cyclegan.fid_unavailable": metrics["fid_unavailable"][:5000]})
    for direction in DIRECTIONS:
        files = sorted((translations_dir / direction).glob("*.png"), key=lambda p: image_id_key(p.stem))
        for path in files[:n_samples]:
            tracking.log_image(run_id, read_rgb(path), key=f"eval/{direction}/{path.stem}", step=step or 0)


def training_record(state: dict) -> dict:
    """What a metrics file says about the run it scores, from its training checkpoint."""
    train = state.get("config", {}).get("train", {})
    return {
        "seed": train.get("seed"),
        "steps": state.get("step"),
        "protocol": state.get("data", {}).get("protocol"),
        "train": {key: train.get(key) for key in TRAINING_SUMMARY if key in train},
        "machine": state.get("machine", {}),
    }


def run_evaluation(
    variant: str,
    translations_dir: str | os.PathLike,
    split_dir: str | os.PathLike,
    judge_checkpoint: str | os.PathLike,
    out_json: str | os.PathLike,
    cfg: EvaluateConfig,
    checkpoint: str | os.PathLike | None = None,
    confusion_npz: str | os.PathLike | None = None,
) -> dict:
    """The evaluate stage: score, write `out_json` (and the per-image matrices to `confusion_npz`), log
    to the variant's MLflow run.

    The run id comes from the variant's training `checkpoint`. Without one, or when the store cannot
    be reached, a warning says so and the JSON is still written: tracking is a record, the file is
    the stage's output.
    """
    run_id, step, provenance = None, None, {}
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        if state.get("variant") not in (None, variant):
            raise PipelineError(
                f"{checkpoint} holds variant {state['variant']!r}, not {variant!r}: check the stage's paths"
            )
        run_id, step, provenance = state.get("mlflow_run_id"), state.get("step"), training_record(state)
        del state
    metrics, confusions, image_ids = evaluate_variant(
        variant, translations_dir, split_dir, judge_checkpoint, cfg
    )
    # Where the scores came from (seed, protocol, machine); the run id lets the report find the parent.
    metrics.update(provenance)
    metrics["mlflow_run_id"] = run_id
    out_json = Path(out_json)
    if confusion_npz is not None:
        save_confusions(confusion_npz, image_ids, confusions)
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
