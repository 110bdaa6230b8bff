"""The downloaded archive: what it is (sniffed), every member checked before anything is written, then
extracted.

Archives are tar (plain, gzip, bzip2 or xz) or zip, in either of the CycleGAN field's layouts, with
exactly one top-level dataset folder of any plain name:

- paired (pix2pix: facades, maps, cityscapes): ``<dataset>/{train,val,test}/<image>``, each image the
  A|B pair side by side; ``train`` and at least one of ``val`` and ``test``;
- unpaired (the CycleGAN repo's horse2zebra.zip, monet2photo.zip, ...):
  ``<dataset>/{trainA,trainB,testA,testB}/<image>``, all four.

Images (``.jpg``, ``.jpeg``, ``.png``, any case) lie directly in a split folder. macOS junk
(``__MACOSX/``, ``.DS_Store``, ``._*``) is skipped, never extracted, and counted
(`CheckedArchive.skipped`); it must still pass the safety checks below.

Extraction is two passes over the file (about a second each for the 100 MB pix2pix archive):

1. `check_archive` reads every member header, and writes nothing. Each member must be a regular file
   or folder of the layout above, named with plain characters: no links of any kind, no devices or
   fifos, no absolute or ``..`` paths, no backslashes or drive letters, no duplicates, at most
   `MAX_MEMBERS` members and `MAX_BYTES` unpacked. The same pass hashes the file (sha256).

   - tar: a decompression bomb is refused at the header that declares too much, before its data is
     inflated; the inflated stream itself is capped too (long-name and pax headers are data that no
     member header declares).
   - zip: encrypted members, methods other than stored and deflate (bzip2 and lzma inflate a whole
     read at once, unbounded), members that declare more than `MAX_RATIO` times their compressed
     size (a bomb, refused before anything is inflated) and members whose data overlaps another's
     are refused. Then every member is inflated into nothing, at most one byte past its declared
     size: a header that lies about the size is refused here, before the extraction pass.
2. `extract_archive` refuses any member that is not the one the first pass checked at that position,
   and a file whose hash changed between the passes.

   - tar: extracted with tarfile's `data` filter.
   - zip: the hash is compared before anything is written (and again after), and each file is
     written by `pipeline.data.zip_archive`, streamed from ``ZipFile.open`` and cut at its declared
     size, to a new path inside the destination (``ZipFile.extract`` would rewrite names rather than
     refuse them).

The checks are ours, not only the filter's: the filter of Python builds before the 2025 tarfile
fixes (CVE-2025-4517 and its siblings; these machines run 3.11.7) can be walked around with links
and very long paths, and an archive with neither cannot use those tricks.
"""

from __future__ import annotations

import lzma
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.data.archive_rules import (
    IMAGE_SUFFIXES,
    MAX_BYTES,
    MAX_MEMBERS,
    MAX_RATIO,
    PAIRED_SPLITS,
    RATIO_FLOOR,
    SPLIT_FOLDERS,
    UNPAIRED_SPLITS,
    CheckedArchive,
    Layout,
    Member,
    Refused,
    detect_layout,
)
from pipeline.data.fetch import SOURCE_ENV
from pipeline.data.tar_archive import check_tar, extract_tar
from pipeline.data.zip_archive import check_zip, extract_zip

# The public names, wherever they are defined: callers import them from this module.
__all__ = [
    "DATASET_FOLDER",
    "IMAGE_SUFFIXES",
    "MAX_BYTES",
    "MAX_MEMBERS",
    "MAX_RATIO",
    "PAIRED_SPLITS",
    "RATIO_FLOOR",
    "SOURCE_HINT",
    "SPLIT_FOLDERS",
    "UNPAIRED_SPLITS",
    "CheckedArchive",
    "Layout",
    "Member",
    "check_archive",
    "detect_layout",
    "extract_archive",
    "sniff_archive",
]

SOURCE_HINT = (
    f"point data.source (or {SOURCE_ENV}) at the dataset: a pix2pix .tar.gz (cityscapes.tar.gz), a CycleGAN "
    ".zip (horse2zebra.zip) or a folder in either layout"
)
# The Cityscapes default, which the split stage reads at out_dir/cityscapes; an archive may name any
# dataset folder (`CheckedArchive.dataset`).
DATASET_FOLDER = "cityscapes"
_CORRUPT = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
_ZIP_CORRUPT = (zipfile.BadZipFile, EOFError, OSError, zlib.error, struct.error, ValueError)


def sniff_archive(path: Path) -> str:
    """Return the kind of archive ("gz", "bz2", "xz", "tar" or "zip") from its first bytes.

    Raises `PipelineError` for anything else, naming an HTML page (a server's error page saved as
    the archive) as such, and the fix.
    """
    with path.open("rb") as handle:
        head = handle.read(512)
    for magic, kind in (
        (b"\x1f\x8b", "gz"),
        (b"BZh", "bz2"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"PK\x03\x04", "zip"),
        (b"PK\x05\x06", "zip"),  # an empty zip: only the end of its central directory
    ):
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar":
        return "tar"
    if not head:
        raise PipelineError(f"{path} is empty, not a tar archive or a zip: {SOURCE_HINT}")
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")) or b"<html" in lowered:
        raise PipelineError(
            f"{path} is an HTML page (a server error page?), not a tar archive or a zip: {SOURCE_HINT}"
        )
    raise PipelineError(f"{path} is not a tar archive or a zip (it starts with {head[:12]!r}): {SOURCE_HINT}")


def check_archive(path: Path, max_members: int = MAX_MEMBERS, max_bytes: int = MAX_BYTES) -> CheckedArchive:
    """Read every member header of the tar or zip archive at `path` and hash it, writing nothing.

    Raises `PipelineError` naming the first member that breaks a rule (see the module docstring),
    saying what layout was found and what is expected, or saying the file is truncated or corrupt.
    """
    kind = sniff_archive(path)
    corrupt = _ZIP_CORRUPT if kind == "zip" else _CORRUPT
    try:
        if kind == "zip":
            sha256, entries, layout = check_zip(path, max_members, max_bytes)
        else:
            sha256, entries, layout = check_tar(path, kind, max_members, max_bytes)
        dataset, splits, shape = layout.finish()
    except Refused as exc:
        raise _refusal(path, exc) from None
    except corrupt as exc:
        raise _corrupt(path, exc) from None
    return CheckedArchive(path, kind, sha256, tuple(entries), dataset, splits, shape)


def extract_archive(checked: CheckedArchive, dest: Path) -> None:
    """Extract an archive that passed `check_archive` into `dest`, macOS junk left out.

    Each member must be the one checked at its position (same name, type and size) and the file's
    hash must not have changed since, or nothing more is written and `PipelineError` is raised (the
    caller extracts into a staging folder and drops it). A zip whose hash changed is refused before
    anything is written.
    """
    try:
        if checked.kind == "zip":
            extract_zip(checked, Path(dest))
        else:
            extract_tar(checked, Path(dest))
    except Refused as exc:
        raise _refusal(checked.path, exc) from None
    except tarfile.FilterError as exc:  # cannot happen after check_archive; kept as a second wall
        raise _refusal(checked.path, Refused(None, str(exc))) from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile) as exc:
        raise _corrupt(checked.path, exc) from None


def _refusal(path: Path, exc: Refused) -> PipelineError:
    if not exc.unsafe:
        return PipelineError(
            f"{path} has an unexpected layout ({exc.reason}); refused, nothing extracted: {SOURCE_HINT}"
        )
    what = f"holds an unsafe member {exc.name[:200]!r}" if exc.name is not None else "is unsafe"
    return PipelineError(f"{path} {what} ({exc.reason}); refused, nothing extracted: {SOURCE_HINT}")


def _corrupt(path: Path, exc: BaseException) -> PipelineError:
    return PipelineError(
        f"{path} is truncated or corrupt ({str(exc) or type(exc).__name__}): "
        f"delete it and download again, or {SOURCE_HINT}"
    )
