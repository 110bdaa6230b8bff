"""The `download` stage: fetch a dataset (an archive or a folder) and extract it safely into `data/raw`.

Any dataset in one of the CycleGAN field's layouts (`pipeline.data.archive`): the pix2pix paired
archives (cityscapes, facades, maps: ``train/`` with ``val/`` and/or ``test/``, each image A|B side by
side) or the CycleGAN repo's unpaired ones (horse2zebra.zip...: ``trainA/``, ``trainB/``, ``testA/``,
``testB/``), as an archive (tar or zip) or a folder of the user's own images. The layout is read from
the data itself; ``data.layout`` names it when a folder holds both. Whatever the archive's dataset
folder is called, it lands at ``data/raw/dataset/`` (`DATASET_DIR`), and its name, layout, split
folders and image counts are in ``data/raw/provenance.json``.

The output folder is a DVC output, so it must be either complete and valid or untouched. Everything
in flight therefore lives in a scratch folder *beside* it (``<out_dir.parent>/.download/``):

- the HTTP download, partial or finished, with its record (`pipeline.data.fetch`): kept so that a
  re-run resumes, or does not fetch 100 MB again;
- ``staged-*/``    the extraction (or folder copy), moved onto ``out_dir`` only after its layout
                   checked out (counts per split, image sizes) and its provenance file is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from pipeline import __version__
from pipeline.core.config import check_range
from pipeline.core.errors import PipelineError
from pipeline.core.fileio import publish_dir, staging_dir
from pipeline.core.progress import progress
from pipeline.core.urls import redact_url
from pipeline.data.archive import (
    IMAGE_SUFFIXES,
    PAIRED_SPLITS,
    SOURCE_HINT,
    SPLIT_FOLDERS,
    UNPAIRED_SPLITS,
    CheckedArchive,
    check_archive,
    detect_layout,
    extract_archive,
    sniff_archive,
)
from pipeline.data.fetch import SOURCE_ENV, fetch_url

PROVENANCE_NAME = "provenance.json"
SCRATCH_NAME = ".download"
DATASET_DIR = "dataset"  # data/raw/dataset/<split>/: the split stage's input, whatever the dataset
JUNK = shutil.ignore_patterns("__MACOSX", ".DS_Store", "._*")  # macOS metadata in users' folders

SourceKind = Literal["url", "archive", "folder"]


@dataclass
class DataConfig:
    """Params section `data`: where the archive comes from and what a valid extraction looks like."""

    source: str
    sha256: str | None = None  # expected sha256 of the archive (archives only; ignored for folders)
    retries: int = 5  # extra attempts after a transient HTTP error
    timeout_s: float = 60.0  # connect and per-read timeout
    backoff_s: float = 1.0  # first retry waits this long, doubling each time (capped at 60 s)
    layout: Literal["auto", "paired", "unpaired"] = "auto"  # auto: read from the split folders
    # Images per split folder, checked for the folders the data has (e.g. the pix2pix Cityscapes
    # archive: train 2975, val 500); null checks nothing.
    expected_counts: dict[str, int] | None = None
    image_size: tuple[int, int] | None = None  # (width, height) of every paired A|B image; null: any

    # How the archive is fetched and what a valid one looks like: the extracted files (the output) are
    # the archive's whatever these are, so only `source` and `sha256` are DVC params deps.
    OUTPUT_NEUTRAL_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"retries", "timeout_s", "backoff_s", "expected_counts", "image_size"}
    )

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise ValueError("source must be a URL, an archive path or a folder")
        if self.sha256 is not None:
            self.sha256 = self.sha256.strip().lower()
            if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
                raise ValueError(f"sha256 must be 64 hex digits or null, got {self.sha256!r}")
        check_range(self, ("retries", "backoff_s"), ge=0)
        check_range(self, "timeout_s", gt=0)
        if self.expected_counts is not None and (
            not self.expected_counts or any(n < 1 for n in self.expected_counts.values())
        ):
            raise ValueError(
                f"expected_counts must map each split to a positive count, got {self.expected_counts}"
            )
        if self.image_size is not None:
            if len(self.image_size) != 2 or min(self.image_size) < 1:
                raise ValueError(f"image_size must be [width, height], got {list(self.image_size)}")
            self.image_size = (int(self.image_size[0]), int(self.image_size[1]))


@dataclass(frozen=True)
class Source:
    """Where the data comes from, after the environment override and path resolution."""

    location: str  # the URL, or the absolute local path
    kind: SourceKind

    @property
    def shown(self) -> str:
        """`location` as messages and provenance.json may show it: credentials and query redacted."""
        return redact_url(self.location)


def resolve_source(cfg: DataConfig) -> Source:
    """Pick the data source: `CYCLEGAN_DATA_SOURCE` if set and non-empty, else `data.source`.

    Relative local paths are taken relative to the current directory (DVC runs stages from the
    project root). A local path must exist; it is an archive if it is a file, a folder otherwise.
    """
    override = os.environ.get(SOURCE_ENV, "").strip()
    raw = override or cfg.source.strip()
    origin = SOURCE_ENV if override else "data.source"
    scheme = urlparse(raw).scheme.lower()
    if scheme in ("http", "https"):
        return Source(raw, "url")
    if scheme == "file":
        raw = unquote(urlparse(raw).path)
    elif scheme and len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise PipelineError(
            f"{origin} {redact_url(raw)!r} uses unsupported scheme {scheme}://: use http(s), or a local path"
        )
    path = (Path.cwd() / Path(raw).expanduser()).resolve()
    if path.is_dir():
        return Source(str(path), "folder")
    if path.is_file():
        return Source(str(path), "archive")
    raise PipelineError(f"{origin} {raw!r} does not exist ({path}): fix the path, or {SOURCE_HINT}")


def download(cfg: DataConfig, out_dir: Path) -> dict[str, Any]:
    """Fetch (or take) the dataset, check its layout and put it at `out_dir` in one move.

    `out_dir` ends up holding ``dataset/<split>/<image>`` and ``provenance.json``; on any failure an
    existing `out_dir` is left exactly as it was. Returns the provenance dict.
    """
    out_dir = Path(out_dir).absolute()
    scratch = out_dir.parent / SCRATCH_NAME
    source = resolve_source(cfg)
    try:
        with staging_dir(out_dir) as staged:
            provenance = _stage(cfg, source, scratch, staged)
            publish_dir(staged, out_dir)
        return provenance
    finally:
        _remove_if_empty(scratch)


def _stage(cfg: DataConfig, source: Source, scratch: Path, staged: Path) -> dict[str, Any]:
    """The dataset and its provenance file in `staged`, checked; returns the provenance."""
    skipped = 0
    if source.kind == "folder":
        name, layout, size = _copy_dataset_folder(Path(source.location), staged, cfg.layout)
        digest = None
    else:
        archive = Path(source.location)
        if source.kind == "url":
            archive = fetch_url(source.location, scratch, cfg.retries, cfg.timeout_s, cfg.backoff_s)
        checked = _checked_archive(archive, source, cfg)
        digest, size, name, layout, skipped = (
            checked.sha256,
            archive.stat().st_size,
            checked.dataset,
            checked.layout,
            checked.skipped,
        )
        extract_archive(checked, staged)
        os.replace(staged / checked.dataset, staged / DATASET_DIR)
    counts = check_layout(staged / DATASET_DIR, layout, cfg, source.shown)
    provenance = {
        "source": source.shown,
        "source_kind": source.kind,
        "sha256": digest,
        "bytes": size,
        "dataset": name,
        "layout": layout,
        "counts": counts,
        "skipped_junk": skipped,
        "pipeline_version": __version__,
    }
    (staged / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def _checked_archive(archive: Path, source: Source, cfg: DataConfig) -> CheckedArchive:
    """Sniff the archive, check every member and its checksum before anything is extracted."""
    downloaded = source.kind == "url"
    try:
        sniff_archive(archive)
        checked = check_archive(archive)
    except PipelineError as exc:
        if downloaded:  # garbage in the cache would be reused forever: drop it
            archive.unlink(missing_ok=True)
            raise PipelineError(f"{exc} (it was downloaded from {source.shown}; deleted)") from None
        raise
    if cfg.layout != "auto" and checked.layout != cfg.layout:
        raise PipelineError(
            f"{archive} is a {checked.layout} dataset ({', '.join(checked.splits)}), but data.layout is "
            f"{cfg.layout}: set data.layout: auto, or point data.source at a {cfg.layout} dataset"
        )
    if cfg.sha256 and checked.sha256 != cfg.sha256:
        fix = f"delete {archive} to download it again" if downloaded else "use an intact copy"
        raise PipelineError(
            f"sha256 mismatch for {archive}: expected {cfg.sha256}, got {checked.sha256}; {fix}, "
            f"or fix data.sha256 in params.yaml if the expected value is wrong"
        )
    return checked


def dataset_folder(folder: Path, layout: str = "auto") -> tuple[Path, str, list[str]]:
    """The dataset inside a user's folder, its layout and the split folders it uses.

    The folder is the dataset itself (its subfolders are split folders) or holds exactly one folder
    that is. A folder that holds both layouts' split folders needs ``data.layout`` to say which.
    """

    def splits(path: Path) -> set[str]:
        return {p.name for p in path.iterdir() if p.is_dir() and p.name in SPLIT_FOLDERS}

    tree = folder
    if not splits(folder):
        children = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]
        if len(children) == 1 and splits(children[0]):
            tree = children[0]
    found = splits(tree)
    if layout != "auto":
        found &= set(PAIRED_SPLITS if layout == "paired" else UNPAIRED_SPLITS)
    try:
        detected = detect_layout(found)
    except PipelineError as exc:
        both = found & set(PAIRED_SPLITS) and found & set(UNPAIRED_SPLITS)
        hint = "; set data.layout to paired or unpaired" if both else ""
        raise PipelineError(f"{tree}: {exc}{hint}") from None
    return tree, detected, [s for s in SPLIT_FOLDERS if s in found]


def _copy_dataset_folder(folder: Path, staged: Path, layout: str) -> tuple[str, str, int]:
    """Copy a user's dataset folder (its split folders of images) into `staged/dataset`; returns the
    dataset's name, its layout and the bytes copied.

    Copied, not hard-linked: DVC makes its cached files read-only and may move them, and a hard
    link would share that inode with the user's own copy (which they might edit, or which might sit
    on another filesystem anyway). 100 MB copies in about a second.
    """
    tree, detected, splits = dataset_folder(folder, layout)
    files = [p for split in splits for p in (tree / split).iterdir() if p.is_file()]
    copied = 0
    bar = progress(total=len(files), unit="file", desc="copy")

    def copy(src: str, dst: str) -> str:
        nonlocal copied
        shutil.copy2(src, dst)
        copied += os.path.getsize(dst)
        bar.update()
        return dst

    with bar:
        for split in splits:
            shutil.copytree(tree / split, staged / DATASET_DIR / split, copy_function=copy, ignore=JUNK)
    return tree.name, detected, copied


def check_layout(top: Path, layout: str, cfg: DataConfig, source: str) -> dict[str, int]:
    """Check ``top/<split>/<image>``: every split folder has images, the counts `cfg` expects, and every
    image opens; a paired image is an A|B pair (even width, and `cfg.image_size` when set).

    Sizes come from the image headers only (PIL opens lazily), so 3475 images take a fraction of a
    second. Returns the counts; raises `PipelineError` naming the split or the file that is off.
    """
    counts = {}
    for split in sorted(p.name for p in top.iterdir() if p.is_dir()):
        images = sorted(p for p in (top / split).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        expected = (cfg.expected_counts or {}).get(split)
        if not images or (expected is not None and len(images) != expected):
            wanted = f"expected {expected}" if expected is not None else "expected some"
            raise PipelineError(
                f"unexpected layout in {source}: {split}/ holds {len(images)} images, {wanted}; {SOURCE_HINT}"
            )
        for image in images:
            _check_image(image, top, layout, cfg.image_size, source)
        counts[split] = len(images)
    return counts


def _check_image(
    image: Path, top: Path, layout: str, image_size: tuple[int, int] | None, source: str
) -> None:
    name = image.relative_to(top).as_posix()
    try:
        with Image.open(image) as opened:
            size = opened.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise PipelineError(
            f"unexpected layout in {source}: {name} is not a readable image ({exc})"
        ) from None
    if layout != "paired":
        return
    if image_size is not None and size != image_size:
        raise PipelineError(
            f"unexpected layout in {source}: {name} is {size[0]}x{size[1]}, expected "
            f"{image_size[0]}x{image_size[1]}; {SOURCE_HINT}"
        )
    if size[0] % 2 or size[0] < 2:
        raise PipelineError(
            f"unexpected layout in {source}: {name} is {size[0]}x{size[1]}, not an A|B pair side by side "
            "(an even width): a paired dataset's images hold both domains"
        )


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # it holds a cached download (or is gone): keep it
        folder.rmdir()
