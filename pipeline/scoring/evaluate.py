"""Score one variant's val translations: the paper's FCN scores in both directions, and FID.

- labels -> photo (paper Table 4): the judge segments F(y) for every val label map y; its prediction
  is scored against y's class ids.
- photo -> labels (paper Table 5): G(x) is decoded to class ids by nearest colour
  (`pipeline.data.labels.decode_label_map`); a pixel decoded to void counts as wrong.

One confusion matrix per direction over all val images (void ground truth ignored), scored once by
`pipeline.judge.metrics`. FID compares translated with real val images (`pipeline.scoring.fid`;
null offline).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from pipeline.core.config import check_range
from pipeline.core.device import resolve_device
from pipeline.core.directions import DIRECTIONS
from pipeline.core.errors import PipelineError
from pipeline.core.fileio import write_json
from pipeline.core.recording import NOTHING, Recorder
from pipeline.cyclegan.checkpoint import load_checkpoint, training_digest
from pipeline.data.labels import CLASS_NAMES
from pipeline.data.manifest import read_manifest
from pipeline.judge.metrics import SCORES, segmentation_scores
from pipeline.judge.segment import Judge, judge_confusions, load_judge
from pipeline.scoring.confusions import decoded_confusions, save_confusions
from pipeline.scoring.fid import FidConfig, FidResult, fid_between

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
    log_samples: int = 4  # translated val images per direction shown in the run's record (MLflow)
    fid: FidConfig = field(default_factory=FidConfig)

    # Recording only: no output of the stage depends on it, so it is not among its DVC params deps.
    OUTPUT_NEUTRAL_KEYS: ClassVar[frozenset[str]] = frozenset({"log_samples"})

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


def training_record(state: dict) -> dict:
    """What a metrics file says about the run it scores, from its training checkpoint: seed, steps,
    protocol, the main settings, the machine, and the `training_digest` by which the recording layer
    finds the run's MLflow run again."""
    train = state.get("config", {}).get("train", {})
    return {
        "seed": train.get("seed"),
        "steps": state.get("step"),
        "protocol": state.get("data", {}).get("protocol"),
        "train": {key: train.get(key) for key in TRAINING_SUMMARY if key in train},
        "machine": state.get("machine", {}),
        "training_digest": training_digest(state),
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
    recorder: Recorder = NOTHING,
) -> dict:
    """The evaluate stage: score, write `out_json` (and the per-image matrices to `confusion_npz`), then
    hand both to `recorder`.

    `checkpoint`, the run's training checkpoint, says which training the scores belong to (its
    `training_record`, in the JSON). The JSON holds only what the inputs decide, so the same
    translations, judge and checkpoint give the same bytes.
    """
    provenance = {}
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        if state.get("variant") not in (None, variant):
            raise PipelineError(
                f"{checkpoint} holds variant {state['variant']!r}, not {variant!r}: check the stage's paths"
            )
        provenance = training_record(state)
        del state
    metrics, confusions, image_ids = evaluate_variant(
        variant, translations_dir, split_dir, judge_checkpoint, cfg
    )
    metrics.update(provenance)  # where the scores came from (seed, protocol, machine, training)
    out_json = Path(out_json)
    if confusion_npz is not None:
        save_confusions(confusion_npz, image_ids, confusions)
    write_json(out_json, metrics)
    files = {"metrics": out_json, "translations": Path(translations_dir)}
    recorder.evaluation(metrics, files, step=metrics.get("steps"))
    return metrics
