"""The `split` stage: pix2pix Cityscapes pairs -> unpaired training domains, val triples, evaluator pairs.

Two protocols for the unpaired training domains (`split.protocol`):

- ``disjoint`` (the default): train ids are shuffled with a seeded permutation and halved; street
  photos (domain A) come from one half and colour label maps (domain B) from the other, so the
  generators never see a true pair (a stricter setting than the paper's);
- ``paper``: every train photo is in domain A and every train label map in domain B, as in the paper
  and the reference code; the pairs are broken only by sampling the two domains independently.

Val keeps its aligned (photo, label map, class-id mask) triples for scoring, and every train photo
is kept with its class-id mask for the FCN judge. Output is written to a temporary folder and moved
into place whole, so a killed run never leaves a half-written split.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core.config import check_range
from pipeline.core.errors import PipelineError
from pipeline.core.fileio import publish_dir, staging_dir, write_json
from pipeline.core.progress import progress
from pipeline.data.labels import decode_label_map
from pipeline.data.manifest import COLUMNS, MANIFEST, SUMMARY, image_id_key

ARCHIVE_SIZE = (512, 256)  # pix2pix Cityscapes: 256x256 photo | 256x256 label map
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class SplitConfig:
    """Params section `split`."""

    seed: int = 0  # the permutation that halves train (disjoint protocol)
    protocol: Literal["disjoint", "paper"] = "disjoint"
    load_size: int = 143
    test_size: int = 128
    on_bad_image: Literal["error", "skip"] = "error"
    workers: int = 2

    # How fast, not what: the split's files do not depend on it, so it is not a DVC params dep.
    OUTPUT_NEUTRAL_KEYS: ClassVar[frozenset[str]] = frozenset({"workers"})

    def __post_init__(self) -> None:
        check_range(self, "seed", ge=0)
        check_range(self, "test_size", ge=16)
        check_range(self, "load_size", ge=self.test_size)
        check_range(self, "workers", ge=1)


@dataclass(frozen=True)
class _Job:
    """One archive image and every file the split makes from it."""

    source: Path
    image_id: str
    val: bool  # a val triple; otherwise an evaluator pair, and in the training domains below
    photo_domain: bool  # its photo is in domain A (train_photo)
    label_domain: bool  # its label map is in domain B (train_label)
    load_size: int
    test_size: int


class BadImage(Exception):
    """An archive image that cannot be decoded or has the wrong size."""


def _read_pair(path: Path) -> tuple[Image.Image, Image.Image]:
    try:
        with Image.open(path) as image:
            image.load()
            image = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(f"{path}: cannot decode ({exc})") from None
    if image.size != ARCHIVE_SIZE:
        raise BadImage(
            f"{path}: size {image.size[0]}x{image.size[1]}, expected {ARCHIVE_SIZE[0]}x{ARCHIVE_SIZE[1]}"
        )
    half = image.width // 2
    return image.crop((0, 0, half, image.height)), image.crop((half, 0, image.width, image.height))


def _resize_photo(photo: Image.Image, size: int) -> Image.Image:
    return photo.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)


def _resize_label(label: Image.Image, size: int) -> Image.Image:
    # Nearest neighbour: a label map must keep the table's exact colours, never blends of two classes.
    return label.resize((size, size), Image.Resampling.NEAREST)


def _save(image: Image.Image, root: Path, relative: str) -> tuple[str, int, int]:
    image.save(root / relative, format="PNG", compress_level=1)
    return relative, image.width, image.height


def _mask(label: Image.Image) -> Image.Image:
    return Image.fromarray(decode_label_map(np.asarray(label)), mode="L")


def _process(job: _Job, root: Path) -> list[dict]:
    """Write every file made from one archive image; return its manifest rows."""
    photo, label = _read_pair(job.source)
    rows: list[tuple[str, str, tuple[str, int, int]]] = []
    test_photo = _resize_photo(photo, job.test_size)
    test_label = _resize_label(label, job.test_size)
    test_mask = _mask(test_label)
    if job.val:
        rows.append(("val", "photo", _save(test_photo, root, f"val/photo/{job.image_id}.png")))
        rows.append(("val", "label", _save(test_label, root, f"val/label/{job.image_id}.png")))
        rows.append(("val", "mask", _save(test_mask, root, f"val/mask/{job.image_id}.png")))
        return _rows(job, rows)
    rows.append(("evaluator", "photo", _save(test_photo, root, f"evaluator/photo/{job.image_id}.png")))
    rows.append(("evaluator", "mask", _save(test_mask, root, f"evaluator/mask/{job.image_id}.png")))
    if job.photo_domain:
        image = _resize_photo(photo, job.load_size)
        rows.append(("train_photo", "photo", _save(image, root, f"train_photo/{job.image_id}.png")))
    if job.label_domain:
        image = _resize_label(label, job.load_size)
        rows.append(("train_label", "label", _save(image, root, f"train_label/{job.image_id}.png")))
    return _rows(job, rows)


def _rows(job: _Job, rows: list[tuple[str, str, tuple[str, int, int]]]) -> list[dict]:
    return [
        {"image_id": job.image_id, "subset": subset, "kind": kind, "path": path, "width": w, "height": h}
        for subset, kind, (path, w, h) in rows
    ]


def _process_or_report(args: tuple[_Job, Path]) -> tuple[list[dict], str | None]:
    job, root = args
    try:
        return _process(job, root), None
    except BadImage as exc:
        return [], str(exc)


def _image_files(folder: Path) -> dict[str, Path]:
    """The archive images of `folder` by id, in id order."""
    if not folder.is_dir():
        raise PipelineError(f"{folder} not found: run the download stage first (`dvc repro download`)")
    files = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    if not files:
        raise PipelineError(f"{folder} holds no images: re-run the download stage (`dvc repro -f download`)")
    # Sorted so that the seeded permutation does not depend on the order the folder lists in.
    return {image_id: files[image_id] for image_id in sorted(files, key=image_id_key)}


def domain_halves(train_ids: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Split train ids into disjoint (photo domain, label domain) halves with a seeded permutation."""
    order = np.random.default_rng(seed).permutation(len(train_ids))
    shuffled = [train_ids[i] for i in order]
    middle = (len(shuffled) + 1) // 2
    return sorted(shuffled[:middle], key=image_id_key), sorted(shuffled[middle:], key=image_id_key)


def _jobs(raw_dir: Path, cfg: SplitConfig) -> list[_Job]:
    train = _image_files(raw_dir / "train")
    val = _image_files(raw_dir / "val")
    if cfg.protocol == "paper":
        photo_ids = label_ids = set(train)
    else:
        halves = domain_halves(list(train), cfg.seed)
        photo_ids, label_ids = set(halves[0]), set(halves[1])
    jobs = [
        _Job(path, i, False, i in photo_ids, i in label_ids, cfg.load_size, cfg.test_size)
        for i, path in train.items()
    ]
    jobs += [_Job(path, i, True, False, False, cfg.load_size, cfg.test_size) for i, path in val.items()]
    return jobs


def split(raw_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: SplitConfig) -> dict:
    """Build the split under `out_dir` from the extracted archive at `raw_dir`; return its summary."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    jobs = _jobs(raw_dir, cfg)
    with staging_dir(out_dir) as tmp:
        for folder in (
            "train_photo",
            "train_label",
            "val/photo",
            "val/label",
            "val/mask",
            "evaluator/photo",
            "evaluator/mask",
        ):
            (tmp / folder).mkdir(parents=True)
        rows: list[dict] = []
        skipped: list[str] = []
        with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            results = pool.map(_process_or_report, [(job, tmp) for job in jobs], chunksize=32)
            for job_rows, problem in progress(results, total=len(jobs), desc="split", unit="img"):
                if problem is None:
                    rows.extend(job_rows)
                elif cfg.on_bad_image == "skip":
                    skipped.append(problem)
                else:
                    raise PipelineError(f"bad image {problem}; replace it or set split.on_bad_image: skip")
        rows.sort(key=lambda row: (row["subset"], row["kind"], image_id_key(row["image_id"])))
        manifest = pd.DataFrame(rows, columns=COLUMNS)
        manifest.to_csv(tmp / MANIFEST, index=False)
        summary = _summary(manifest, skipped, cfg)
        write_json(tmp / SUMMARY, summary)
        publish_dir(tmp, out_dir)
    return summary


def _summary(manifest: pd.DataFrame, skipped: list[str], cfg: SplitConfig) -> dict:
    counts = manifest.groupby(["subset", "kind"]).size()
    return {
        # Speed, not output: left out so that outputs stay byte-identical.
        "config": {k: v for k, v in asdict(cfg).items() if k not in cfg.OUTPUT_NEUTRAL_KEYS},
        "counts": {f"{subset}/{kind}": int(n) for (subset, kind), n in counts.items()},
        "skipped": skipped,
    }
