"""Score one run's test translations, both directions, with the metrics the dataset has
(`pipeline.data.dataset`):

- every dataset: FID and KID of each direction's translations against the real test images of the
  domain it translates into, from one pass of Inception features (`pipeline.scoring.fid`; null offline,
  with the reason);
- a paired test set (facades, maps, Cityscapes): each translation's fidelity to its true counterpart,
  SSIM and PSNR per image (`pipeline.scoring.fidelity`);
- Cityscapes (class label maps, paired): the paper's FCN scores. Labels -> photo (Table 4): the judge
  segments F(y) for every test label map y, scored against y's class ids. Photo -> labels (Table 5):
  G(x) decoded to class ids by nearest colour (`pipeline.data.labels.decode_label_map`); a pixel decoded
  to void counts as wrong. One confusion matrix per direction over all test images (void ground truth
  ignored), scored once by `pipeline.judge.metrics`.

The per-image values (confusion matrices, SSIM, PSNR) go to an .npz beside the scores, for the
report's bootstrap over test images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from pipeline.core.config import check_range
from pipeline.core.device import resolve_device
from pipeline.core.errors import PipelineError
from pipeline.core.fileio import write_json
from pipeline.core.recording import NOTHING, Recorder
from pipeline.cyclegan.checkpoint import load_checkpoint, training_digest
from pipeline.data.dataset import SplitInfo, read_split_info
from pipeline.data.labels import CLASS_NAMES
from pipeline.data.manifest import read_manifest
from pipeline.judge.metrics import SCORES, segmentation_scores
from pipeline.judge.segment import Judge, judge_confusions, load_judge
from pipeline.scoring.confusions import decoded_confusions, save_confusions
from pipeline.scoring.fid import FidConfig, FidKidResult, fid_kid_between
from pipeline.scoring.fidelity import paired_fidelity

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
class TestSet:
    """One direction's test images: its translations, the real images of the domain it translates into,
    and, where they exist, each translation's true counterpart and class-id mask."""

    direction: str
    ids: list[str]  # the translated images' ids (those of the domain translated from)
    translated: list[Path]
    real: list[Path]  # every test image of the target domain: FID and KID compare with these
    counterparts: list[Path] | None  # a paired test set: the true image in the target domain
    masks: list[Path] | None  # a judged dataset: the class ids of each translated image's scene


def _by_id(split_dir: Path, kind: str) -> dict[str, Path]:
    rows = read_manifest(split_dir, subset="val", kind=kind)
    return {image_id: split_dir / path for image_id, path in zip(rows["image_id"], rows["path"], strict=True)}


def test_sets(split_dir: Path, translations_dir: Path, info: SplitInfo) -> dict[str, TestSet]:
    """Every direction's `TestSet`, in the split's order; a missing file is a `PipelineError`."""
    masks = _by_id(split_dir, "mask") if info.judged else {}
    sets = {}
    for direction in info.directions:
        sources, targets = (
            _by_id(split_dir, info.source_kind(direction)),
            _by_id(split_dir, info.target_kind(direction)),
        )
        if not sources or not targets:
            raise PipelineError(f"{split_dir} lists no test images for {direction}: re-run the split stage")
        ids = list(sources)
        translated = [translations_dir / direction / f"{image_id}.png" for image_id in ids]
        missing = [path for path in translated if not path.is_file()]
        if missing:
            raise PipelineError(
                f"translation {missing[0]} is missing: re-run the translate stage for this run "
                f"(`dvc repro translate@<variant>-<seed>`)"
            )
        counterparts = None
        if info.paired_test:
            if set(ids) != set(targets):
                raise PipelineError(
                    f"{split_dir}: the paired test set's two domains list other ids: re-run the split"
                )
            counterparts = [targets[image_id] for image_id in ids]
        sets[direction] = TestSet(
            direction,
            ids,
            translated,
            list(targets.values()),
            counterparts,
            [masks[image_id] for image_id in ids] if info.judged else None,
        )
    return sets


def fcn_confusions(
    sets: dict[str, TestSet], info: SplitInfo, judge: Judge, batch_size: int
) -> dict[str, np.ndarray]:
    """Both directions' per-image confusion matrices: the judge on F's photos (labels -> photo), G's
    label maps decoded by nearest colour (photo -> labels)."""
    label2photo, photo2label = info.directions
    return {
        label2photo: judge_confusions(
            judge, sets[label2photo].translated, sets[label2photo].masks, batch_size, label2photo
        ),
        photo2label: decoded_confusions(sets[photo2label].translated, sets[photo2label].masks),
    }


def distribution_scores(sets: dict[str, TestSet], cfg: FidConfig) -> dict[str, FidKidResult]:
    """FID and KID of each direction's translations against the real images of its target domain."""
    results: dict[str, FidKidResult] = {}
    for direction, test in sets.items():
        if results and all(r.fid is None for r in results.values()):
            # Missing Inception weights: asking again would only repeat the failed download (up to
            # its timeout) for the same answer.
            results[direction] = next(iter(results.values()))
            continue
        results[direction] = fid_kid_between(test.translated, test.real, cfg)
    return results


def _unavailable(results: dict[str, FidKidResult]) -> str | None:
    missing = {d: r.reason or "unknown" for d, r in results.items() if r.fid is None}
    if len(missing) == len(results) and len(set(missing.values())) == 1:
        return next(iter(missing.values()))  # the usual case: no weights at all
    return "; ".join(f"{d}: {reason}" for d, reason in missing.items()) or None


def evaluate_variant(
    variant: str,
    translations_dir: str | os.PathLike,
    split_dir: str | os.PathLike,
    judge_checkpoint: str | os.PathLike,
    cfg: EvaluateConfig,
) -> tuple[dict, dict[str, np.ndarray], list[str]]:
    """The metrics dict of ``metrics/<variant>-<seed>.json`` and the per-image values behind it
    (confusion matrices by direction, ``ssim/<direction>``, ``psnr/<direction>``), with their ids."""
    split_dir, translations_dir = Path(split_dir), Path(translations_dir)
    info = read_split_info(split_dir)
    sets = test_sets(split_dir, translations_dir, info)
    first = sets[info.directions[0]]
    metrics: dict = {"variant": variant, "n_images": len(first.ids)}
    metrics["test_images"] = {d: len(s.ids) for d, s in sets.items()}
    per_image: dict[str, np.ndarray] = {}
    if info.judged:
        judge = load_judge(judge_checkpoint, resolve_device(cfg.device, "evaluate.device"))
        per_image.update(fcn_confusions(sets, info, judge, cfg.batch_size))
        scores = {d: segmentation_scores(per_image[d].sum(axis=0)) for d in info.directions}
        for direction in info.directions:
            for score in SCORES:
                metrics[f"fcn/{direction}/{score}"] = scores[direction][score]
    distributions = distribution_scores(sets, cfg.fid)
    for direction, result in distributions.items():
        metrics[f"fid/{direction}"] = result.fid
        metrics[f"kid/{direction}/mean"] = result.kid_mean
        metrics[f"kid/{direction}/std"] = result.kid_std
    reason = _unavailable(distributions)
    if reason:
        metrics["fid_unavailable"] = reason
    if info.paired_test:
        for direction, test in sets.items():
            fidelity = paired_fidelity(test.translated, test.counterparts)
            per_image[f"ssim/{direction}"], per_image[f"psnr/{direction}"] = fidelity.ssim, fidelity.psnr
            metrics[f"ssim/{direction}"], metrics[f"psnr/{direction}"] = (
                fidelity.mean_ssim,
                fidelity.mean_psnr,
            )
    if info.judged:
        metrics["per_class_iou"] = {
            d: dict(zip(CLASS_NAMES, scores[d]["per_class_iou"], strict=True)) for d in info.directions
        }
    return metrics, per_image, first.ids if info.paired_test else []


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
    metrics, per_image, image_ids = evaluate_variant(
        variant, translations_dir, split_dir, judge_checkpoint, cfg
    )
    metrics.update(provenance)  # where the scores came from (seed, protocol, machine, training)
    out_json = Path(out_json)
    if confusion_npz is not None:
        save_confusions(confusion_npz, image_ids, per_image)
    write_json(out_json, metrics)
    files = {"metrics": out_json, "translations": Path(translations_dir)}
    recorder.evaluation(metrics, files, step=metrics.get("steps"))
    return metrics
