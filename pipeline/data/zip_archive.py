"""The zip half of the archive checks: the file hashed, every member's central-directory entry
checked, then every file inflated into nothing (sizes and CRC-32 verified); extraction writes each
checked member itself, cut at its declared size, to a new path inside the destination.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pipeline.core.progress import progress
from pipeline.data.archive_rules import (
    MAX_RATIO,
    RATIO_FLOOR,
    CheckedArchive,
    LayoutCheck,
    Member,
    Refused,
    member_parts,
    mib,
)
from pipeline.data.fetch import CHUNK_BYTES

_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_ZIP_ENCRYPTED = 0x1 | 0x40  # general purpose flag bits: traditional and strong encryption
_ZIP_LOCAL_HEADER = 30  # bytes of a local file header before its name and extra field


def check_zip(path: Path, max_members: int, max_bytes: int) -> tuple[str, list[Member], LayoutCheck]:
    """Hash, check every member's header, then inflate every file into nothing (sizes verified)."""
    with path.open("rb") as raw:
        sha256 = _hash_file(raw)
        with zipfile.ZipFile(raw) as archive:
            infos = archive.infolist()
            if len(infos) > max_members:
                raise Refused(None, f"it has more than {max_members} members")
            layout = LayoutCheck()
            entries: list[Member] = []
            total = 0
            for info in infos:
                member = _zip_member(info, layout)
                total += member.size
                if total > max_bytes:
                    raise Refused(info.filename, f"the archive unpacks to more than {mib(max_bytes)}")
                entries.append(member)
            _check_no_overlap(infos)
            with _bytes_bar(sum(m.size for m in entries if _is_file(m)), "check") as bar:
                for info, member in zip(infos, entries, strict=True):
                    if _is_file(member):
                        for chunk in _inflate(archive, info):
                            bar.update(len(chunk))
    return sha256, entries, layout


def _zip_member(info: zipfile.ZipInfo, layout: LayoutCheck) -> Member:
    """The member as `Member`, or `Refused` saying which rule it breaks (nothing inflated yet)."""
    name, is_dir = info.filename, info.is_dir()
    kind = stat.S_IFMT(info.external_attr >> 16)  # the Unix mode; 0 from zips made on Windows
    if kind == stat.S_IFLNK:
        raise Refused(name, "it is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise Refused(name, f"it is not a regular file or folder (mode {info.external_attr >> 16:#o})")
    if kind and (kind == stat.S_IFDIR) != is_dir:
        raise Refused(name, "its mode and its name disagree on whether it is a folder")
    if info.orig_filename != name:
        raise Refused(name, "its stored name holds a NUL byte")
    if info.flag_bits & _ZIP_ENCRYPTED:
        raise Refused(name, "it is encrypted")
    if info.compress_type not in _ZIP_METHODS:
        raise Refused(name, f"it uses compression method {info.compress_type}: only stored and deflate")
    if is_dir and info.file_size:
        raise Refused(name, f"it is a folder that declares {info.file_size} bytes of data")
    if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise Refused(
            name,
            f"it declares {info.file_size} bytes from {info.compress_size} compressed, more than "
            f"{MAX_RATIO} times as many (a decompression bomb?)",
        )
    skipped = not layout.admit(name, is_dir)
    return Member(
        name, tarfile.DIRTYPE if is_dir else tarfile.REGTYPE, info.file_size, skipped, _header(info)
    )


def _header(info: zipfile.ZipInfo) -> tuple[int, ...]:
    return (
        info.compress_size,
        info.CRC,
        info.header_offset,
        info.flag_bits,
        info.compress_type,
        info.external_attr,
    )


def _is_file(member: Member) -> bool:
    return not member.skipped and member.type == tarfile.REGTYPE


def _check_no_overlap(infos: list[zipfile.ZipInfo]) -> None:
    """Refuse members whose data overlaps (one compressed stream behind many entries: a zip bomb)."""
    ordered = sorted(infos, key=lambda info: info.header_offset)
    for before, after in itertools.pairwise(ordered):
        if before.header_offset + _ZIP_LOCAL_HEADER + before.compress_size > after.header_offset:
            raise Refused(after.filename, f"its data overlaps that of {before.filename[:200]!r}")


def _inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """The member's inflated bytes in chunks, exactly its declared size and CRC-32, or an error.

    zipfile alone cuts a member at its declared size and then checks the CRC: a member whose header
    understates its size, with the CRC of the cut bytes, would pass. So zipfile is asked for one byte
    more and its CRC check is left to this function: a member with more data than it declares is
    refused, by name, before that byte is given out.
    """
    declared = info.file_size
    probe = copy.copy(info)
    probe.file_size = declared + 1
    probe.CRC = None  # zipfile checks no CRC then; checked below, over exactly what was given out
    seen, crc = 0, 0
    try:
        with archive.open(probe) as stream:
            while chunk := stream.read(CHUNK_BYTES):
                seen += len(chunk)
                if seen > declared:
                    raise Refused(info.filename, f"it inflates to more than the {declared} bytes it declares")
                crc = zlib.crc32(chunk, crc)
                yield chunk
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise zipfile.BadZipFile(f"member {info.filename[:200]!r}: {exc or type(exc).__name__}") from None
    if seen != declared:
        raise Refused(info.filename, f"it inflates to {seen} bytes, not the {declared} it declares")
    if crc != info.CRC:
        raise zipfile.BadZipFile(f"member {info.filename[:200]!r}: its CRC-32 does not match its data")


def extract_zip(checked: CheckedArchive, dest: Path) -> None:
    """Write the checked zip's members under `dest`; `Refused`, before anything is written, when the
    file's hash or its members differ from the ones checked (and after, when the hash changed)."""
    with checked.path.open("rb") as raw:
        if _hash_file(raw) != checked.sha256:
            raise Refused(None, "its sha256 changed since it was checked")
        with zipfile.ZipFile(raw) as archive:
            infos = archive.infolist()
            found = [(i.filename, i.file_size, _header(i)) for i in infos]
            if found != [(m.name, m.size, m.header) for m in checked.entries]:
                raise Refused(None, "its members differ from the ones checked")
            dest.mkdir(parents=True, exist_ok=True)
            root = dest.resolve()
            with _bytes_bar(sum(m.size for m in checked.members if _is_file(m)), "extract") as bar:
                for info, member in zip(infos, checked.entries, strict=True):
                    if not member.skipped and member.name not in (".", "./"):
                        _write_member(archive, info, member, root, bar)
        if _hash_file(raw) != checked.sha256:
            raise Refused(None, "its sha256 changed while it was being extracted")


def _write_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, member: Member, root: Path, bar) -> None:
    """One checked member under `root`: a folder, or a new file cut at its declared size."""
    target = root.joinpath(*member_parts(member.name))
    if not target.parent.resolve().is_relative_to(root):  # no links were admitted; a second wall
        raise Refused(member.name, "it would land outside the destination")
    if member.type == tarfile.DIRTYPE:
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = target.open("xb")  # a new file only: never through a link, never over a file
    except FileExistsError:
        raise Refused(member.name, "a file is already at its path") from None
    with out:
        for chunk in _inflate(archive, info):
            out.write(chunk)
            bar.update(len(chunk))


def _hash_file(raw: IO[bytes]) -> str:
    """The hex sha256 of the open file, read from the start; leaves it at the start."""
    raw.seek(0)
    digest = hashlib.sha256()
    while chunk := raw.read(CHUNK_BYTES):
        digest.update(chunk)
    raw.seek(0)
    return digest.hexdigest()


def _bytes_bar(total: int, desc: str):
    return progress(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)
