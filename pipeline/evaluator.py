"""The FCN judge: a segmenter trained from scratch on real photos, scoring translated photos.

The paper scored labels -> photo with an FCN-8s trained on Cityscapes (paper Table 4, "FCN score");
those weights cannot be had here, so the pipeline trains its own judge on the evaluator pairs of the
split (all train photos with their class-id masks) at the evaluation size. Its score on the real val
photos is the "ground truth" ceiling row of the ablation tables (paper: 0.80 / 0.26 / 0.21).

The net is FCN-8s in shape (class scores read at strides 32, 16 and 8 and fused coarse to fine) with
a compact VGG-style encoder: five stages of two 3x3 conv + BatchNorm + ReLU, each halving the
resolution. `EvaluatorConfig.width` scales it; the default profile trains it on CPU in minutes.

Checkpoint (``<out_dir>/checkpoint.pt``, one dict, written atomically every ``checkpoint_every``
steps, on SIGTERM/SIGINT and at the end): net, optimizer, step, config, data fingerprint, per-epoch
losses. The data order and flips of epoch ``e`` come from a generator seeded with ``(seed, e)``, so
a resumed run replays exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from pipeline.checkpoint import CHECKPOINT_NAME, save_checkpoint
from pipeline.errors import PipelineError
from pipeline.fileio import resolve_device
from pipeline.labels import CLASS_NAMES, NUM_CLASSES, VOID
from pipeline.metrics import confusion_matrix, segmentation_scores
from pipeline.split import read_manifest

log = logging.getLogger(__name__)

KIND = "fcn_judge"  # marks the checkpoint dict so a CycleGAN checkpoint is not mistaken for a judge
FORMAT = 1
# Fields that do not change what is learned: changing them resumes instead of restarting.
RESUMABLE_FIELDS = ("device", "checkpoint_every", "eval_batch_size")


@dataclass
class EvaluatorConfig:
    """The ``evaluator`` params section."""

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

    def __post_init__(self) -> None:
        for name in ("image_size", "epochs", "batch_size", "width", "checkpoint_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be >= 1 or null, got {self.max_images}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


# ---------------------------------------------------------------------------------------------- model


@dataclass
class FCNConfig:
    width: int = 24
    num_classes: int = NUM_CLASSES


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class FCN8s(nn.Module):
    """Images in [-1, 1] ``(N, 3, H, W)`` -> class logits ``(N, num_classes, H, W)``."""

    def __init__(self, cfg: FCNConfig) -> None:
        super().__init__()
        widths = [cfg.width * m for m in (1, 2, 4, 8, 8)]  # strides 2, 4, 8, 16, 32
        stages, in_ch = [], 3
        for out_ch in widths:
            stages.append(
                nn.Sequential(_conv_bn_relu(in_ch, out_ch, stride=2), _conv_bn_relu(out_ch, out_ch))
            )
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.score_8 = nn.Conv2d(widths[2], cfg.num_classes, 1)
        self.score_16 = nn.Conv2d(widths[3], cfg.num_classes, 1)
        self.score_32 = nn.Conv2d(widths[4], cfg.num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = []
        x = images
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        # FCN-8s: coarse scores refined by the finer strides' scores (bilinear instead of learned
        # deconvolution, which the original initialised to bilinear anyway).
        scores = self.score_32(features[4])
        scores = _resize(scores, features[3].shape[-2:]) + self.score_16(features[3])
        scores = _resize(scores, features[2].shape[-2:]) + self.score_8(features[2])
        return _resize(scores, images.shape[-2:])


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def init_weights(net: nn.Module, generator: torch.Generator) -> None:
    """He-normal convolutions from `generator` (never the global RNG), BatchNorm to identity."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------- judge


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
                logits = self.net(_resize(batch, (self.image_size, self.image_size)))
                logits = _resize(logits, size)
            else:
                logits = self.net(batch)
            out.append(logits.argmax(dim=1).cpu())
        return torch.cat(out) if out else torch.empty((0, *images.shape[-2:]), dtype=torch.int64)


def _as_model_input(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (N, H, W, 3), got {tuple(images.shape)}")
        return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if images.is_floating_point():
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"float images must be (N, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        return images.float()
    raise ValueError(f"images must be uint8 NHWC or float NCHW, got dtype {images.dtype}")


def load_judge(path: str | os.PathLike, device: str | torch.device = "cpu") -> Judge:
    """Rebuild the judge from its checkpoint alone, in eval mode on `device`."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    state = _read_checkpoint(path)
    if state is None:
        raise PipelineError(
            f"judge checkpoint {path} not found: run the evaluator stage (`dvc repro evaluator`)"
        )
    if not state["finished"]:
        raise PipelineError(
            f"judge checkpoint {path} is unfinished (step {state['step']}/{state['total_steps']}): "
            "rerun the evaluator stage to complete it"
        )
    net = FCN8s(FCNConfig(**state["model"]))
    net.load_state_dict(state["net"])
    device = torch.device(device)
    return Judge(
        net.to(device).eval(), state["config"]["image_size"], device, state["config"]["eval_batch_size"]
    )


def _read_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: torch raises a zoo of types
        raise PipelineError(f"cannot load judge checkpoint {path} ({exc}): delete it and rerun") from None
    if not isinstance(state, dict) or state.get("kind") != KIND or state.get("format") != FORMAT:
        raise PipelineError(f"{path} is not a format-{FORMAT} judge checkpoint: delete it and rerun")
    return state


# ---------------------------------------------------------------------------------------------- data


def read_rgb(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8, bilinear-resized to ``size x size`` when given and different."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(image)


def read_mask(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """``(H, W)`` uint8 train ids (255 void); nearest-resized, since blending ids invents classes."""
    with Image.open(path) as image:
        if image.mode != "L":
            raise PipelineError(f"{path} is not a class-id mask (mode {image.mode}, expected L)")
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.NEAREST)
        return np.asarray(image)


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


def load_pairs(
    photo_paths: Sequence[Path], mask_paths: Sequence[Path], size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs in memory: photos ``(N, size, size, 3)`` and masks ``(N, size, size)``, uint8."""
    photos = np.empty((len(photo_paths), size, size, 3), dtype=np.uint8)
    masks = np.empty((len(mask_paths), size, size), dtype=np.uint8)
    pairs = zip(photo_paths, mask_paths, strict=True)
    for index, (photo, mask) in enumerate(tqdm(pairs, total=len(photos), desc="load judge data", unit="img")):
        photos[index] = read_rgb(photo, size)
        masks[index] = read_mask(mask, size)
    return torch.from_numpy(photos), torch.from_numpy(masks)


def fingerprint(*arrays: torch.Tensor) -> str:
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


def learning_rate(step: int, total_steps: int, cfg: EvaluatorConfig) -> float:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 0."""
    warmup = max(1, int(cfg.warmup_fraction * total_steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------- training


class JudgeInterrupted(PipelineError):
    """Training stopped by a signal after saving its checkpoint; rerunning resumes it."""


@contextlib.contextmanager
def _stop_requests() -> Iterator[dict[str, str | None]]:
    """Turn SIGTERM/SIGINT into a flag the loop checks between steps (so it can checkpoint first)."""
    request: dict[str, str | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be installed from the main thread
        return

    def handler(signum, _frame):
        request["signal"] = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _identity(cfg: EvaluatorConfig, data_fingerprint: str) -> dict[str, Any]:
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE_FIELDS}
    return {"config": config, "data": data_fingerprint}


def _resume_state(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint to continue from, or None (absent, or trained under another config/data)."""
    state = _read_checkpoint(path)
    if state is None:
        return None
    if state["identity"] != identity:
        old, new = state["identity"], identity
        changed = [k for k in new["config"] if old["config"].get(k) != new["config"][k]]
        if old["data"] != new["data"]:
            changed.append("training data")
        log.warning(
            "evaluator: %s changed since %s was written; training from scratch", ", ".join(changed), path
        )
        return None
    return state


def train_judge(
    split_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: EvaluatorConfig
) -> dict[str, Any]:
    """Train (or resume, or reuse) the judge into ``<out_dir>/checkpoint.pt``; score it on real val.

    Returns the real-photo scores: ``fcn/real/{pixel_acc,class_acc,class_iou}``, ``per_class_iou``
    (class name -> IoU or None) and ``n_images``. Raises `JudgeInterrupted` after checkpointing
    when SIGTERM/SIGINT arrives.
    """
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    path = out_dir / CHECKPOINT_NAME
    device = resolve_device(cfg.device)

    photo_paths, mask_paths = paired_paths(split_dir, "evaluator")
    if cfg.max_images is not None:
        photo_paths, mask_paths = photo_paths[: cfg.max_images], mask_paths[: cfg.max_images]
    photos, masks = load_pairs(photo_paths, mask_paths, cfg.image_size)
    identity = _identity(cfg, fingerprint(photos, masks))

    generator = torch.Generator().manual_seed(cfg.seed)
    net = FCN8s(FCNConfig(width=cfg.width))
    init_weights(net, generator)
    net.to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(photos) / cfg.batch_size)
    state = {
        "kind": KIND,
        "format": FORMAT,
        "identity": identity,
        "config": dataclasses.asdict(cfg),
        "model": dataclasses.asdict(FCNConfig(width=cfg.width)),
        "step": 0,
        "total_steps": cfg.epochs * steps_per_epoch,
        "finished": False,
        "history": [],
        "epoch_loss_sum": 0.0,
    }
    previous = _resume_state(path, identity)
    if previous is not None:
        net.load_state_dict(previous["net"])
        optimizer.load_state_dict(previous["optimizer"])
        state.update({k: previous[k] for k in ("step", "finished", "history", "epoch_loss_sum")})
        if state["finished"]:
            log.info("evaluator: %s already trained with this config and data; scoring only", path)
        else:
            log.info("evaluator: resuming from step %d/%d", state["step"], state["total_steps"])

    if not state["finished"]:
        _train(net, optimizer, photos.to(device), masks.to(device), state, cfg, path)

    judge = Judge(net.eval(), cfg.image_size, device, cfg.eval_batch_size)
    val_photos, val_masks = paired_paths(split_dir, "val")
    scores = segmentation_scores(judge_confusion(judge, val_photos, val_masks, desc="judge on real val"))
    return {
        "fcn/real/pixel_acc": scores["pixel_acc"],
        "fcn/real/class_acc": scores["class_acc"],
        "fcn/real/class_iou": scores["class_iou"],
        "per_class_iou": dict(zip(CLASS_NAMES, scores["per_class_iou"], strict=True)),
        "n_images": len(val_photos),
        "train_images": len(photos),
        "steps": state["step"],
    }


def _train(
    net: FCN8s,
    optimizer: torch.optim.Optimizer,
    photos: torch.Tensor,
    masks: torch.Tensor,
    state: dict[str, Any],
    cfg: EvaluatorConfig,
    path: Path,
) -> None:
    """Run the remaining steps, checkpointing into `path`; updates `state` in place."""
    n_images, total = len(photos), state["total_steps"]
    steps_per_epoch = math.ceil(n_images / cfg.batch_size)

    def checkpoint() -> None:
        save_checkpoint(path, {**state, "net": net.state_dict(), "optimizer": optimizer.state_dict()})

    net.train()
    plan_epoch, order, flips = -1, None, None
    with (
        _stop_requests() as stop,
        tqdm(total=total, initial=state["step"], desc="train judge", unit="step") as bar,
    ):
        while state["step"] < total:
            step = state["step"]
            epoch, position = divmod(step, steps_per_epoch)
            if epoch != plan_epoch:
                (order, flips), plan_epoch = epoch_plan(cfg.seed, epoch, n_images), epoch
            batch = slice(position * cfg.batch_size, (position + 1) * cfg.batch_size)
            index, flip = order[batch].to(photos.device), flips[batch].to(photos.device)
            real = photos[index].permute(0, 3, 1, 2).float() / 127.5 - 1.0
            target = masks[index].long()
            real = torch.where(flip[:, None, None, None], real.flip(-1), real)
            target = torch.where(flip[:, None, None], target.flip(-1), target)

            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total, cfg)
            loss = F.cross_entropy(net(real), target, ignore_index=VOID)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            state["step"] = step + 1
            state["epoch_loss_sum"] += loss.item()
            if state["step"] % steps_per_epoch == 0 or state["step"] == total:
                steps_in_epoch = state["step"] - epoch * steps_per_epoch
                state["history"].append({"epoch": epoch, "loss": state["epoch_loss_sum"] / steps_in_epoch})
                state["epoch_loss_sum"] = 0.0
            state["finished"] = state["step"] == total
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch)
            if state["finished"] or state["step"] % cfg.checkpoint_every == 0 or stop["signal"]:
                checkpoint()
            if stop["signal"] and not state["finished"]:
                raise JudgeInterrupted(
                    f"evaluator training stopped by {stop['signal']} at step {state['step']}/{total}; "
                    f"checkpoint saved to {path}: rerun the stage to resume"
                )


@torch.no_grad()
def judge_confusion(
    judge: Judge,
    photo_paths: Sequence[str | os.PathLike],
    mask_paths: Sequence[str | os.PathLike],
    desc: str = "judge",
) -> np.ndarray:
    """One confusion matrix of the judge's predictions on `photo_paths` against `mask_paths`.

    Photos are resized to their mask's size first (bilinear), as the reference eval does.
    """
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES + 1), dtype=np.int64)
    with tqdm(total=len(photo_paths), desc=desc, unit="img") as bar:
        for start in range(0, len(photo_paths), judge.batch_size):
            masks = [read_mask(p) for p in mask_paths[start : start + judge.batch_size]]
            photos = [
                _read_rgb_at(p, gt.shape)
                for p, gt in zip(photo_paths[start : start + judge.batch_size], masks, strict=True)
            ]
            if len({gt.shape for gt in masks}) == 1:
                predictions = judge.segment(torch.from_numpy(np.stack(photos))).numpy()
            else:
                predictions = [judge.segment(torch.from_numpy(p[None]))[0].numpy() for p in photos]
            for gt, prediction in zip(masks, predictions, strict=True):
                cm += confusion_matrix(gt, prediction)
            bar.update(len(masks))
    return cm


def _read_rgb_at(path: str | os.PathLike, shape: tuple[int, ...]) -> np.ndarray:
    rgb = read_rgb(path)
    if rgb.shape[:2] != shape:
        rgb = np.asarray(Image.fromarray(rgb).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))
    return rgb
