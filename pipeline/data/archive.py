"""The downloaded archive: what it is (sniffed), every member checked before anything is written, then
extracted with tarfile's `data` filter.

Extraction is two passes over the compressed file, front to back (about a second each for the
100 MB pix2pix archive):

1. `check_archive` reads every member header, and writes nothing. Each member must be a regular file
   in ``cityscapes/train/`` or ``cityscapes/val/`` (or one of those three folders), named with plain
   characters: no links of any kind, no devices or fifos, no absolute or ``..`` paths, no duplicates,
   at most `MAX_MEMBERS` members and `MAX_BYTES` unpacked. A decompression bomb is refused at the
   header that declares too much, before its data is inflated; the inflated stream itself is capped
   too (long-name and pax headers are data that no member header declares). The same pass hashes the
   file (sha256).
2. `extract_archive` extracts with tarfile's `data` filter, and refuses any member that is not the
   one the first pass checked at that position, and a file whose hash changed between the passes.

The checks are ours, not only the filter's: the filter of Python builds before the 2025 tarfile
fixes (CVE-2025-4517 and its siblings; these machines run 3.11.7) can be walked around with links
and very long paths, and an archive with neither cannot use those tricks.
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import gzip
import hashlib
import lzma
import re
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pipeline.core.errors import PipelineError
from pipeline.core.progress import progress
from pipeline.data.fetch import CHUNK_BYTES, SOURCE_ENV

SOURCE_HINT = f"point data.source (or {SOURCE_ENV}) at the pix2pix cityscapes.tar.gz"
DATASET_FOLDER = "cityscapes"  # the archive's top-level folder; the split stage reads out_dir/cityscapes
SPLITS = ("train", "val")
MAX_MEMBERS = 10_000  # the pix2pix archive has 3,478 (3,475 images and 3 folders)
MAX_BYTES = 1 << 30  # unpacked; the pix2pix archive unpacks to about 100 MB
# Plain names only: a letter or digit first (so no ".", "..", hidden or AppleDouble "._" files).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_FOLDERS = {DATASET_FOLDER, *(f"{DATASET_FOLDER}/{split}" for split in SPLITS)}
_PLAIN_FILE = (tarfile.REGTYPE, tarfile.AREGTYPE)
_CORRUPT = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


@dataclasses.dataclass(frozen=True)
class Member:
    """One checked archive member, as the extraction pass must find it again."""

    name: str
    type: bytes
    size: int


@dataclasses.dataclass(frozen=True)
class CheckedArchive:
    """An archive whose every member passed `check_archive`."""

    path: Path
    kind: str  # "gz", "bz2", "xz" or "tar"
    sha256: str
    members: tuple[Member, ...]

    @property
    def unpacked_bytes(self) -> int:
        return sum(member.size for member in self.members)


class _Refused(Exception):
    """A member (or the stream) breaks the rules; the message says which rule."""

    def __init__(self, name: str | None, reason: str):
        super().__init__(reason)
        self.name, self.reason = name, reason


def sniff_archive(path: Path) -> str:
    """Return the compression of a tar archive ("gz", "bz2", "xz", "tar") from its first bytes.

    Raises `PipelineError` for anything else, naming an HTML page (a server's error page saved as
    the archive) as such, and the fix.
    """
    with path.open("rb") as handle:
        head = handle.read(512)
    for magic, kind in ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz")):
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar":
        return "tar"
    if not head:
        raise PipelineError(f"{path} is empty, not a tar archive: {SOURCE_HINT}")
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")) or b"<html" in lowered:
        raise PipelineError(
            f"{path} is an HTML page (a server error page?), not a tar archive: {SOURCE_HINT}"
        )
    raise PipelineError(f"{path} is not a tar archive (it starts with {head[:12]!r}): {SOURCE_HINT}")


def check_archive(path: Path, max_members: int = MAX_MEMBERS, max_bytes: int = MAX_BYTES) -> CheckedArchive:
    """Read every member header of the tar archive at `path` and hash it, writing nothing.

    Raises `PipelineError` naming the first member that breaks a rule (see the module docstring), or
    saying the file is truncated or corrupt.
    """
    kind = sniff_archive(path)
    members: list[Member] = []
    seen: set[str] = set()
    total = 0
    try:
        with _tar_stream(path, kind, "check", _stream_cap(max_members, max_bytes)) as (tar, counted):
            for info in tar:
                if len(members) == max_members:
                    raise _Refused(None, f"it has more than {max_members} members")
                member = _checked_member(info, seen)
                total += member.size
                if total > max_bytes:
                    raise _Refused(info.name, f"the archive unpacks to more than {_mib(max_bytes)}")
                members.append(member)
            sha256 = _finish(counted)
    except _Refused as exc:
        raise _refusal(path, exc) from None
    except _CORRUPT as exc:
        raise _corrupt(path, exc) from None
    return CheckedArchive(path, kind, sha256, tuple(members))


def extract_archive(checked: CheckedArchive, dest: Path) -> None:
    """Extract an archive that passed `check_archive` into `dest`, with tarfile's `data` filter.

    Each member must be the one checked at its position (same name, type and size) and the file's
    hash must not have changed since, or nothing more is written and `PipelineError` is raised (the
    caller extracts into a staging folder and drops it).
    """
    expected = iter(checked.members)

    def same_as_checked(info: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo:
        member = next(expected, None)
        if member is None or (info.name, info.type, info.size) != (member.name, member.type, member.size):
            raise _Refused(info.name, "it differs from the member checked at this position")
        return tarfile.data_filter(info, dest_path)

    cap = _stream_cap(len(checked.members), checked.unpacked_bytes)
    try:
        with _tar_stream(checked.path, checked.kind, "extract", cap) as (tar, counted):
            tar.errorlevel = 1  # filter refusals and fatal errors raise
            tar.extractall(dest, filter=same_as_checked)
            if next(expected, None) is not None:
                raise _Refused(None, "it holds fewer members than when it was checked")
            if _finish(counted) != checked.sha256:
                raise _Refused(None, "its sha256 changed while it was being extracted")
    except _Refused as exc:
        raise _refusal(checked.path, exc) from None
    except tarfile.FilterError as exc:  # cannot happen after check_archive; kept as a second wall
        raise _refusal(checked.path, _Refused(None, str(exc))) from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise _corrupt(checked.path, exc) from None


def _checked_member(info: tarfile.TarInfo, seen: set[str]) -> Member:
    """The member as `Member`, or `_Refused` saying which rule it breaks."""
    name = info.name
    if info.issym() or info.islnk():
        raise _Refused(name, f"it is a {'symbolic' if info.issym() else 'hard'} link")
    if info.ischr() or info.isblk() or info.isfifo():
        raise _Refused(name, "it is a device or a fifo")
    if not (info.isdir() or info.type in _PLAIN_FILE):
        raise _Refused(name, f"it is not a regular file or folder (tar type {info.type!r})")
    if name.startswith(("/", "\\")):
        raise _Refused(name, "its path is absolute")
    parts = name.removeprefix("./").split("/")
    if ".." in parts:
        raise _Refused(name, "its path climbs out with ..")
    if name in (".", "./") and info.isdir():  # `tar -C src .` archives the root folder itself
        return Member(name, info.type, info.size)
    if not all(_NAME.fullmatch(part) for part in parts):
        raise _Refused(name, "its name is not plain: letters, digits, ._- only, no leading dot, 100 at most")
    relative = "/".join(parts)
    if info.isdir() and relative not in _FOLDERS:
        raise _Refused(name, f"it is a folder other than {', '.join(sorted(_FOLDERS))}")
    if not info.isdir() and (len(parts) != 3 or "/".join(parts[:2]) not in _FOLDERS - {DATASET_FOLDER}):
        raise _Refused(name, f"it is not in {' or '.join(f'{DATASET_FOLDER}/{s}/' for s in SPLITS)}")
    if relative in seen:
        raise _Refused(name, "it appears twice: a later copy would replace the one checked")
    seen.add(relative)
    return Member(name, info.type, info.size)


@contextlib.contextmanager
def _tar_stream(
    path: Path, kind: str, desc: str, max_unpacked: int
) -> Iterator[tuple[tarfile.TarFile, _Counting]]:
    """The archive as a one-pass tar stream over its inflated bytes (at most `max_unpacked` of them),
    and the raw file as read so far (its sha256; a progress bar follows it)."""
    bar = progress(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)
    with path.open("rb") as raw, bar:
        counted = _Counting(raw, bar)
        with (
            _inflated(counted, kind) as inflated,
            tarfile.open(fileobj=_Capped(inflated, max_unpacked), mode="r|") as tar,
        ):
            yield tar, counted


def _inflated(raw: _Counting, kind: str) -> contextlib.AbstractContextManager[IO[bytes]]:
    if kind == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "bz2":
        return bz2.BZ2File(raw, mode="rb")
    if kind == "xz":
        return lzma.LZMAFile(raw, mode="rb")
    return contextlib.nullcontext(raw)


def _stream_cap(max_members: int, max_bytes: int) -> int:
    """Inflated bytes a tar of at most `max_members` members and `max_bytes` of data can take: the
    data, padded to 512-byte blocks, a header (and maybe a long-name header) each, and the end."""
    return max_bytes + max_members * 3 * 512 + (64 << 10)


def _finish(counted: _Counting) -> str:
    """The hex sha256 of the whole file: the bytes after the tar's end (padding, the gzip trailer)
    are read here, because tarfile stops reading at the end-of-archive blocks."""
    while counted.read(CHUNK_BYTES):
        pass
    return counted.digest.hexdigest()


def _refusal(path: Path, exc: _Refused) -> PipelineError:
    what = f"holds an unsafe member {exc.name[:200]!r}" if exc.name is not None else "is unsafe"
    return PipelineError(f"{path} {what} ({exc.reason}); refused, nothing extracted: {SOURCE_HINT}")


def _corrupt(path: Path, exc: BaseException) -> PipelineError:
    return PipelineError(
        f"{path} is truncated or corrupt ({str(exc) or type(exc).__name__}): "
        f"delete it and download again, or {SOURCE_HINT}"
    )


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB"


class _Counting:
    """A read-only file wrapper that hashes what is read (`digest`) and advances a progress bar."""

    def __init__(self, raw: IO[bytes], bar):
        self._raw, self._bar = raw, bar
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.digest.update(data)
        self._bar.update(len(data))
        return data


class _Capped:
    """The inflated stream, refusing to give more than `limit` bytes (a bomb stops here at worst)."""

    def __init__(self, stream: IO[bytes], limit: int):
        self._stream, self._left = stream, limit

    def read(self, size: int = -1) -> bytes:
        want = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        data = self._stream.read(want)
        self._left -= len(data)
        if self._left < 0:
            raise _Refused(None, "it inflates to more than its members declare (a decompression bomb?)")
        return data
