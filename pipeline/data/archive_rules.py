"""What both archive formats share: the caps, plain member names, the dataset folder and its split
folders (paired or unpaired), the refusal a broken rule raises, and the records of checked members and
archives.

The tar and zip checks (`pipeline.data.tar_archive`, `pipeline.data.zip_archive`) admit each member
through `LayoutCheck` and refuse with `Refused`; `pipeline.data.archive` turns a refusal into the
user's message.
"""

from __future__ import annotations

import dataclasses
import re
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pipeline.core.errors import PipelineError

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

PLAIN_FILE = (tarfile.REGTYPE, tarfile.AREGTYPE)
# Plain names only: a letter or digit first (so no ".", "..", hidden or AppleDouble "._" files).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_DRIVE = re.compile(r"[A-Za-z]:")
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
            if member.type in PLAIN_FILE:
                counts[member_parts(member.name)[1]] += 1
        return counts


class Refused(Exception):
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


# --- member names and where they may lie --------------------------------------------------------------


def member_parts(name: str) -> list[str]:
    """The path parts of a member name: a leading ``./`` and a folder's trailing ``/`` dropped."""
    return name.removeprefix("./").removesuffix("/").split("/")


def _is_junk(parts: list[str]) -> bool:
    """macOS metadata that Finder's "Compress" and copies to FAT disks leave in archives."""
    return parts[0] == "__MACOSX" or parts[-1] == ".DS_Store" or parts[-1].startswith("._")


def safe_parts(name: str) -> list[str]:
    """The parts of `name`, or `Refused` when it could land outside the destination."""
    if name.startswith(("/", "\\")):
        raise Refused(name, "its path is absolute")
    if "\\" in name:
        raise Refused(name, "its name holds a backslash (a Windows path separator)")
    if _DRIVE.match(name):
        raise Refused(name, "its path starts with a drive letter")
    parts = member_parts(name)
    if ".." in parts:
        raise Refused(name, "its path climbs out with ..")
    return parts


class LayoutCheck:
    """The dataset folder and split folders of the members admitted so far; refuses what lies elsewhere."""

    def __init__(self) -> None:
        self.dataset: str | None = None
        self.splits: set[str] = set()
        self.seen: set[str] = set()

    def admit(self, name: str, is_dir: bool) -> bool:
        """True for a member to extract, False for macOS junk to skip; `Refused` otherwise."""
        if name in (".", "./") and is_dir:  # `tar -C src .` archives the root folder itself
            return True
        parts = safe_parts(name)
        if _is_junk(parts):
            return False
        if not all(_NAME.fullmatch(part) for part in parts):
            raise Refused(
                name, "its name is not plain: letters, digits, ._- only, no leading dot, 100 at most"
            )
        self._check_place(name, parts, is_dir)
        relative = "/".join(parts)
        if relative in self.seen:
            raise Refused(name, "it appears twice: a later copy would replace the one checked")
        self.seen.add(relative)
        if len(parts) > 1:
            self.splits.add(parts[1])
        return True

    def _check_place(self, name: str, parts: list[str], is_dir: bool) -> None:
        dataset, rest = parts[0], parts[1:]
        where = f"{dataset}/<split>/ with <split> one of {', '.join(SPLIT_FOLDERS)}"
        if is_dir and (len(rest) > 1 or (rest and rest[0] not in SPLIT_FOLDERS)):
            raise Refused(name, f"it is a folder other than {dataset}/ and {where}")
        if not is_dir and (len(rest) != 2 or rest[0] not in SPLIT_FOLDERS):
            raise Refused(name, f"it is not directly in a split folder {where}")
        if not is_dir and not rest[1].lower().endswith(IMAGE_SUFFIXES):
            raise Refused(name, f"it is not an image ({', '.join(IMAGE_SUFFIXES)})")
        if self.dataset is None:
            self.dataset = dataset
        elif dataset != self.dataset:
            raise Refused(name, f"it is outside the dataset folder {self.dataset}/: an archive holds one")

    def finish(self) -> tuple[str, tuple[str, ...], Layout]:
        """The dataset folder, its split folders and their layout, or `Refused` (not unsafe)."""
        if self.dataset is None:
            raise Refused(None, f"it holds no dataset folder; {_EXPECTED_LAYOUTS}", unsafe=False)
        layout, found = _classify(self.splits)
        if layout is None:
            raise Refused(None, f"{self.dataset}/ holds {found}; {_EXPECTED_LAYOUTS}", unsafe=False)
        return self.dataset, tuple(s for s in SPLIT_FOLDERS if s in self.splits), layout


def mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB"
