"""The unpaired training data: domain A (Cityscapes: street photos) and domain B (colour label maps).

Both domains are decoded once into uint8 tensors held in memory (2975 images at 143x143 are 180 MB),
so a training step does no file I/O; cropping, flipping and scaling to [-1, 1] are tensor ops that
run wherever the tensors live (CPU here; the GPU once the fast path moves them there).

Sampling: an epoch has max(len(A), len(B)) examples, as in the reference's unaligned dataset, and
photos and label maps are drawn independently, so no photo is tied to a label map. Unlike the
reference, which takes domain B images at random *with* replacement (`random.randint`), both domains
are drawn from a fresh seeded permutation per epoch (without replacement, the smaller domain
wrapping around). Each image gets its own random crop and horizontal flip (paper: 143 -> 128,
flipped with probability 1/2).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.core.images import read_rgb, to_model_range
from pipeline.data.dataset import read_split_info
from pipeline.data.manifest import LABEL_SUBSET, PHOTO_SUBSET, read_manifest, sorted_by_id

__all__ = ["LABEL_SUBSET", "PHOTO_SUBSET", "TrainingDomains", "UnpairedSampler", "load_training_domains"]


@dataclasses.dataclass
class TrainingDomains:
    """Decoded training images, uint8 NCHW (RGB), every image load_size x load_size."""

    photos: torch.Tensor  # domain A
    labels: torch.Tensor  # domain B
    photo_ids: list[str]
    label_ids: list[str]


def _read_subset(split_dir: Path, subset: str) -> pd.DataFrame:
    rows = read_manifest(split_dir, subset=subset)
    if rows.empty:
        raise PipelineError(f"{split_dir}/manifest.csv lists no `{subset}` images: rerun the split stage")
    return sorted_by_id(rows)


def load_domain(
    split_dir: str | os.PathLike,
    subset: str,
    load_size: int,
    max_images: int | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Decode one training domain to uint8 (N, 3, load_size, load_size); ids in numeric order.

    `max_images` keeps the first N ids (deterministic, so every variant sees the same subset). Images
    stored at another size are resized: bicubic (antialiased by PIL), but Cityscapes label maps (domain
    B of a split with classes, `pipeline.data.dataset`) nearest, which keeps their colours exact.
    """
    split_dir = Path(split_dir)
    rows = _read_subset(split_dir, subset)
    if max_images is not None:
        rows = rows.iloc[:max_images]
    label_maps = subset == LABEL_SUBSET and read_split_info(split_dir).classes is not None
    resample = Image.Resampling.NEAREST if label_maps else Image.Resampling.BICUBIC
    arrays = [
        read_rgb(split_dir / path, load_size, resample, "rerun the split stage") for path in rows["path"]
    ]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, list(rows["image_id"])


def load_training_domains(
    split_dir: str | os.PathLike, load_size: int, max_images: int | None = None
) -> TrainingDomains:
    """Both unpaired domains of `split_dir` (see `load_domain`)."""
    photos, photo_ids = load_domain(split_dir, PHOTO_SUBSET, load_size, max_images)
    labels, label_ids = load_domain(split_dir, LABEL_SUBSET, load_size, max_images)
    return TrainingDomains(photos=photos, labels=labels, photo_ids=photo_ids, label_ids=label_ids)


def crop_and_flip(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, crop_size: int
) -> torch.Tensor:
    """Crop image i at (top[i], left[i]), mirrored where flip[i]: one gather, no per-image Python work."""
    return _gather_crops(images, None, top, left, flip, crop_size)


def _gather_crops(
    images: torch.Tensor,
    index: torch.Tensor | None,
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor,
    crop_size: int,
) -> torch.Tensor:
    offsets = torch.arange(crop_size, device=images.device)
    rows = top[:, None] + offsets  # (B, crop)
    cols = left[:, None] + offsets
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    if index is None:
        index = torch.arange(top.shape[0], device=images.device)
    # Advanced indices around the channel slice put their dims first: (B, crop, crop, C).
    return (
        images[index[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
    )


def sample_crops(
    images: torch.Tensor,
    index: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor,
    crop_size: int,
) -> torch.Tensor:
    """Images `index` of a uint8 domain tensor, cropped and flipped, as float in [-1, 1], in one gather.

    Pure tensor ops with fixed shapes on the device of `images` (the draws must live there too), so the
    fast path runs it on the GPU inside a captured step.
    """
    return to_model_range(_gather_crops(images, index, top, left, flip, crop_size))


DRAW_FIELDS = ("index_A", "top_A", "left_A", "flip_A", "index_B", "top_B", "left_B", "flip_B")


@dataclasses.dataclass
class BatchDraw:
    """Everything random about one batch, drawn on the CPU: which photos and label maps, where each is
    cropped, whether it is flipped. Each field is (batch,) int64 (flips 0/1)."""

    index_A: torch.Tensor
    top_A: torch.Tensor
    left_A: torch.Tensor
    flip_A: torch.Tensor
    index_B: torch.Tensor
    top_B: torch.Tensor
    left_B: torch.Tensor
    flip_B: torch.Tensor

    def pack(self) -> torch.Tensor:
        """(8, batch) int64: one tensor, so the fast path moves a batch's draws with one copy."""
        return torch.stack([getattr(self, name).long() for name in DRAW_FIELDS])

    @classmethod
    def unpack(cls, packed: torch.Tensor) -> BatchDraw:
        return cls(*packed[: len(DRAW_FIELDS)].unbind(0))

    def rows(self, start: int, stop: int) -> BatchDraw:
        """This draw's images [start, stop) (a DDP rank's share of the global batch)."""
        return BatchDraw(*(getattr(self, name)[start:stop] for name in DRAW_FIELDS))

    def to(self, device: torch.device | str) -> BatchDraw:
        return BatchDraw(*(getattr(self, name).to(device) for name in DRAW_FIELDS))


def materialize(
    draw: BatchDraw, photos: torch.Tensor, labels: torch.Tensor, crop_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (real_A, real_B) batch a draw describes, on the device of `photos`/`labels` (and `draw`)."""
    real_A = sample_crops(photos, draw.index_A, draw.top_A, draw.left_A, draw.flip_A != 0, crop_size)
    real_B = sample_crops(labels, draw.index_B, draw.top_B, draw.left_B, draw.flip_B != 0, crop_size)
    return real_A, real_B


class UnpairedSampler:
    """Seeded, resumable stream of (real_A, real_B) batches in [-1, 1].

    One step takes `batch_size` photos and `batch_size` label maps from per-epoch permutations of each
    domain. The smaller domain wraps around (a second permutation). Its whole state
    (generator, permutations, position) is in `state_dict`, so a resumed run draws exactly what an
    uninterrupted run would have.

    `next_draw` only draws (CPU, a few small tensors); `materialize` turns a draw into images wherever
    the domain tensors live. `next_batch` does both on the sampler's own (CPU) tensors.
    """

    def __init__(
        self,
        domains: TrainingDomains,
        crop_size: int,
        batch_size: int,
        generator: torch.Generator,
        flip: bool = True,
    ):
        self.photos, self.labels = domains.photos, domains.labels
        size = self.photos.shape[-1]
        if crop_size > size or self.labels.shape[-1] != size:
            raise PipelineError(f"crop_size {crop_size} does not fit the {size}px training images")
        self.crop_size, self.batch_size, self.flip = crop_size, batch_size, flip
        self.generator = generator
        # Drop the last partial batch: every step has the same shape.
        self.steps_per_epoch = max(len(self.photos), len(self.labels)) // batch_size
        if self.steps_per_epoch == 0:
            raise PipelineError(f"batch_size {batch_size} exceeds the number of training images")
        self.position = self.steps_per_epoch  # start of the first epoch draws the first permutations
        self.perm_A = self.perm_B = torch.empty(0, dtype=torch.long)

    def _new_epoch(self) -> None:
        n = self.steps_per_epoch * self.batch_size
        self.perm_A = self._permutation(len(self.photos), n)
        self.perm_B = self._permutation(len(self.labels), n)
        self.position = 0

    def _permutation(self, domain_size: int, length: int) -> torch.Tensor:
        repeats = -(-length // domain_size)
        perms = [torch.randperm(domain_size, generator=self.generator) for _ in range(repeats)]
        return torch.cat(perms)[:length]

    def _crop_draw(self, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = self.photos.shape[-1]
        top = torch.randint(size - self.crop_size + 1, (count,), generator=self.generator)
        left = torch.randint(size - self.crop_size + 1, (count,), generator=self.generator)
        flip = torch.rand(count, generator=self.generator) < 0.5
        if not self.flip:
            flip = torch.zeros_like(flip)
        return top, left, flip.long()

    def next_draw(self) -> BatchDraw:
        """The next batch's random choices (CPU tensors); advances the stream."""
        if self.position >= self.steps_per_epoch:
            self._new_epoch()
        window = slice(self.position * self.batch_size, (self.position + 1) * self.batch_size)
        self.position += 1
        index_A = self.perm_A[window]
        top_A, left_A, flip_A = self._crop_draw(len(index_A))
        index_B = self.perm_B[window]
        top_B, left_B, flip_B = self._crop_draw(len(index_B))
        return BatchDraw(index_A, top_A, left_A, flip_A, index_B, top_B, left_B, flip_B)

    def materialize(self, draw: BatchDraw) -> tuple[torch.Tensor, torch.Tensor]:
        """The images of `draw`, from the sampler's own domain tensors."""
        return materialize(draw.to(self.photos.device), self.photos, self.labels, self.crop_size)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (real_A photos, real_B label maps), float (B, 3, crop, crop) in [-1, 1]."""
        return self.materialize(self.next_draw())

    def state_dict(self) -> dict:
        return {
            "rng": self.generator.get_state(),
            "perm_A": self.perm_A.clone(),
            "perm_B": self.perm_B.clone(),
            "position": self.position,
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])
        self.perm_A, self.perm_B, self.position = state["perm_A"], state["perm_B"], state["position"]
