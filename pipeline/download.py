"""The `download` stage: fetch the pix2pix Cityscapes archive and extract it safely into `data/raw`.

The output folder is a DVC output, so it must be either complete and valid or untouched. Everything
in flight therefore lives in a scratch folder *beside* it (``<out_dir.parent>/.download/``):

- ``<name>.part``  the HTTP download in progress (resumed with a Range request on the next run);
- ``<name>``       the finished download, kept so that a re-run does not fetch 100 MB again;
- ``<name>.json``  which URL those bytes came from and the server's validator (ETag / Last-Modified);
- ``staged-*/``    the extraction (or folder copy), moved onto ``out_dir`` only after its layout
                   checked out (counts per split, image sizes) and its provenance file is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import requests
import urllib3
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pipeline import __version__
from pipeline.errors import PipelineError
from pipeline.fileio import write_json

SOURCE_ENV = "CYCLEGAN_DATA_SOURCE"
PROVENANCE_NAME = "provenance.json"
DATASET_FOLDER = "cityscapes"  # the archive's top-level folder; the split stage reads out_dir/cityscapes
SCRATCH_NAME = ".download"
IMAGE_SUFFIX = ".jpg"
CHUNK_BYTES = 1 << 20
MAX_BACKOFF_S = 60.0
OFFLINE_HINT = f"{SOURCE_ENV}=/path/to/cityscapes.tar.gz"
SOURCE_HINT = f"point data.source (or {SOURCE_ENV}) at the pix2pix cityscapes.tar.gz"

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

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise ValueError("source must be a URL, an archive path or a folder")
        if self.sha256 is not None:
            self.sha256 = self.sha256.strip().lower()
            if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
                raise ValueError(f"sha256 must be 64 hex digits or null, got {self.sha256!r}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError("timeout_s must be > 0 and backoff_s >= 0")
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
            f"{origin} {raw!r} uses unsupported scheme {scheme}://: use http(s), or a local path"
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
    scratch.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix="staged-", dir=scratch))
    staged.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would become out_dir's mode
    try:
        if source.kind == "folder":
            digest, size = None, _copy_dataset_folder(Path(source.location), staged)
        else:
            archive = (
                fetch_url(source.location, scratch, cfg) if source.kind == "url" else Path(source.location)
            )
            digest, size = _checked_archive(archive, source, cfg)
            extract_archive(archive, staged)
        counts = check_layout(staged, cfg.expected_counts, cfg.image_size, source.location)
        provenance = {
            "source": source.location,
            "source_kind": source.kind,
            "sha256": digest,
            "bytes": size,
            "counts": counts,
            "image_size": list(cfg.image_size),
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "pipeline_version": __version__,
        }
        (staged / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2) + "\n")
        _replace_dir(staged, out_dir, scratch)
        return provenance
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        _remove_if_empty(scratch)


# --- HTTP ---------------------------------------------------------------------------------------


class _TransientError(Exception):
    """A failure worth retrying; `kind` picks the final message once retries run out."""

    def __init__(self, kind: Literal["unreachable", "server", "interrupted"], detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def fetch_url(url: str, cache_dir: Path, cfg: DataConfig) -> Path:
    """Download `url` into `cache_dir`, resuming a previous partial download; return the file.

    Transient failures (connection errors, timeouts, dropped connections, HTTP 5xx/429) are retried
    `cfg.retries` times with exponential backoff, each retry resuming where the last one stopped.
    Other HTTP errors (404...) fail at once. A finished download for the same URL is reused.
    """
    name = _archive_name(url)
    final, part, meta_path = cache_dir / name, cache_dir / f"{name}.part", cache_dir / f"{name}.json"
    meta = _read_json(meta_path)
    if meta.get("url") != url:  # bytes from another URL (or none): never resume or reuse them
        final.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
        meta = {"url": url}
    elif meta.get("complete") and final.is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with requests.Session() as session:
        for attempt in range(cfg.retries + 1):
            if attempt:
                time.sleep(min(cfg.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
            try:
                _fetch_once(session, url, part, meta, meta_path, cfg.timeout_s)
                break
            except _TransientError as exc:
                error = exc
                tqdm.write(f"download: attempt {attempt + 1} of {cfg.retries + 1} failed: {exc.detail}")
        else:
            raise _give_up(error, url, part, cfg.retries + 1)
    os.replace(part, final)
    meta["complete"] = True
    write_json(meta_path, meta)
    return final


def _fetch_once(
    session: requests.Session, url: str, part: Path, meta: dict, meta_path: Path, timeout_s: float
) -> None:
    """One HTTP request that appends to (or restarts) `part`; raises `_TransientError` to retry."""
    have = part.stat().st_size if part.exists() else 0
    # identity: the .tar.gz must arrive byte for byte, never transparently gunzipped
    headers = {"Accept-Encoding": "identity", "User-Agent": f"cyclegan-ablation/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if meta.get("validator"):  # the server sends the whole file (200) if it changed meanwhile
            headers["If-Range"] = meta["validator"]
    try:
        response = session.get(url, headers=headers, stream=True, timeout=timeout_s)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _TransientError("unreachable", _short_reason(exc)) from None
    with response:
        start, total = _check_response(response, url, have, part)
        if start == 0:
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            if validator and validator.startswith("W/"):  # If-Range accepts strong validators only
                validator = None
            meta.update(validator=validator, total=total)
            write_json(meta_path, meta)
        _stream_body(response, part, start, total)


def _check_response(response: requests.Response, url: str, have: int, part: Path) -> tuple[int, int | None]:
    """Classify the status; return (offset the body starts at, total file size if known)."""
    status = response.status_code
    if status == 416 and have:  # our .part is already whole, or longer than the file: start over
        part.unlink(missing_ok=True)
        raise _TransientError("interrupted", f"server refused resuming at byte {have}; restarting")
    if status >= 500 or status == 429:
        raise _TransientError("server", f"HTTP {status} {response.reason}")
    if status not in (200, 206):
        raise PipelineError(
            f"{url} answered HTTP {status} {response.reason}: fix data.source in params.yaml, "
            f"or use a local copy with {OFFLINE_HINT}"
        )
    if status == 206:
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", "").strip())
        if match and int(match[1]) == have:
            return have, None if match[2] == "*" else int(match[2])
        part.unlink(missing_ok=True)  # a range we did not ask for: the safe thing is a clean restart
        raise _TransientError("interrupted", "server answered an unexpected byte range; restarting")
    # 200: the server ignored Range (or the file changed): the body is the whole file from byte 0
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def _stream_body(response: requests.Response, part: Path, start: int, total: int | None) -> None:
    """Write the response body to `part` from byte `start`; a short body is a transient error."""
    bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name)
    with part.open("r+b" if start else "wb") as handle, bar:
        handle.seek(start)
        handle.truncate()
        try:
            # raw + decode_content=False: bytes exactly as sent, even with a Content-Encoding header
            for chunk in response.raw.stream(CHUNK_BYTES, decode_content=False):
                handle.write(chunk)
                bar.update(len(chunk))
        except (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            ConnectionError,
            TimeoutError,
        ) as exc:
            handle.flush()
            where = f"connection lost at byte {handle.tell()}"
            raise _TransientError("interrupted", f"{where} ({_short_reason(exc)})") from None
        got = handle.tell()
    if total is not None and got != total:
        raise _TransientError("interrupted", f"connection closed at byte {got} of {total}")


def _give_up(error: _TransientError, url: str, part: Path, attempts: int) -> PipelineError:
    tries = f"after {attempts} attempt{'s' if attempts > 1 else ''}"
    if error.kind == "unreachable":
        host = urlparse(url).hostname
        return PipelineError(
            f"cannot reach {host} ({error.detail}) {tries}: check the network, "
            f"or work offline with {OFFLINE_HINT}"
        )
    if error.kind == "server":
        return PipelineError(
            f"{url} answered {error.detail} {tries}: the server is failing, run again later "
            f"or use a local copy with {OFFLINE_HINT}"
        )
    saved = part.stat().st_size if part.exists() else 0
    return PipelineError(
        f"download of {url} kept breaking off {tries} ({error.detail}; {saved} bytes kept in {part}): "
        f"run again to resume, or use a local copy with {OFFLINE_HINT}"
    )


def _short_reason(exc: BaseException) -> str:
    """A one-line cause for a network error (requests' own messages nest three exceptions deep)."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if errno:
        return errno[0].strip()
    if "IncompleteRead" in text:
        return "the server closed the connection early"
    if "NameResolution" in text or "getaddrinfo" in text:
        return "host name not resolved"
    if isinstance(exc, requests.Timeout) or "timed out" in text.lower():
        return "timed out"
    return type(exc).__name__


def _archive_name(url: str) -> str:
    name = Path(unquote(urlparse(url).path)).name
    return name if re.fullmatch(r"[\w.+-]+", name or "") else "archive.tar.gz"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks with a progress bar."""
    digest = hashlib.sha256()
    bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc="sha256")
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


def _checked_archive(archive: Path, source: Source, cfg: DataConfig) -> tuple[str, int]:
    """Sniff and checksum an archive before anything is extracted; return (sha256, bytes)."""
    downloaded = source.kind == "url"
    try:
        sniff_archive(archive)
    except PipelineError as exc:
        if downloaded:  # garbage in the cache would be reused forever: drop it
            archive.unlink(missing_ok=True)
            raise PipelineError(
                f"{exc} (downloaded from {source.location}, deleted): {SOURCE_HINT}"
            ) from None
        raise PipelineError(f"{exc}: {SOURCE_HINT}") from None
    digest = sha256_file(archive)
    if cfg.sha256 and digest != cfg.sha256:
        fix = f"delete {archive} to download it again" if downloaded else "use an intact copy"
        raise PipelineError(
            f"sha256 mismatch for {archive}: expected {cfg.sha256}, got {digest}; {fix}, "
            f"or fix data.sha256 in params.yaml if the expected value is wrong"
        )
    return digest, archive.stat().st_size


def extract_archive(archive: Path, dest: Path) -> None:
    """Extract a tar archive into `dest` with tarfile's `data` filter.

    The filter refuses absolute paths, ``..`` members, links pointing outside `dest`, and device
    files, so a hostile archive cannot write outside `dest`. Streaming mode (``r|*``) reads the
    compressed file once, front to back, and the progress bar follows the compressed bytes.
    """
    bar = tqdm(total=archive.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc="extract")
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

    def __init__(self, raw, bar: tqdm):
        self._raw, self._bar = raw, bar

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._bar.update(len(data))
        return data


# --- folders, layout, and the final move -------------------------------------------------------


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
    bar = tqdm(total=len(files), unit="file", desc="copy")

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
    except (UnidentifiedImageError, OSError) as exc:
        raise PipelineError(
            f"unexpected layout in {source}: {name} is not a readable image ({exc})"
        ) from None
    if size != image_size:
        raise PipelineError(
            f"unexpected layout in {source}: {name} is {size[0]}x{size[1]}, expected "
            f"{image_size[0]}x{image_size[1]}; {SOURCE_HINT}"
        )


def _replace_dir(staged: Path, out_dir: Path, scratch: Path) -> None:
    """Move `staged` onto `out_dir`, putting the old `out_dir` back if the move fails.

    A directory cannot be atomically swapped for a non-empty one, so the old one is renamed aside
    first; both renames stay on one filesystem (scratch is beside out_dir), so each is atomic and
    `out_dir` is at every instant either the old complete tree, absent, or the new complete tree.
    """
    aside = None
    if out_dir.exists() or out_dir.is_symlink():
        aside = scratch / f"old-{staged.name}"
        os.replace(out_dir, aside)
    try:
        os.replace(staged, out_dir)
    except OSError:
        if aside is not None:
            os.replace(aside, out_dir)
        raise
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside)
        else:
            aside.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # it holds a cached download (or is gone): keep it
        folder.rmdir()
