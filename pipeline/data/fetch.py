"""Resumable HTTP download of one file: Range requests, retries with backoff, one clear error at the end.

A download in progress lives in ``<cache_dir>/<name>.part`` (resumed with a Range request, guarded by
the server's validator), a finished one in ``<cache_dir>/<name>``, and ``<name>.json`` records which
URL those bytes came from: its sha256, and the URL redacted (a signed URL or one with a password
never lands on disk or in a message; `pipeline.core.urls`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

import requests
import urllib3

from pipeline import __version__
from pipeline.core.errors import PipelineError
from pipeline.core.fileio import write_json
from pipeline.core.progress import print_line, progress
from pipeline.core.urls import redact_url

SOURCE_ENV = "CYCLEGAN_DATA_SOURCE"
OFFLINE_HINT = f"{SOURCE_ENV}=/path/to/cityscapes.tar.gz"
CHUNK_BYTES = 1 << 20
MAX_BACKOFF_S = 60.0


class _TransientError(Exception):
    """A failure worth retrying; `kind` picks the final message once retries run out."""

    def __init__(self, kind: Literal["unreachable", "server", "interrupted"], detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def fetch_url(url: str, cache_dir: Path, retries: int, timeout_s: float, backoff_s: float) -> Path:
    """Download `url` into `cache_dir`, resuming a previous partial download; return the file.

    Transient failures (connection errors, timeouts, dropped connections, HTTP 5xx/429) are retried
    `retries` times with exponential backoff, each retry resuming where the last one stopped.
    Other HTTP errors (404...) fail at once. A finished download for the same URL is reused.
    """
    name = _archive_name(url)
    final, part, meta_path = cache_dir / name, cache_dir / f"{name}.part", cache_dir / f"{name}.json"
    meta = _read_json(meta_path)
    url_sha256 = hashlib.sha256(url.encode()).hexdigest()
    # A record written before URLs were stored redacted holds the URL itself.
    same_url = meta.get("url_sha256") == url_sha256 or ("url_sha256" not in meta and meta.get("url") == url)
    if not same_url:  # bytes from another URL (or none): never resume or reuse them
        final.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
        meta = {}
    elif meta.get("complete") and final.is_file():
        return final
    meta.update(url=redact_url(url), url_sha256=url_sha256)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with requests.Session() as session:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
            try:
                _fetch_once(session, url, part, meta, meta_path, timeout_s)
                break
            except _TransientError as exc:
                error = exc
                print_line(f"download: attempt {attempt + 1} of {retries + 1} failed: {exc.detail}")
        else:
            raise _give_up(error, url, part, retries + 1)
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
            f"{redact_url(url)} answered HTTP {status} {response.reason}: fix data.source in params.yaml, "
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
    bar = progress(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name)
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
            f"{redact_url(url)} answered {error.detail} {tries}: the server is failing, run again later "
            f"or use a local copy with {OFFLINE_HINT}"
        )
    saved = part.stat().st_size if part.exists() else 0
    return PipelineError(
        f"download of {redact_url(url)} kept breaking off {tries} ({error.detail}; {saved} bytes kept in "
        f"{part}): run again to resume, or use a local copy with {OFFLINE_HINT}"
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
