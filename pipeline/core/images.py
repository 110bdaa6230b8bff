"""Image files and tensors, one way each: reading RGB images and class-id masks, resizing, the [-1, 1] range.

The networks see images as float NCHW in [-1, 1] (the generators' tanh range): `to_model_range` maps
uint8 [0, 255] there and `to_uint8` maps generator outputs back, rounded as torchvision's save_image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from pipeline.core.errors import PipelineError

_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_WIDE_INTEGER_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def to_rgb(image: Image.Image) -> Image.Image:
    """A decoded image as 8-bit RGB, every kind converted on purpose rather than by PIL's defaults.

    - The EXIF orientation is applied: a phone photo stored sideways is translated upright, as every
      viewer shows it.
    - 16-bit (and 32-bit integer) greyscale is scaled from 0-65535 to 0-255: PIL's own conversion
      clips at 255, which turns a 16-bit image white. Float greyscale is taken as 0-1.
    - A palette image goes through its palette, its transparent index becoming alpha.
    - Alpha is composited over black, the colour of void in a label map (PIL would keep whatever
      colour the transparent pixels happen to hold).
    - Greyscale and 1-bit images repeat their channel; CMYK, YCbCr and LAB use PIL's conversion.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in _WIDE_INTEGER_MODES:
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(wide * 255 / 65535), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.rint(np.clip(np.asarray(image), 0, 1) * 255).astype(np.uint8))
    elif image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def read_rgb(
    path: str | os.PathLike,
    size: int | None = None,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
    fix: str = "remove or replace it",
) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 (`to_rgb`), resized to ``size x size`` (with `resample`)
    when given.

    A file that cannot be decoded is a `PipelineError` naming it, with `fix` as the way out.
    """
    try:
        with Image.open(path) as image:
            image = to_rgb(image)
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), resample)
            return np.asarray(image)
    except _UNREADABLE as exc:
        raise PipelineError(f"cannot read image {path} ({exc}): {fix}") from None


def read_mask(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """A class-id mask (mode L) as ``(H, W)`` uint8 train ids (255 void); nearest-resized when `size`
    is given, since blending ids invents classes."""
    try:
        with Image.open(path) as image:
            if image.mode != "L":
                raise PipelineError(f"{path} is not a class-id mask (mode {image.mode}, expected L)")
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.NEAREST)
            return np.asarray(image)
    except _UNREADABLE as exc:
        raise PipelineError(f"cannot read mask {path} ({exc}): re-run the split stage") from None


def resize_to(pixels: np.ndarray, shape: tuple[int, ...], resample: Image.Resampling) -> np.ndarray:
    """`pixels` resized to height and width ``shape[:2]`` when they differ."""
    height, width = shape[:2]
    if pixels.shape[:2] == (height, width):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((width, height), resample))


def save_png(pixels: np.ndarray, path: str | os.PathLike) -> None:
    """Lossless: JPEG artefacts would change every score computed from the file."""
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], any layout."""
    return images.float() / 127.5 - 1.0


def hwc_to_model(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, H, W)`` in [-1, 1]."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {tuple(images.shape)}")
    return to_model_range(images.permute(0, 3, 1, 2))


def stack_to_model(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Same-size uint8 ``(H, W, 3)`` arrays -> one float NCHW batch in [-1, 1]."""
    return hwc_to_model(torch.from_numpy(np.stack(images)))


def to_uint8(batch: torch.Tensor) -> np.ndarray:
    """Model output NCHW in [-1, 1] -> uint8 ``(N, H, W, 3)``, rounded like torchvision's save_image."""
    scaled = ((batch.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def list_images(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    """Image files directly inside `folder` (by suffix, case-insensitive), sorted by name; hidden skipped."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
    )
