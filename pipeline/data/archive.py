"""The downloaded archive: what it is (sniffed, checksummed) and its extraction with tarfile's filter."""

from __future__ import annotations

import hashlib
import lzma
import tarfile
import zlib
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.progress import progress
from pipeline.data.fetch import CHUNK_BYTES, SOURCE_ENV

SOURCE_HINT = f"point data.source (or {SOURCE_ENV}) at the pix2pix cityscapes.tar.gz"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks with a progress bar."""
    digest = hashlib.sha256()
    bar = progress(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc="sha256")
    with path.open("rb") as handle, bar:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def sniff_archive(path: Path) -> str:
    """Return the compression of a tar archive ("gz", "bz2", "xz", "tar") from its first bytes.

    Raises `PipelineError` for anything else, naming an HTML page (a server's error page saved as
    the archive) as such.
    """
    with path.open("rb") as handle:
        head = handle.read(512)
    for magic, kind in ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz")):
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar":
        return "tar"
    if not head:
        raise PipelineError(f"{path} is empty, not a tar archive")
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")) or b"<html" in lowered:
        raise PipelineError(f"{path} is an HTML page (a server error page?), not a tar archive")
    raise PipelineError(f"{path} is not a tar archive (it starts with {head[:12]!r})")


def extract_archive(archive: Path, dest: Path) -> None:
    """Extract a tar archive into `dest` with tarfile's `data` filter.

    The filter refuses absolute paths, ``..`` members, links pointing outside `dest`, and device
    files, so a hostile archive cannot write outside `dest`. Streaming mode (``r|*``) reads the
    compressed file once, front to back, and the progress bar follows the compressed bytes.
    """
    bar = progress(total=archive.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc="extract")
    try:
        with archive.open("rb") as raw, bar, tarfile.open(fileobj=_Counting(raw, bar), mode="r|*") as tar:
            tar.errorlevel = 1  # filter refusals and fatal errors raise
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as exc:
        raise PipelineError(
            f"{archive} holds an unsafe member ({exc}); refused to extract it: {SOURCE_HINT}"
        ) from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        # stream mode wraps decompression errors in ReadError ("unexpected end of data"...)
        raise PipelineError(
            f"{archive} is truncated or corrupt ({str(exc) or type(exc).__name__}): "
            f"delete it and download again, or {SOURCE_HINT}"
        ) from None


class _Counting:
    """A read-only file wrapper that advances a progress bar (tarfile's stream mode only reads)."""

    def __init__(self, raw, bar):
        self._raw, self._bar = raw, bar

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._bar.update(len(data))
        return data
