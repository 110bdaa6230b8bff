"""Paired fidelity: SSIM and PSNR of each translation against its true counterpart, by scikit-image.

For paired test sets (pix2pix facades, maps, Cityscapes) every input has a true output, so each
translation can be scored against it, image by image:

- SSIM: ``skimage.metrics.structural_similarity(target, translation, channel_axis=-1,
  data_range=255)`` on uint8 RGB, scikit-image's defaults otherwise (a 7×7 uniform window, the mean
  over the three channels);
- PSNR: ``skimage.metrics.peak_signal_noise_ratio(target, translation, data_range=255)``, that is
  10·log10(255² / MSE) with the MSE over every pixel and channel.

Sizes: a translation whose size differs from its target's is resized to the target's size with PIL
bicubic first (counted in `PairedFidelity.resized`); the target, the reference, is never resampled.

Identical images have MSE 0 and an infinite PSNR, which would make every mean and bootstrap interval
over the images infinite too. So each PSNR is capped at `PSNR_CAP_DB` (100 dB), and how many were
capped is counted (`PairedFidelity.capped`). The cap lies far above what translations reach
(image-to-image outputs score roughly 10 to 30 dB); two 8-bit 256×256 images differing by one level
in one value score 101 dB, so whatever is capped is identical or all but identical.

Per-image values are kept, in input order, so that a report can bootstrap over images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from pipeline.core.errors import PipelineError
from pipeline.core.images import read_rgb, resize_to
from pipeline.core.progress import progress

PSNR_CAP_DB = 100.0
DATA_RANGE = 255
MIN_SIDE = 7  # SSIM's default 7×7 window must fit in the image

ImageLike = str | os.PathLike | np.ndarray


@dataclass(frozen=True)
class PairedFidelity:
    """Per-image SSIM and PSNR of translations against their targets, in input order."""

    ssim: np.ndarray  # (N,), in [-1, 1]; 1 for identical images
    psnr: np.ndarray  # (N,), dB, at most PSNR_CAP_DB
    resized: int  # translations resized (bicubic) to their target's size first
    capped: int  # PSNRs capped at PSNR_CAP_DB (identical, or all but identical, images)

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim))

    @property
    def mean_psnr(self) -> float:
        return float(np.mean(self.psnr))


def pair_fidelity(translation: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """SSIM and PSNR (dB, capped at `PSNR_CAP_DB`) of one translation against its target, both
    ``(H, W, 3)`` uint8 of one size."""
    for name, pixels in (("translation", translation), ("target", target)):
        _check_pixels(pixels, name)
    if translation.shape != target.shape:
        raise ValueError(f"translation {translation.shape} and target {target.shape} differ in size")
    if min(target.shape[:2]) < MIN_SIDE:
        raise PipelineError(
            f"an image of {target.shape[1]}x{target.shape[0]} is too small for SSIM's "
            f"{MIN_SIDE}x{MIN_SIDE} window: score images of at least {MIN_SIDE} pixels a side"
        )
    ssim = structural_similarity(target, translation, channel_axis=-1, data_range=DATA_RANGE)
    if mean_squared_error(target, translation) == 0:
        return float(ssim), PSNR_CAP_DB  # skimage would divide by zero (and warn) for inf
    psnr = peak_signal_noise_ratio(target, translation, data_range=DATA_RANGE)
    return float(ssim), float(min(psnr, PSNR_CAP_DB))


def paired_fidelity(translations: Sequence[ImageLike], targets: Sequence[ImageLike]) -> PairedFidelity:
    """SSIM and PSNR of each translation against the target at the same position.

    Each item is an image file (read as 8-bit RGB, `pipeline.core.images.read_rgb`) or an
    ``(H, W, 3)`` uint8 array. A translation of another size is resized to its target's size with
    PIL bicubic first. Raises `PipelineError` for lists of different lengths, an empty list, or a
    file that cannot be read.
    """
    if len(translations) != len(targets):
        raise PipelineError(
            f"{len(translations)} translations but {len(targets)} targets: "
            "paired scores need one target per translation"
        )
    if not translations:
        raise PipelineError("no image pairs to score: check the image folders")
    ssim, psnr = np.empty(len(targets)), np.empty(len(targets))
    resized = 0
    with progress(total=len(targets), desc="SSIM/PSNR", unit="image") as bar:
        for index, (translation_item, target_item) in enumerate(zip(translations, targets, strict=True)):
            target = _pixels(target_item, "target")
            translation = _pixels(translation_item, "translation")
            if translation.shape[:2] != target.shape[:2]:
                translation = resize_to(translation, target.shape, Image.Resampling.BICUBIC)
                resized += 1
            ssim[index], psnr[index] = pair_fidelity(translation, target)
            bar.update()
    for values in (ssim, psnr):
        values.setflags(write=False)
    return PairedFidelity(ssim, psnr, resized, int(np.sum(psnr >= PSNR_CAP_DB)))


def _pixels(item: ImageLike, name: str) -> np.ndarray:
    if isinstance(item, np.ndarray):
        _check_pixels(item, name)
        return item
    return read_rgb(item, fix="replace it with a readable image")


def _check_pixels(pixels: np.ndarray, name: str) -> None:
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"the {name} must be (H, W, 3) uint8 RGB, got {pixels.shape} {pixels.dtype}")
