"""The tar half of the archive checks: every member header read and checked in one pass over the
(inflated) stream, then extraction with tarfile's `data` filter, each member compared with the one
checked at its position. Decompression bombs are capped on the inflated stream as well.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import lzma
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pipeline.core.progress import progress
from pipeline.data.archive_rules import PLAIN_FILE, CheckedArchive, LayoutCheck, Member, Refused, mib
from pipeline.data.fetch import CHUNK_BYTES


def check_tar(
    path: Path, kind: str, max_members: int, max_bytes: int
) -> tuple[str, list[Member], LayoutCheck]:
    """Read every member header of the tar at `path` in one pass, writing nothing: the file's sha256,
    the members and their layout; `Refused` at the first member that breaks a rule."""
    entries: list[Member] = []
    layout = LayoutCheck()
    total = 0
    with _tar_stream(path, kind, "check", _stream_cap(max_members, max_bytes)) as (tar, counted):
        for info in tar:
            if len(entries) == max_members:
                raise Refused(None, f"it has more than {max_members} members")
            member = _tar_member(info, layout)
            total += member.size
            if total > max_bytes:
                raise Refused(info.name, f"the archive unpacks to more than {mib(max_bytes)}")
            entries.append(member)
        return _finish(counted), entries, layout


def extract_tar(checked: CheckedArchive, dest: Path) -> None:
    """Extract the checked tar into `dest`; `Refused` at a member that is not the one checked at its
    position, or when the file's hash changed."""
    expected = iter(checked.entries)

    def same_as_checked(info: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo | None:
        member = next(expected, None)
        if member is None or (info.name, info.type, info.size) != (member.name, member.type, member.size):
            raise Refused(info.name, "it differs from the member checked at this position")
        return None if member.skipped else tarfile.data_filter(info, dest_path)

    cap = _stream_cap(len(checked.entries), checked.unpacked_bytes)
    with _tar_stream(checked.path, checked.kind, "extract", cap) as (tar, counted):
        tar.errorlevel = 1  # filter refusals and fatal errors raise
        tar.extractall(dest, filter=same_as_checked)
        if next(expected, None) is not None:
            raise Refused(None, "it holds fewer members than when it was checked")
        if _finish(counted) != checked.sha256:
            raise Refused(None, "its sha256 changed while it was being extracted")


def _tar_member(info: tarfile.TarInfo, layout: LayoutCheck) -> Member:
    """The member as `Member`, or `Refused` saying which rule it breaks."""
    name = info.name
    if info.issym() or info.islnk():
        raise Refused(name, f"it is a {'symbolic' if info.issym() else 'hard'} link")
    if info.ischr() or info.isblk() or info.isfifo():
        raise Refused(name, "it is a device or a fifo")
    if not (info.isdir() or info.type in PLAIN_FILE):
        raise Refused(name, f"it is not a regular file or folder (tar type {info.type!r})")
    skipped = not layout.admit(name, info.isdir())
    return Member(name, info.type, info.size, skipped)


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
            raise Refused(None, "it inflates to more than its members declare (a decompression bomb?)")
        return data
