"""The judge stage: the FCN segmenter trained from scratch on real photos, then scored on real val photos.

The paper scored labels -> photo with an FCN-8s trained on Cityscapes (paper Table 4, "FCN score");
those weights cannot be had here, so the pipeline trains its own judge on the evaluator pairs of the
split (all train photos with their class-id masks) at the evaluation size. Its score on the real val
photos is the "ground truth" ceiling row of the ablation tables (paper: 0.80 / 0.26 / 0.21).

The net is FCN-8s in shape (class scores read at strides 32, 16 and 8 and fused coarse to fine) with
a compact VGG-style encoder: five stages of two 3x3 conv + BatchNorm + ReLU, each halving the
resolution. `JudgeConfig.width` scales it; the default profile trains it on CPU in minutes.

Checkpoint (one dict, written atomically every ``checkpoint_every`` steps and on SIGTERM/SIGINT into
``<resume_dir>/checkpoint.pt``, at the end into ``<out_dir>/checkpoint.pt``): net, optimizer, step,
config, data fingerprint, per-epoch losses. The data order and flips of epoch ``e`` come from a
generator seeded with ``(seed, e)``, so a resumed run replays exactly the batches an uninterrupted one
would have seen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.checkpoints import CheckpointFiles
from pipeline.core.config import check_range
from pipeline.core.device import resolve_device
from pipeline.core.errors import PipelineError
from pipeline.core.images import hwc_to_model, read_mask, read_rgb
from pipeline.core.progress import progress
from pipeline.core.signals import Interrupted, stop_requests
from pipeline.data.dataset import dataset_record, no_judge_reason, read_split_info
from pipeline.data.labels import CLASS_NAMES, VOID
from pipeline.judge.metrics import segmentation_scores
from pipeline.judge.model import FCN8s, FCNConfig, init_weights
from pipeline.judge.segment import (
    FORMAT,
    KIND,
    Judge,
    check_finite_weights,
    judge_confusions,
    paired_paths,
    read_judge_checkpoint,
)

log = logging.getLogger(__name__)

# Keys that do not change what is learned: a checkpoint made under other values is continued.
RESUMABLE_KEYS = frozenset({"device", "checkpoint_every", "eval_batch_size"})


@dataclass
class JudgeConfig:
    """The ``judge`` params section."""

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    image_size: int = 128  # the size the judge sees; the split stores evaluator/val images at this size
    max_images: int | None = None  # evaluator pairs used for training (null = all 2975)
    epochs: int = 5
    batch_size: int = 16
    lr: float = 0.002  # AdamW peak; linear warm-up then cosine decay to 0
    weight_decay: float = 0.0001
    warmup_fraction: float = 0.05
    width: int = 24  # channels of the first stage; stages use 1, 2, 4, 8, 8 times this
    checkpoint_every: int = 100  # steps between checkpoints
    eval_batch_size: int = 50  # images per forward pass when scoring

    # Keys no output of the judge stage depends on (the checkpoint leaves them out): not DVC params deps.
    OUTPUT_NEUTRAL_KEYS: ClassVar[frozenset[str]] = frozenset({"checkpoint_every"})

    def __post_init__(self) -> None:
        check_range(self, "seed", ge=0)
        sizes = ("image_size", "epochs", "batch_size", "width", "checkpoint_every", "eval_batch_size")
        check_range(self, (*sizes, "max_images"), ge=1)  # max_images: or null
        check_range(self, "lr", gt=0)
        check_range(self, "weight_decay", ge=0)
        check_range(self, "warmup_fraction", ge=0, lt=1)


def load_pairs(
    photo_paths: Sequence[Path], mask_paths: Sequence[Path], size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs in memory: photos ``(N, size, size, 3)`` and masks ``(N, size, size)``, uint8."""
    photos = np.empty((len(photo_paths), size, size, 3), dtype=np.uint8)
    masks = np.empty((len(mask_paths), size, size), dtype=np.uint8)
    pairs = zip(photo_paths, mask_paths, strict=True)
    bar = progress(pairs, total=len(photos), desc="load judge data", unit="img")
    for index, (photo, mask) in enumerate(bar):
        photos[index] = read_rgb(photo, size)
        masks[index] = read_mask(mask, size)
    return torch.from_numpy(photos), torch.from_numpy(masks)


def data_sha256(*arrays: torch.Tensor) -> str:
    """sha256 of the training tensors: a changed split restarts training even if the config did not."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(tuple(array.shape)).encode())
        digest.update(array.contiguous().numpy().tobytes())
    return digest.hexdigest()


def epoch_plan(seed: int, epoch: int, n_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The order of the images and their horizontal flips in `epoch`, a pure function of its inputs."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_images, generator=generator)
    flips = torch.rand(n_images, generator=generator) < 0.5
    return order, flips


def learning_rate(step: int, total_steps: int, cfg: JudgeConfig) -> float:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 0."""
    warmup = max(1, int(cfg.warmup_fraction * total_steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def stored_config(cfg: JudgeConfig) -> dict[str, Any]:
    """The config as the checkpoint keeps it: everything but `OUTPUT_NEUTRAL_KEYS`."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in cfg.OUTPUT_NEUTRAL_KEYS}


def judge_fingerprint(cfg: JudgeConfig, data_sha256: str) -> dict[str, Any]:
    """What decides what the judge learns: a checkpoint is continued only under it."""
    return {
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE_KEYS},
        "data": data_sha256,
    }


def train_judge(
    split_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: JudgeConfig,
    resume_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train (or resume, or reuse) the judge into ``<out_dir>/checkpoint.pt``; score it on real val.

    Unfinished checkpoints go to ``<resume_dir>/checkpoint.pt`` (default: the same file), where a rerun
    resumes; outside the DVC output, they let it be one that DVC's run cache restores.

    Returns the real-photo scores: ``fcn/real/{pixel_acc,class_acc,class_iou}``, ``per_class_iou``
    (class name -> IoU or None) and ``n_images``. Raises `Interrupted` after checkpointing
    when SIGTERM/SIGINT arrives.
    """
    split_dir = Path(split_dir)
    files = CheckpointFiles.of(out_dir, resume_dir)
    info = read_split_info(split_dir)
    if not info.judged:
        return no_judge(files, no_judge_reason(dataset_record(info.layout, info.domains, info.classes)))
    device = resolve_device(cfg.device, "judge.device")

    photo_paths, mask_paths = paired_paths(split_dir, "evaluator")
    if cfg.max_images is not None:
        photo_paths, mask_paths = photo_paths[: cfg.max_images], mask_paths[: cfg.max_images]
    photos, masks = load_pairs(photo_paths, mask_paths, cfg.image_size)
    fingerprint = judge_fingerprint(cfg, data_sha256(photos, masks))

    generator = torch.Generator().manual_seed(cfg.seed)
    net = FCN8s(FCNConfig(width=cfg.width))
    init_weights(net, generator)
    net.to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(photos) / cfg.batch_size)
    state = {
        "kind": KIND,
        "format": FORMAT,
        "fingerprint": fingerprint,
        "config": stored_config(cfg),
        "model": dataclasses.asdict(FCNConfig(width=cfg.width)),
        "step": 0,
        "total_steps": cfg.epochs * steps_per_epoch,
        "finished": False,
        "history": [],
        "epoch_loss_sum": 0.0,
    }
    previous = files.load_resumable(
        read_judge_checkpoint, fingerprint, lambda message: log.warning("judge: %s", message)
    )
    if previous is not None:
        check_finite_weights(previous["net"], files.final)
        net.load_state_dict(previous["net"])
        optimizer.load_state_dict(previous["optimizer"])
        state.update({k: previous[k] for k in ("step", "finished", "history", "epoch_loss_sum")})
        if state["finished"]:
            log.info("judge: %s already trained with this config and data; scoring only", files.final)
        else:
            log.info("judge: resuming from step %d/%d", state["step"], state["total_steps"])

    trained = not state["finished"]
    if trained:
        _train(net, optimizer, photos.to(device), masks.to(device), state, cfg, files)
    if trained or not files.final.is_file():  # (a finished one can be in the resume folder)
        files.save_final({**state, "net": net.state_dict(), "optimizer": optimizer.state_dict()})

    judge = Judge(net.eval(), cfg.image_size, device, cfg.eval_batch_size)
    val_photos, val_masks = paired_paths(split_dir, "val")
    cms = judge_confusions(judge, val_photos, val_masks, desc="judge on real val")
    scores = segmentation_scores(cms.sum(axis=0))
    return {
        "fcn/real/pixel_acc": scores["pixel_acc"],
        "fcn/real/class_acc": scores["class_acc"],
        "fcn/real/class_iou": scores["class_iou"],
        "per_class_iou": dict(zip(CLASS_NAMES, scores["per_class_iou"], strict=True)),
        "n_images": len(val_photos),
        "train_images": len(photos),
        "steps": state["step"],
    }


def no_judge(files: CheckpointFiles, reason: str) -> dict[str, Any]:
    """The judge stage of a dataset without one: a checkpoint that says so (the later stages' DVC dep),
    and scores that say why there are none."""
    files.save_final({"kind": KIND, "format": FORMAT, "none": reason})
    log.info("judge: none: %s", reason)
    return {"available": False, "reason": reason}


def _train(
    net: FCN8s,
    optimizer: torch.optim.Optimizer,
    photos: torch.Tensor,
    masks: torch.Tensor,
    state: dict[str, Any],
    cfg: JudgeConfig,
    files: CheckpointFiles,
) -> None:
    """Run the remaining steps, checkpointing into the resume file; updates `state` in place."""
    n_images, total = len(photos), state["total_steps"]
    steps_per_epoch = math.ceil(n_images / cfg.batch_size)

    def checkpoint() -> None:
        files.save_progress({**state, "net": net.state_dict(), "optimizer": optimizer.state_dict()})

    net.train()
    plan_epoch, order, flips = -1, None, None
    with (
        stop_requests() as stop,
        progress(total=total, initial=state["step"], desc="train judge", unit="step") as bar,
    ):
        while state["step"] < total:
            step = state["step"]
            epoch, position = divmod(step, steps_per_epoch)
            if epoch != plan_epoch:
                (order, flips), plan_epoch = epoch_plan(cfg.seed, epoch, n_images), epoch
            batch = slice(position * cfg.batch_size, (position + 1) * cfg.batch_size)
            index, flip = order[batch].to(photos.device), flips[batch].to(photos.device)
            real = hwc_to_model(photos[index])
            target = masks[index].long()
            real = torch.where(flip[:, None, None, None], real.flip(-1), real)
            target = torch.where(flip[:, None, None], target.flip(-1), target)

            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total, cfg)
            loss = F.cross_entropy(net(real), target, ignore_index=VOID)
            value = loss.item()
            if not math.isfinite(value):
                # Before the step: neither the weights nor the checkpoint ever hold the diverged state,
                # and an unfinished checkpoint cannot be scored with (`load_judge`).
                raise PipelineError(
                    f"judge: loss_ce (cross-entropy) is {value} at step {step + 1} of {total}: training "
                    f"diverged; lower judge.lr (training then starts over) or check the evaluator data"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            state["step"] = step + 1
            state["epoch_loss_sum"] += value
            if state["step"] % steps_per_epoch == 0 or state["step"] == total:
                steps_in_epoch = state["step"] - epoch * steps_per_epoch
                state["history"].append({"epoch": epoch, "loss": state["epoch_loss_sum"] / steps_in_epoch})
                state["epoch_loss_sum"] = 0.0
            state["finished"] = state["step"] == total
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}", epoch=epoch)
            if not state["finished"] and (state["step"] % cfg.checkpoint_every == 0 or stop):
                checkpoint()
            if stop and not state["finished"]:
                raise Interrupted(
                    f"judge training stopped by {stop.name} at step {state['step']}/{total}; "
                    f"checkpoint saved to {files.resume}: rerun the stage to resume",
                    stop.signum,
                )
