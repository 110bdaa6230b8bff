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
     written by this module, streamed from ``ZipFile.open`` and cut at its declared size, to a new
     path inside the destination (``ZipFile.extract`` would rewrite names rather than refuse them).

The checks are ours, not only the filter's: the filter of Python builds before the 2025 tarfile
fixes (CVE-2025-4517 and its siblings; these machines run 3.11.7) can be walked around with links
and very long paths, and an archive with neither cannot use those tricks.
"""

from __future__ import annotations

import bz2
import contextlib
import copy
import dataclasses
import gzip
import hashlib
import itertools
import lzma
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Literal

from pipeline.core.errors import PipelineError
from pipeline.core.progress import progress
from pipeline.data.fetch import CHUNK_BYTES, SOURCE_ENV

SOURCE_HINT = f"point data.source (or {SOURCE_ENV}) at the pix2pix cityscapes.tar.gz"
# The Cityscapes default, which the split stage reads at out_dir/cityscapes; an archive may name any
# dataset folder (`CheckedArchive.dataset`).
DATASET_FOLDER = "cityscapes"
PAIRED_SPLITS = ("train", "val", "test")
UNPAIRED_SPLITS = ("trainA", "trainB", "testA", "testB")
SPLIT_FOLDERS = PAIRED_SPLITS + UNPAIRED_SPLITS
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# The pix2pix Cityscapes archive has 3,478 members (3,475 images and 3 folders); monet2photo.zip has
# about 8,200, and macOS zips carry a "._" twin of each file in __MACOSX/.
MAX_MEMBERS = 25_000
MAX_BYTES = 1 << 30  # unpacked; the pix2pix archive unpacks to about 100 MB, monet2photo to ~300 MB
MAX_RATIO = 100  # zip: declared over compressed size; JPEG and PNG barely deflate (ratio ~1)
RATIO_FLOOR = 64 << 10  # zip: a member this small cannot be a bomb, whatever its ratio

Layout = Literal["paired", "unpaired"]

# Plain names only: a letter or digit first (so no ".", "..", hidden or AppleDouble "._" files).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_DRIVE = re.compile(r"[A-Za-z]:")
_PLAIN_FILE = (tarfile.REGTYPE, tarfile.AREGTYPE)
_CORRUPT = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
_ZIP_CORRUPT = (zipfile.BadZipFile, EOFError, OSError, zlib.error, struct.error, ValueError)
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_ZIP_ENCRYPTED = 0x1 | 0x40  # general purpose flag bits: traditional and strong encryption
_ZIP_LOCAL_HEADER = 30  # bytes of a local file header before its name and extra field
_EXPECTED_LAYOUTS = (
    "expected train/ with val/ and/or test/ (paired, pix2pix) "
    "or all of trainA/, trainB/, testA/, testB/ (unpaired, CycleGAN)"
)


@dataclasses.dataclass(frozen=True)
class Member:
    """One checked archive member, as the extraction pass must find it again."""

    name: str
    type: bytes  # a tar type (zip members: REGTYPE or DIRTYPE)
    size: int
    skipped: bool = False  # macOS junk: checked for safety, never extracted
    # zip: compressed size, CRC-32, header offset, flag bits, method, external attributes
    header: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class CheckedArchive:
    """An archive whose every member passed `check_archive`."""

    path: Path
    kind: str  # "gz", "bz2", "xz", "tar" or "zip"
    sha256: str
    entries: tuple[Member, ...]  # every member in archive order, the skipped ones included
    dataset: str  # the one top-level folder: "cityscapes", "horse2zebra", ...
    splits: tuple[str, ...]  # the split folders it has, in `SPLIT_FOLDERS` order
    layout: Layout

    @property
    def members(self) -> tuple[Member, ...]:
        """The members that are extracted (folders and images)."""
        return tuple(member for member in self.entries if not member.skipped)

    @property
    def skipped(self) -> int:
        """How many macOS junk members (``__MACOSX/``, ``.DS_Store``, ``._*``) are left out."""
        return sum(member.skipped for member in self.entries)

    @property
    def unpacked_bytes(self) -> int:
        """Declared bytes of all entries, the skipped ones included."""
        return sum(member.size for member in self.entries)

    @property
    def image_counts(self) -> dict[str, int]:
        """Images per split folder, e.g. ``{"train": 2975, "val": 500}``."""
        counts = dict.fromkeys(self.splits, 0)
        for member in self.members:
            if member.type in _PLAIN_FILE:
                counts[_parts(member.name)[1]] += 1
        return counts


class _Refused(Exception):
    """A member (or the stream) breaks the rules; the message says which rule."""

    def __init__(self, name: str | None, reason: str, unsafe: bool = True):
        super().__init__(reason)
        self.name, self.reason, self.unsafe = name, reason, unsafe


def detect_layout(folders: Iterable[str]) -> Layout:
    """The layout that split folder names make: "paired" or "unpaired".

    Paired is ``train`` with ``val`` and/or ``test``; unpaired is all of ``trainA``, ``trainB``,
    ``testA``, ``testB``. macOS junk names are ignored. Raises `PipelineError` in one line saying what
    was found and what is expected, for a mix of the two, a missing folder or an unknown name.
    """
    layout, found = _classify(folders)
    if layout is None:
        raise PipelineError(f"the dataset folder holds {found}; {_EXPECTED_LAYOUTS}")
    return layout


def _classify(folders: Iterable[str]) -> tuple[Layout | None, str]:
    """The layout of `folders` (None when they make neither), and the folders as a message lists them."""
    names = {name for name in folders if not _is_junk([name])}
    order = {name: index for index, name in enumerate(SPLIT_FOLDERS)}
    listed = sorted(names, key=lambda name: (order.get(name, len(order)), name))
    found = ", ".join(f"{name}/" for name in listed) or "no split folders"
    paired, unpaired = names & set(PAIRED_SPLITS), names & set(UNPAIRED_SPLITS)
    if names - set(SPLIT_FOLDERS):
        return None, found
    if paired and not unpaired and "train" in paired and len(paired) > 1:
        return "paired", found
    if unpaired == set(UNPAIRED_SPLITS) and not paired:
        return "unpaired", found
    return None, found


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
            sha256, entries, layout = _check_zip(path, max_members, max_bytes)
        else:
            sha256, entries, layout = _check_tar(path, kind, max_members, max_bytes)
        dataset, splits, shape = layout.finish()
    except _Refused as exc:
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
            _extract_zip(checked, Path(dest))
        else:
            _extract_tar(checked, Path(dest))
    except _Refused as exc:
        raise _refusal(checked.path, exc) from None
    except tarfile.FilterError as exc:  # cannot happen after check_archive; kept as a second wall
        raise _refusal(checked.path, _Refused(None, str(exc))) from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile) as exc:
        raise _corrupt(checked.path, exc) from None


# --- the layout, shared by both formats ---------------------------------------------------------------


def _parts(name: str) -> list[str]:
    """The path parts of a member name: a leading ``./`` and a folder's trailing ``/`` dropped."""
    return name.removeprefix("./").removesuffix("/").split("/")


def _is_junk(parts: list[str]) -> bool:
    """macOS metadata that Finder's "Compress" and copies to FAT disks leave in archives."""
    return parts[0] == "__MACOSX" or parts[-1] == ".DS_Store" or parts[-1].startswith("._")


def _safe_parts(name: str) -> list[str]:
    """The parts of `name`, or `_Refused` when it could land outside the destination."""
    if name.startswith(("/", "\\")):
        raise _Refused(name, "its path is absolute")
    if "\\" in name:
        raise _Refused(name, "its name holds a backslash (a Windows path separator)")
    if _DRIVE.match(name):
        raise _Refused(name, "its path starts with a drive letter")
    parts = _parts(name)
    if ".." in parts:
        raise _Refused(name, "its path climbs out with ..")
    return parts


class _Layout:
    """The dataset folder and split folders of the members admitted so far; refuses what lies elsewhere."""

    def __init__(self) -> None:
        self.dataset: str | None = None
        self.splits: set[str] = set()
        self.seen: set[str] = set()

    def admit(self, name: str, is_dir: bool) -> bool:
        """True for a member to extract, False for macOS junk to skip; `_Refused` otherwise."""
        if name in (".", "./") and is_dir:  # `tar -C src .` archives the root folder itself
            return True
        parts = _safe_parts(name)
        if _is_junk(parts):
            return False
        if not all(_NAME.fullmatch(part) for part in parts):
            raise _Refused(
                name, "its name is not plain: letters, digits, ._- only, no leading dot, 100 at most"
            )
        self._check_place(name, parts, is_dir)
        relative = "/".join(parts)
        if relative in self.seen:
            raise _Refused(name, "it appears twice: a later copy would replace the one checked")
        self.seen.add(relative)
        if len(parts) > 1:
            self.splits.add(parts[1])
        return True

    def _check_place(self, name: str, parts: list[str], is_dir: bool) -> None:
        dataset, rest = parts[0], parts[1:]
        where = f"{dataset}/<split>/ with <split> one of {', '.join(SPLIT_FOLDERS)}"
        if is_dir and (len(rest) > 1 or (rest and rest[0] not in SPLIT_FOLDERS)):
            raise _Refused(name, f"it is a folder other than {dataset}/ and {where}")
        if not is_dir and (len(rest) != 2 or rest[0] not in SPLIT_FOLDERS):
            raise _Refused(name, f"it is not directly in a split folder {where}")
        if not is_dir and not rest[1].lower().endswith(IMAGE_SUFFIXES):
            raise _Refused(name, f"it is not an image ({', '.join(IMAGE_SUFFIXES)})")
        if self.dataset is None:
            self.dataset = dataset
        elif dataset != self.dataset:
            raise _Refused(name, f"it is outside the dataset folder {self.dataset}/: an archive holds one")

    def finish(self) -> tuple[str, tuple[str, ...], Layout]:
        """The dataset folder, its split folders and their layout, or `_Refused` (not unsafe)."""
        if self.dataset is None:
            raise _Refused(None, f"it holds no dataset folder; {_EXPECTED_LAYOUTS}", unsafe=False)
        layout, found = _classify(self.splits)
        if layout is None:
            raise _Refused(None, f"{self.dataset}/ holds {found}; {_EXPECTED_LAYOUTS}", unsafe=False)
        return self.dataset, tuple(s for s in SPLIT_FOLDERS if s in self.splits), layout


# --- tar ----------------------------------------------------------------------------------------------


def _check_tar(path: Path, kind: str, max_members: int, max_bytes: int) -> tuple[str, list[Member], _Layout]:
    entries: list[Member] = []
    layout = _Layout()
    total = 0
    with _tar_stream(path, kind, "check", _stream_cap(max_members, max_bytes)) as (tar, counted):
        for info in tar:
            if len(entries) == max_members:
                raise _Refused(None, f"it has more than {max_members} members")
            member = _tar_member(info, layout)
            total += member.size
            if total > max_bytes:
                raise _Refused(info.name, f"the archive unpacks to more than {_mib(max_bytes)}")
            entries.append(member)
        return _finish(counted), entries, layout


def _extract_tar(checked: CheckedArchive, dest: Path) -> None:
    expected = iter(checked.entries)

    def same_as_checked(info: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo | None:
        member = next(expected, None)
        if member is None or (info.name, info.type, info.size) != (member.name, member.type, member.size):
            raise _Refused(info.name, "it differs from the member checked at this position")
        return None if member.skipped else tarfile.data_filter(info, dest_path)

    cap = _stream_cap(len(checked.entries), checked.unpacked_bytes)
    with _tar_stream(checked.path, checked.kind, "extract", cap) as (tar, counted):
        tar.errorlevel = 1  # filter refusals and fatal errors raise
        tar.extractall(dest, filter=same_as_checked)
        if next(expected, None) is not None:
            raise _Refused(None, "it holds fewer members than when it was checked")
        if _finish(counted) != checked.sha256:
            raise _Refused(None, "its sha256 changed while it was being extracted")


def _tar_member(info: tarfile.TarInfo, layout: _Layout) -> Member:
    """The member as `Member`, or `_Refused` saying which rule it breaks."""
    name = info.name
    if info.issym() or info.islnk():
        raise _Refused(name, f"it is a {'symbolic' if info.issym() else 'hard'} link")
    if info.ischr() or info.isblk() or info.isfifo():
        raise _Refused(name, "it is a device or a fifo")
    if not (info.isdir() or info.type in _PLAIN_FILE):
        raise _Refused(name, f"it is not a regular file or folder (tar type {info.type!r})")
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


# --- zip ----------------------------------------------------------------------------------------------


def _check_zip(path: Path, max_members: int, max_bytes: int) -> tuple[str, list[Member], _Layout]:
    """Hash, check every member's header, then inflate every file into nothing (sizes verified)."""
    with path.open("rb") as raw:
        sha256 = _hash_file(raw)
        with zipfile.ZipFile(raw) as archive:
            infos = archive.infolist()
            if len(infos) > max_members:
                raise _Refused(None, f"it has more than {max_members} members")
            layout = _Layout()
            entries: list[Member] = []
            total = 0
            for info in infos:
                member = _zip_member(info, layout)
                total += member.size
                if total > max_bytes:
                    raise _Refused(info.filename, f"the archive unpacks to more than {_mib(max_bytes)}")
                entries.append(member)
            _check_no_overlap(infos)
            with _bytes_bar(sum(m.size for m in entries if _is_file(m)), "check") as bar:
                for info, member in zip(infos, entries, strict=True):
                    if _is_file(member):
                        for chunk in _inflate(archive, info):
                            bar.update(len(chunk))
    return sha256, entries, layout


def _zip_member(info: zipfile.ZipInfo, layout: _Layout) -> Member:
    """The member as `Member`, or `_Refused` saying which rule it breaks (nothing inflated yet)."""
    name, is_dir = info.filename, info.is_dir()
    kind = stat.S_IFMT(info.external_attr >> 16)  # the Unix mode; 0 from zips made on Windows
    if kind == stat.S_IFLNK:
        raise _Refused(name, "it is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _Refused(name, f"it is not a regular file or folder (mode {info.external_attr >> 16:#o})")
    if kind and (kind == stat.S_IFDIR) != is_dir:
        raise _Refused(name, "its mode and its name disagree on whether it is a folder")
    if info.orig_filename != name:
        raise _Refused(name, "its stored name holds a NUL byte")
    if info.flag_bits & _ZIP_ENCRYPTED:
        raise _Refused(name, "it is encrypted")
    if info.compress_type not in _ZIP_METHODS:
        raise _Refused(name, f"it uses compression method {info.compress_type}: only stored and deflate")
    if is_dir and info.file_size:
        raise _Refused(name, f"it is a folder that declares {info.file_size} bytes of data")
    if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise _Refused(
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
            raise _Refused(after.filename, f"its data overlaps that of {before.filename[:200]!r}")


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
                    raise _Refused(
                        info.filename, f"it inflates to more than the {declared} bytes it declares"
                    )
                crc = zlib.crc32(chunk, crc)
                yield chunk
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise zipfile.BadZipFile(f"member {info.filename[:200]!r}: {exc or type(exc).__name__}") from None
    if seen != declared:
        raise _Refused(info.filename, f"it inflates to {seen} bytes, not the {declared} it declares")
    if crc != info.CRC:
        raise zipfile.BadZipFile(f"member {info.filename[:200]!r}: its CRC-32 does not match its data")


def _extract_zip(checked: CheckedArchive, dest: Path) -> None:
    with checked.path.open("rb") as raw:
        if _hash_file(raw) != checked.sha256:
            raise _Refused(None, "its sha256 changed since it was checked")
        with zipfile.ZipFile(raw) as archive:
            infos = archive.infolist()
            found = [(i.filename, i.file_size, _header(i)) for i in infos]
            if found != [(m.name, m.size, m.header) for m in checked.entries]:
                raise _Refused(None, "its members differ from the ones checked")
            dest.mkdir(parents=True, exist_ok=True)
            root = dest.resolve()
            with _bytes_bar(sum(m.size for m in checked.members if _is_file(m)), "extract") as bar:
                for info, member in zip(infos, checked.entries, strict=True):
                    if not member.skipped and member.name not in (".", "./"):
                        _write_member(archive, info, member, root, bar)
        if _hash_file(raw) != checked.sha256:
            raise _Refused(None, "its sha256 changed while it was being extracted")


def _write_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, member: Member, root: Path, bar) -> None:
    """One checked member under `root`: a folder, or a new file cut at its declared size."""
    target = root.joinpath(*_parts(member.name))
    if not target.parent.resolve().is_relative_to(root):  # no links were admitted; a second wall
        raise _Refused(member.name, "it would land outside the destination")
    if member.type == tarfile.DIRTYPE:
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = target.open("xb")  # a new file only: never through a link, never over a file
    except FileExistsError:
        raise _Refused(member.name, "a file is already at its path") from None
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


# --- messages and stream helpers ----------------------------------------------------------------------


def _refusal(path: Path, exc: _Refused) -> PipelineError:
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
