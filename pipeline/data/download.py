"""The `download` stage: fetch the pix2pix Cityscapes archive and extract it safely into `data/raw`.

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
from dataclasses import dataclass, field
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
    DATASET_FOLDER,
    SOURCE_HINT,
    CheckedArchive,
    check_archive,
    extract_archive,
    sniff_archive,
)
from pipeline.data.fetch import SOURCE_ENV, fetch_url

PROVENANCE_NAME = "provenance.json"
SCRATCH_NAME = ".download"
IMAGE_SUFFIX = ".jpg"

SourceKind = Literal["url", "archive", "folder"]


@dataclass
class DataConfig:
    """Params section `data`: where the archive comes from and what a valid extraction looks like."""

    source: str
    sha256: str | None = None  # expected sha256 of the archive (archives only; ignored for folders)
    retries: int = 5  # extra attempts after a transient HTTP error
    timeout_s: float = 60.0  # connect and per-read timeout
    backoff_s: float = 1.0  # first retry waits this long, doubling each time (capped at 60 s)
    # The pix2pix archive's layout; tests pass tiny stand-ins.
    expected_counts: dict[str, int] = field(default_factory=lambda: {"train": 2975, "val": 500})
    image_size: tuple[int, int] = (512, 256)  # (width, height) of every archive image

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
        if not self.expected_counts or any(n < 1 for n in self.expected_counts.values()):
            raise ValueError(
                f"expected_counts must map each split to a positive count, got {self.expected_counts}"
            )
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

    `out_dir` ends up holding ``cityscapes/{train,val}/N.jpg`` and ``provenance.json``; on any
    failure an existing `out_dir` is left exactly as it was. Returns the provenance dict.
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
    if source.kind == "folder":
        digest, size = None, _copy_dataset_folder(Path(source.location), staged)
    else:
        archive = Path(source.location)
        if source.kind == "url":
            archive = fetch_url(source.location, scratch, cfg.retries, cfg.timeout_s, cfg.backoff_s)
        checked = _checked_archive(archive, source, cfg)
        digest, size = checked.sha256, archive.stat().st_size
        extract_archive(checked, staged)
    counts = check_layout(staged, cfg.expected_counts, cfg.image_size, source.shown)
    provenance = {
        "source": source.shown,
        "source_kind": source.kind,
        "sha256": digest,
        "bytes": size,
        "counts": counts,
        "image_size": list(cfg.image_size),
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
    if cfg.sha256 and checked.sha256 != cfg.sha256:
        fix = f"delete {archive} to download it again" if downloaded else "use an intact copy"
        raise PipelineError(
            f"sha256 mismatch for {archive}: expected {cfg.sha256}, got {checked.sha256}; {fix}, "
            f"or fix data.sha256 in params.yaml if the expected value is wrong"
        )
    return checked


def _copy_dataset_folder(folder: Path, staged: Path) -> int:
    """Copy an extracted dataset into `staged/cityscapes`; return the bytes copied.

    Copied, not hard-linked: DVC makes its cached files read-only and may move them, and a hard
    link would share that inode with the user's own copy (which they might edit, or which might sit
    on another filesystem anyway). 100 MB copies in about a second.
    """
    # Accept the dataset folder itself (train/, val/) or its parent (cityscapes/train/, ...).
    tree = folder / DATASET_FOLDER if (folder / DATASET_FOLDER).is_dir() else folder
    files = [path for path in tree.rglob("*") if path.is_file()]
    copied = 0
    bar = progress(total=len(files), unit="file", desc="copy")

    def copy(src: str, dst: str) -> str:
        nonlocal copied
        shutil.copy2(src, dst)
        copied += os.path.getsize(dst)
        bar.update()
        return dst

    with bar:
        shutil.copytree(tree, staged / DATASET_FOLDER, copy_function=copy)
    return copied


def check_layout(
    root: Path, expected_counts: dict[str, int], image_size: tuple[int, int], source: str
) -> dict[str, int]:
    """Check ``root/cityscapes/<split>/*.jpg``: counts per split and every image's (width, height).

    Sizes come from the image headers only (PIL opens lazily), so 3475 images take a fraction of a
    second. Returns the counts; raises `PipelineError` naming the split or the file that is off.
    """
    top = root / DATASET_FOLDER
    if not top.is_dir():
        found = ", ".join(sorted(p.name for p in root.iterdir())) or "nothing"
        raise PipelineError(
            f"unexpected layout in {source}: no {DATASET_FOLDER}/ folder (found: {found}); {SOURCE_HINT}"
        )
    counts = {}
    for split, expected in expected_counts.items():
        images = sorted((top / split).glob(f"*{IMAGE_SUFFIX}")) if (top / split).is_dir() else []
        if len(images) != expected:
            raise PipelineError(
                f"unexpected layout in {source}: {DATASET_FOLDER}/{split}/ holds {len(images)} "
                f"{IMAGE_SUFFIX} images, expected {expected}; {SOURCE_HINT}"
            )
        for image in images:
            _check_image_size(image, top, image_size, source)
        counts[split] = len(images)
    return counts


def _check_image_size(image: Path, top: Path, image_size: tuple[int, int], source: str) -> None:
    name = f"{DATASET_FOLDER}/{image.relative_to(top).as_posix()}"
    try:
        with Image.open(image) as opened:
            size = opened.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise PipelineError(
            f"unexpected layout in {source}: {name} is not a readable image ({exc})"
        ) from None
    if size != image_size:
        raise PipelineError(
            f"unexpected layout in {source}: {name} is {size[0]}x{size[1]}, expected "
            f"{image_size[0]}x{image_size[1]}; {SOURCE_HINT}"
        )


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # it holds a cached download (or is gone): keep it
        folder.rmdir()
