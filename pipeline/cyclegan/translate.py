"""Run a variant's generators over images: G (domain A -> B; Cityscapes: photo -> label map) and F (B -> A).

`translate_val` is the DVC stage's work: every test image of domain A through G and every one of
domain B through F, saved as PNG (JPEG artefacts would change the scores) under their ids, in one
folder per direction, named by the dataset's domains (`pipeline.data.dataset`). `translate_folder` is the
user-facing `cyclegan translate`: any folder of images, either direction, optional resize.
Both write into a staging folder and move the results into place only when all are complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image

from pipeline.core.config import check_range
from pipeline.core.device import resolve_device
from pipeline.core.errors import PipelineError
from pipeline.core.fileio import publish_dir, publish_entries, staging_dir
from pipeline.core.images import list_images as _list_images
from pipeline.core.images import read_rgb, resize_to, save_png, stack_to_model, to_uint8
from pipeline.core.progress import progress
from pipeline.cyclegan.checkpoint import LoadedGenerators, load_generators
from pipeline.data.dataset import read_split_info
from pipeline.data.manifest import read_manifest

# The generator halves the resolution twice: sides must be multiples of 4 (others are padded, then cropped).
SIDE_MULTIPLE = 4
STAGING_NAME = "cyclegan-translate"  # `cyclegan translate` stages in OUTPUT/.cyclegan-translate-staging-*
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif"})


@dataclass(frozen=True)
class TranslateConfig:
    """Params section `translate`."""

    batch_size: int = 16
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        check_range(self, "batch_size", ge=1)


def load_translator(checkpoint: str | os.PathLike, device: torch.device) -> LoadedGenerators:
    """The checkpoint's G and F on `device`; a clear `PipelineError` for a missing or foreign file."""
    path = Path(checkpoint)
    if path.is_dir():
        raise PipelineError(
            f"{path} is a folder: pass the checkpoint file inside it, e.g. {path / 'checkpoint.pt'}"
        )
    try:
        return load_generators(path, device=device)
    except PipelineError:
        raise
    except (KeyError, TypeError, RuntimeError) as exc:  # a dict of the right format but wrong contents
        raise PipelineError(
            f"{path} is not a CycleGAN generator checkpoint ({type(exc).__name__}: {exc})"
        ) from None


@torch.no_grad()
def run_generator(net: torch.nn.Module, images: Sequence[np.ndarray], device: torch.device) -> np.ndarray:
    """Translate a batch of same-size uint8 images; sides that are not multiples of 4 are reflect-padded."""
    batch = stack_to_model(images).to(device)
    height, width = batch.shape[-2:]
    pad_h, pad_w = -height % SIDE_MULTIPLE, -width % SIDE_MULTIPLE
    if pad_h or pad_w:
        # Reflection needs the pad smaller than the side; tiny images fall back to replicating edges.
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        batch = nnf.pad(batch, (0, pad_w, 0, pad_h), mode=mode)
    return to_uint8(net(batch)[..., :height, :width])


def _batches(
    paths: Sequence[Path], batch_size: int, size: int | None
) -> Iterator[tuple[list[Path], list[np.ndarray]]]:
    """Consecutive files grouped into batches of one image size (a size change starts a new batch)."""
    names: list[Path] = []
    images: list[np.ndarray] = []
    for path in paths:
        pixels = read_rgb(path)
        if size is not None:
            pixels = resize_to(pixels, (size, size), Image.Resampling.BICUBIC)
        if images and (len(images) == batch_size or pixels.shape != images[0].shape):
            yield names, images
            names, images = [], []
        names.append(path)
        images.append(pixels)
    if images:
        yield names, images


def _translate_files(
    net: torch.nn.Module,
    jobs: Sequence[tuple[Path, Path]],
    device: torch.device,
    batch_size: int,
    size: int | None,
    desc: str,
) -> int:
    """Translate each ``(source, target)`` file pair; returns how many were written."""
    targets = dict(jobs)
    written = 0
    with progress(total=len(jobs), desc=desc, unit="img") as bar:
        for sources, images in _batches([source for source, _ in jobs], batch_size, size):
            for source, pixels in zip(sources, run_generator(net, images, device), strict=True):
                save_png(pixels, targets[source])
            written += len(sources)
            bar.update(len(sources))
    return written


def _val_files(split_dir: Path, kind: str) -> list[tuple[str, Path]]:
    """``(val id, file)`` for every val image of `kind`, from the split manifest, in id order."""
    rows = read_manifest(split_dir, subset="val", kind=kind)
    if rows.empty:
        raise PipelineError(
            f"{split_dir} lists no val {kind} images: re-run the split stage (`dvc repro split`)"
        )
    files = [(str(row.image_id), split_dir / row.path) for row in rows.itertuples()]
    missing = [str(path) for _, path in files if not path.is_file()]
    if missing:
        raise PipelineError(
            f"{len(missing)} val file(s) in the manifest are missing, e.g. {missing[0]}: "
            "re-run the split stage (`dvc repro -f split`)"
        )
    return files


def translate_val(
    checkpoint: str | os.PathLike,
    split_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: TranslateConfig,
) -> dict[str, int]:
    """G on every test image of domain A and F on every one of domain B -> ``out_dir/<direction>/<id>.png``
    (Cityscapes: ``photo2label/``, ``label2photo/``).

    Returns the number of images written per direction.
    """
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    device = resolve_device(cfg.device, "translate.device")
    nets = load_translator(checkpoint, device)
    info = read_split_info(split_dir)
    inputs = {d: _val_files(split_dir, info.source_kind(d)) for d in info.directions}
    counts: dict[str, int] = {}
    with staging_dir(out_dir) as tmp:
        for direction in info.directions:
            (tmp / direction).mkdir()
            jobs = [(path, tmp / direction / f"{image_id}.png") for image_id, path in inputs[direction]]
            net = getattr(nets, info.generator(direction))
            counts[direction] = _translate_files(
                net, jobs, device, cfg.batch_size, None, f"{nets.variant} {direction}"
            )
        publish_dir(tmp, out_dir)
    return counts


def list_images(input_dir: Path) -> list[Path]:
    """Image files directly inside `input_dir` (by suffix), sorted by name; hidden files skipped."""
    if not input_dir.is_dir():
        raise PipelineError(f"input folder {input_dir} does not exist (or is not a folder)")
    files = _list_images(input_dir, IMAGE_SUFFIXES)
    if not files:
        raise PipelineError(f"{input_dir} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _check_output_folder(output_dir: Path, names: list[str]) -> None:
    """Refuse, before any work, an output folder that is a file or cannot be written, and outputs
    that would replace a folder."""
    if output_dir.exists() and not output_dir.is_dir():
        raise PipelineError(f"output folder {output_dir} is a file: choose a folder (it is made if missing)")
    existing = next(folder for folder in (output_dir, *output_dir.parents) if folder.exists())
    if not existing.is_dir():
        raise PipelineError(f"cannot make output folder {output_dir}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        why = "it is on a read-only file system" if read_only else "permission denied"
        raise PipelineError(f"cannot write into {existing} ({why}): choose an output folder you can write to")
    for name in names:
        target = output_dir / name
        if target.exists() and not target.is_file():
            raise PipelineError(f"{target} exists and is not a file: move it away, or choose another folder")


def translate_folder(
    checkpoint: str | os.PathLike,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    direction: str,
    device: str = "auto",
    batch_size: int = 16,
    size: int | None = None,
) -> int:
    """Translate every image in `input_dir` with the checkpoint's G or F, named by `direction` (a direction
    of the checkpoint's domains, e.g. ``photo2label`` -> G for Cityscapes, or ``G``/``F``).

    Writes ``output_dir/<stem>.png`` for each input (PNG whatever the input format), optionally
    resizing inputs to ``size x size`` first; returns the number written. Inputs are read as
    `pipeline.core.images.to_rgb` says (EXIF orientation, 16-bit, palette, alpha). Files already in
    `output_dir` are kept unless overwritten; the new ones appear only once all are done, all
    together. An output path that is a file, a folder that cannot be written, an unknown device or an
    unreadable image is a `PipelineError`, and then nothing is written.
    """
    if batch_size < 1:
        raise PipelineError(f"batch size must be >= 1, got {batch_size}")
    if size is not None and size < SIDE_MULTIPLE:
        raise PipelineError(f"size must be at least {SIDE_MULTIPLE} pixels, got {size}")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    files = list_images(input_dir)
    if output_dir.resolve() == input_dir.resolve():
        raise PipelineError(f"output folder {output_dir} is the input folder: choose another one")
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise PipelineError(
                f"{stems[path.stem].name} and {path.name} would both be written as "
                f"{path.stem}.png: rename one"
            )
        stems[path.stem] = path
    _check_output_folder(output_dir, [f"{stem}.png" for stem in stems])
    torch_device = resolve_device(device, "--device")
    nets = load_translator(checkpoint, torch_device)
    net = nets.generator(direction)
    # Staged inside the output folder (the user's folder may sit in one they cannot write to), as
    # .cyclegan-translate-staging-*: a killed run's is removed by the next run into the same folder.
    with staging_dir(output_dir / STAGING_NAME) as tmp:
        jobs = [(path, tmp / f"{path.stem}.png") for path in files]
        written = _translate_files(net, jobs, torch_device, batch_size, size, direction)
        publish_entries(tmp, output_dir)
    return written
