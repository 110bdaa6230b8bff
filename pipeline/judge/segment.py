"""The trained judge: rebuilt from its checkpoint, it segments photos into class ids, and one loop
scores it on a set of (photo, mask) files, for the judge stage (real val photos, the ceiling row) and
for the evaluate stage (translated photos F(y)) alike."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.core.checkpoints import CHECKPOINT_NAME
from pipeline.core.errors import PipelineError
from pipeline.core.images import hwc_to_model, read_mask, read_rgb, resize_to
from pipeline.core.progress import progress
from pipeline.data.labels import NUM_CLASSES
from pipeline.data.manifest import read_manifest
from pipeline.judge.metrics import confusion_matrix
from pipeline.judge.model import FCN8s, FCNConfig, resize

KIND = "fcn_judge"  # marks the checkpoint dict so a CycleGAN checkpoint is not mistaken for a judge
FORMAT = 2  # 2: the resume check reads a `fingerprint` (1 had an `identity`)


@dataclass
class Judge:
    """A trained segmenter; `segment` turns images into class ids."""

    net: FCN8s
    image_size: int
    device: torch.device
    batch_size: int = 50

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 or ``(N, 3, H, W)`` float in [-1, 1] -> ``(N, H, W)`` int64 class ids (CPU).

        Images of another size than the judge's are resized to it (the scale it learned) and the
        scores resized back, so the output always matches the input's height and width.
        """
        images = _as_model_input(images)
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size].to(self.device)
            size = batch.shape[-2:]
            if tuple(size) != (self.image_size, self.image_size):
                logits = self.net(resize(batch, (self.image_size, self.image_size)))
                logits = resize(logits, size)
            else:
                logits = self.net(batch)
            out.append(logits.argmax(dim=1).cpu())
        return torch.cat(out) if out else torch.empty((0, *images.shape[-2:]), dtype=torch.int64)


def _as_model_input(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return hwc_to_model(images)
    if images.is_floating_point():
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"float images must be (N, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        return images.float()
    raise ValueError(f"images must be uint8 NHWC or float NCHW, got dtype {images.dtype}")


def read_judge_checkpoint(path: Path) -> dict[str, Any] | None:
    """The judge's checkpoint dict, None when there is none; a `PipelineError` for a bad file."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: torch raises a zoo of types
        raise PipelineError(f"cannot load judge checkpoint {path} ({exc}): delete it and rerun") from None
    if not isinstance(state, dict) or state.get("kind") != KIND or state.get("format") != FORMAT:
        raise PipelineError(f"{path} is not a format-{FORMAT} judge checkpoint: delete it and rerun")
    return state


def check_finite_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a judge whose weights hold NaN or inf: it diverged, and its scores would look like any other."""
    bad = [
        name
        for name, tensor in state_dict.items()
        if tensor.is_floating_point() and not tensor.isfinite().all()
    ]
    if bad:
        raise PipelineError(
            f"judge checkpoint {path} has NaN/inf weights ({bad[0]}{' and others' if len(bad) > 1 else ''}): "
            "it diverged; delete it and rerun the judge stage with a lower judge.lr"
        )


def load_judge(path: str | os.PathLike, device: str | torch.device = "cpu") -> Judge:
    """Rebuild the judge from its checkpoint alone, in eval mode on `device`."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    state = read_judge_checkpoint(path)
    if state is None:
        raise PipelineError(f"judge checkpoint {path} not found: run the judge stage (`dvc repro judge`)")
    if state.get("none"):
        raise PipelineError(f"{path} holds no judge: {state['none']}")
    if not state["finished"]:
        raise PipelineError(
            f"judge checkpoint {path} is unfinished (step {state['step']}/{state['total_steps']}): "
            "rerun the judge stage to complete it"
        )
    check_finite_weights(state["net"], path)
    net = FCN8s(FCNConfig(**state["model"]))
    net.load_state_dict(state["net"])
    device = torch.device(device)
    return Judge(
        net.to(device).eval(), state["config"]["image_size"], device, state["config"]["eval_batch_size"]
    )


def paired_paths(split_dir: str | os.PathLike, subset: str) -> tuple[list[Path], list[Path]]:
    """Photo and mask paths of a split subset (``evaluator`` or ``val``), paired by image id."""
    split_dir = Path(split_dir)
    manifest = read_manifest(split_dir, subset=subset)
    photos = manifest[manifest["kind"] == "photo"].set_index("image_id")["path"]
    masks = manifest[manifest["kind"] == "mask"].set_index("image_id")["path"]
    missing = sorted(set(photos.index) ^ set(masks.index))
    if missing:
        raise PipelineError(
            f"{split_dir}: {len(missing)} {subset} image(s) lack a photo or a mask (e.g. id {missing[0]}): "
            "rerun the split stage"
        )
    if photos.empty:
        raise PipelineError(f"{split_dir} has no {subset} photos: rerun the split stage")
    ids = list(photos.index)
    return [split_dir / photos[i] for i in ids], [split_dir / masks[i] for i in ids]


def _pixels(photo: str | os.PathLike | np.ndarray) -> np.ndarray:
    return photo if isinstance(photo, np.ndarray) else read_rgb(photo)


@torch.no_grad()
def judge_confusions(
    judge: Judge,
    photos: Sequence[str | os.PathLike | np.ndarray],
    mask_paths: Sequence[str | os.PathLike],
    batch_size: int | None = None,
    desc: str = "judge",
) -> np.ndarray:
    """Per-image confusion matrices ``(N, 19, 20)`` of the judge's predictions against `mask_paths`.

    `photos` are files or ``(H, W, 3)`` uint8 arrays, each resized to its mask's size first
    (bilinear); `batch_size` of them are read at a time (default: the judge's own batch). Summed over
    the images they are the one confusion matrix of the FCN score; kept apart, they let the report
    resample images (`pipeline.scoring.bootstrap`).
    """
    batch_size = batch_size or judge.batch_size
    out = np.zeros((len(photos), NUM_CLASSES, NUM_CLASSES + 1), dtype=np.int64)
    with progress(total=len(photos), desc=desc, unit="img") as bar:
        for start in range(0, len(photos), batch_size):
            masks = [read_mask(p) for p in mask_paths[start : start + batch_size]]
            pixels = [
                resize_to(_pixels(photo), gt.shape, Image.Resampling.BILINEAR)
                for photo, gt in zip(photos[start : start + batch_size], masks, strict=True)
            ]
            if len({gt.shape for gt in masks}) == 1:
                predictions = judge.segment(torch.from_numpy(np.stack(pixels))).numpy()
            else:  # val images are one size; any other set is segmented one image at a time
                predictions = [judge.segment(torch.from_numpy(p[None]))[0].numpy() for p in pixels]
            for offset, (gt, prediction) in enumerate(zip(masks, predictions, strict=True)):
                out[start + offset] = confusion_matrix(gt, prediction)
            bar.update(len(masks))
    return out
