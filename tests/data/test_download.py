"""The download stage against a real HTTP server on 127.0.0.1 and real (tiny, sometimes hostile) archives."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.data.download import SOURCE_ENV, DataConfig, download, resolve_source
from stages.download import main

TINY_COUNTS = {"train": 12, "val": 4}
HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body>nope</body></html>\n"


def tiny_cfg(source, **overrides) -> DataConfig:
    settings = dict(retries=0, timeout_s=5.0, backoff_s=0.01, expected_counts=dict(TINY_COUNTS))
    settings.update(overrides)
    return DataConfig(source=str(source), **settings)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def populated_out(tmp_path: Path) -> Path:
    """An existing `data/raw` that a failed run must leave exactly as it is."""
    out = tmp_path / "work" / "data" / "raw"
    out.mkdir(parents=True)
    (out / "sentinel.txt").write_text("previous good download")
    return out


def assert_untouched(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["sentinel.txt"]
    assert (out / "sentinel.txt").read_text() == "previous good download"


# --- a small Range-capable HTTP server -----------------------------------------------------------


@dataclass
class Served:
    """What the test server serves, and what it saw."""

    body: bytes
    etag: str = '"v1"'
    status: int | None = None  # answer every request with this error status
    drop_first_at: int | None = None  # the first response breaks off after this many body bytes
    honor_range: bool = True
    ranges: list[str | None] = field(default_factory=list)  # the Range header of each request
    bytes_sent: int = 0


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            served.ranges.append(self.headers.get("Range"))
            if served.status is not None:
                self._send(served.status, HTML_PAGE, {"Content-Type": "text/html"})
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match and served.honor_range and self.headers.get("If-Range") in (None, served.etag):
                start = int(match[1])
            payload = served.body[start:]
            headers = {"ETag": served.etag, "Accept-Ranges": "bytes"}
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(served.body) - 1}/{len(served.body)}"
            if served.drop_first_at is not None and len(served.ranges) == 1:
                # Announce the full length, send part of it, then hang up.
                self._send(206 if start else 200, payload, headers, cut_at=served.drop_first_at)
                return
            self._send(206 if start else 200, payload, headers)

        def _send(self, status: int, payload: bytes, headers: dict, cut_at: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if cut_at is not None:
                payload = payload[:cut_at]
                self.close_connection = True
            self.wfile.write(payload)
            self.wfile.flush()
            served.bytes_sent += len(payload)

    return Handler


@pytest.fixture
def serve():
    """`serve(Served(...)) -> url`: an HTTP server on a free 127.0.0.1 port for this test."""
    servers = []

    def start(served: Served) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/pix2pix/datasets/cityscapes.tar.gz"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket closes


# --- HTTP -----------------------------------------------------------------------------------------


def test_dropped_download_resumes_on_the_next_run(tmp_path, pix2pix_archive, serve):
    body = pix2pix_archive.read_bytes()
    half = len(body) // 2
    served = Served(body, drop_first_at=half)
    url = serve(served)
    out = tmp_path / "work" / "data" / "raw"

    with pytest.raises(PipelineError, match=r"kept breaking off.*run again to resume") as failed:
        download(tiny_cfg(url), out)
    assert "\n" not in str(failed.value)
    assert not out.exists()
    part = out.parent / ".download" / "cityscapes.tar.gz.part"
    assert part.stat().st_size == half

    sent_before = served.bytes_sent
    provenance = download(tiny_cfg(url, sha256=sha256(pix2pix_archive)), out)

    fetched_again = served.bytes_sent - sent_before
    assert fetched_again == len(body) - half < len(body)
    assert served.ranges == [None, f"bytes={half}-"]
    assert provenance["sha256"] == sha256(pix2pix_archive)
    assert provenance["bytes"] == len(body)
    assert provenance["source"] == url and provenance["source_kind"] == "url"
    assert json.loads((out / "provenance.json").read_text()) == provenance
    assert len(list((out / "dataset" / "train").glob("*.jpg"))) == 12
    assert not part.exists()


def test_retries_resume_within_one_run(tmp_path, pix2pix_archive, serve):
    body = pix2pix_archive.read_bytes()
    served = Served(body, drop_first_at=len(body) // 3)
    provenance = download(tiny_cfg(serve(served), retries=2), tmp_path / "data" / "raw")
    assert provenance["counts"] == TINY_COUNTS
    assert served.bytes_sent == len(body)  # nothing fetched twice
    assert len(served.ranges) == 2


def test_server_ignoring_range_restarts_cleanly(tmp_path, pix2pix_archive, serve):
    body = pix2pix_archive.read_bytes()
    served = Served(body, drop_first_at=len(body) // 2)
    url = serve(served)
    out = tmp_path / "data" / "raw"
    with pytest.raises(PipelineError):
        download(tiny_cfg(url), out)
    served.honor_range = False  # now answers 200 with the whole file
    provenance = download(tiny_cfg(url), out)
    assert provenance["sha256"] == sha256(pix2pix_archive)  # not half a file plus a whole one


def test_completed_download_is_reused(tmp_path, pix2pix_archive, serve):
    served = Served(pix2pix_archive.read_bytes())
    url = serve(served)
    download(tiny_cfg(url), tmp_path / "data" / "raw")
    download(tiny_cfg(url), tmp_path / "data" / "raw")
    assert len(served.ranges) == 1


def test_http_404_fails_at_once(tmp_path, serve):
    served = Served(b"", status=404)
    out = populated_out(tmp_path)
    with pytest.raises(PipelineError, match=r"HTTP 404 .*fix data\.source"):
        download(tiny_cfg(serve(served), retries=3), out)
    assert len(served.ranges) == 1
    assert_untouched(out)


def _with_secrets(url: str) -> str:
    return url.replace("http://", "http://alice:s3cret@") + "?token=abc"


def test_credentials_and_query_of_the_url_reach_no_record_and_no_message(
    tmp_path, pix2pix_archive, serve, monkeypatch, capsys
):
    url = _with_secrets(serve(Served(pix2pix_archive.read_bytes())))
    monkeypatch.setenv(SOURCE_ENV, url)
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  source: unused\n  retries: 0\n  expected_counts: {train: 12, val: 4}\n")
    out = tmp_path / "data" / "raw"
    assert main(["--params", str(params), "--out", str(out)]) == 0
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["source"] == re.sub(r"alice:s3cret@(.*)\?token=abc", r"***@\1?***", url)
    shown = capsys.readouterr()
    records = [shown.out, shown.err, *(p.read_text() for p in tmp_path.rglob("*.json"))]
    assert not [text for text in records if "s3cret" in text or "token=abc" in text]

    monkeypatch.delenv(SOURCE_ENV)
    served = serve(Served(b"", status=404))  # and the error of a failing download
    with pytest.raises(
        PipelineError, match=r"\*\*\*@127\.0\.0\.1:\d+/.*\?\*\*\* answered HTTP 404"
    ) as failed:
        download(tiny_cfg(_with_secrets(served)), tmp_path / "other" / "raw")
    assert "s3cret" not in str(failed.value) and "token" not in str(failed.value)


def test_http_500_is_retried_then_fails(tmp_path, serve):
    served = Served(b"", status=500)
    with pytest.raises(PipelineError, match=r"HTTP 500 .*after 3 attempts"):
        download(tiny_cfg(serve(served), retries=2), tmp_path / "data" / "raw")
    assert len(served.ranges) == 3


def test_unreachable_host_names_the_offline_override(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/cityscapes.tar.gz"
    with pytest.raises(
        PipelineError, match=rf"cannot reach 127\.0\.0\.1 .*{SOURCE_ENV}=/path/to/cityscapes"
    ) as err:
        download(tiny_cfg(url, retries=1), tmp_path / "data" / "raw")
    assert "\n" not in str(err.value) and "Connection refused" in str(err.value)


def test_html_page_served_as_the_archive(tmp_path, serve):
    out = populated_out(tmp_path)
    with pytest.raises(PipelineError, match="is an HTML page"):
        download(tiny_cfg(serve(Served(HTML_PAGE))), out)
    assert_untouched(out)
    cached = out.parent / ".download" / "cityscapes.tar.gz"
    assert not cached.exists() and not cached.with_name("cityscapes.tar.gz.part").exists()  # not kept


# --- hostile and broken archives -------------------------------------------------------------------


def hostile_archive(pix2pix_tree: Path, path: Path, *evil: tarfile.TarInfo) -> Path:
    """Some genuine members first (so extraction has started), then the hostile ones."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(pix2pix_tree / "train" / "1.jpg", arcname="cityscapes/train/1.jpg")
        for info in evil:
            data = b"pwned" if info.isfile() else None
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_tar_with_dotdot_member_is_refused(tmp_path, pix2pix_tree):
    archive = hostile_archive(pix2pix_tree, tmp_path / "dotdot.tar.gz", tarfile.TarInfo("../evil"))
    out = populated_out(tmp_path)
    with pytest.raises(PipelineError, match="unsafe member"):
        download(tiny_cfg(archive), out)
    assert_untouched(out)
    assert list(out.parent.iterdir()) == [out]  # no temp folder left, nothing beside data/raw
    assert not list(tmp_path.rglob("evil"))


def test_tar_with_escaping_symlink_is_refused(tmp_path, pix2pix_tree):
    out = populated_out(tmp_path)
    outside = tmp_path / "work" / "outside"
    outside.mkdir()
    # Extracted at data/.download/staged-*/cityscapes/escape, this climbs to work/outside; the
    # next member would then write through the link (it does, without the `data` filter).
    link = tarfile.TarInfo("cityscapes/escape")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../../outside"
    through = tarfile.TarInfo("cityscapes/escape/pwned.txt")
    archive = hostile_archive(pix2pix_tree, tmp_path / "symlink.tar.gz", link, through)
    with pytest.raises(PipelineError, match="unsafe member"):
        download(tiny_cfg(archive), out)
    assert_untouched(out)
    assert list(out.parent.iterdir()) == [out]
    assert not list(outside.iterdir()) and not list(tmp_path.rglob("pwned.txt"))


def test_truncated_archive(tmp_path, pix2pix_archive):
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(pix2pix_archive.read_bytes()[: pix2pix_archive.stat().st_size // 2])
    out = populated_out(tmp_path)
    with pytest.raises(PipelineError, match=r"truncated or corrupt.*download again"):
        download(tiny_cfg(truncated), out)
    assert_untouched(out)
    assert list(out.parent.iterdir()) == [out]


def test_html_page_saved_as_the_archive(tmp_path):
    page = tmp_path / "cityscapes.tar.gz"
    page.write_bytes(HTML_PAGE)
    out = populated_out(tmp_path)
    with pytest.raises(PipelineError, match=r"is an HTML page.*not a tar archive"):
        download(tiny_cfg(page), out)
    assert_untouched(out)


def test_wrong_checksum(tmp_path, pix2pix_archive):
    out = populated_out(tmp_path)
    with pytest.raises(
        PipelineError, match=rf"expected {'0' * 64}, got {sha256(pix2pix_archive)}.*data\.sha256"
    ):
        download(tiny_cfg(pix2pix_archive, sha256="0" * 64), out)
    assert_untouched(out)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"expected_counts": {"train": 13, "val": 4}}, r"train/ holds 12 images, expected 13"),
        ({"expected_counts": {"train": 12, "val": 5}}, r"val/ holds 4 images, expected 5"),
        ({"image_size": (256, 256)}, r"train/1\.jpg is 512x256, expected 256x256"),
    ],
)
def test_unexpected_layout(tmp_path, pix2pix_archive, overrides, message):
    out = populated_out(tmp_path)
    with pytest.raises(PipelineError, match=f"unexpected layout in .*{message}"):
        download(tiny_cfg(pix2pix_archive, **overrides), out)
    assert_untouched(out)
    assert list(out.parent.iterdir()) == [out]


# --- local sources ------------------------------------------------------------------------------------


def test_local_archive_replaces_existing_output(tmp_path, pix2pix_archive):
    out = populated_out(tmp_path)
    provenance = download(tiny_cfg(pix2pix_archive), out)
    assert provenance["source"] == str(pix2pix_archive) and provenance["source_kind"] == "archive"
    assert provenance["sha256"] == sha256(pix2pix_archive)
    assert provenance["counts"] == TINY_COUNTS
    assert provenance["dataset"] == "cityscapes" and provenance["layout"] == "paired"
    assert sorted(p.name for p in out.iterdir()) == ["dataset", "provenance.json"]
    assert list(out.parent.iterdir()) == [out]  # the archive is used in place: nothing cached


@pytest.mark.parametrize("level", ["dataset folder", "its parent"])
def test_extracted_folder_is_copied(tmp_path, pix2pix_tree, level):
    source = pix2pix_tree if level == "dataset folder" else pix2pix_tree.parent
    out = tmp_path / "data" / "raw"
    provenance = download(tiny_cfg(source), out)
    assert provenance["source_kind"] == "folder" and provenance["sha256"] is None
    copied = out / "dataset" / "val" / "4.jpg"
    assert copied.read_bytes() == (pix2pix_tree / "val" / "4.jpg").read_bytes()
    assert copied.stat().st_ino != (pix2pix_tree / "val" / "4.jpg").stat().st_ino  # a copy, not a link
    assert provenance["bytes"] == sum(p.stat().st_size for p in pix2pix_tree.rglob("*.jpg"))


def test_env_var_overrides_source(tmp_path, pix2pix_archive, monkeypatch):
    monkeypatch.chdir(pix2pix_archive.parent)
    monkeypatch.setenv(SOURCE_ENV, pix2pix_archive.name)  # relative to the current directory
    cfg = tiny_cfg(f"http://127.0.0.1:{closed_port()}/never-used.tar.gz")
    assert resolve_source(cfg).location == str(pix2pix_archive)
    assert download(cfg, tmp_path / "data" / "raw")["source"] == str(pix2pix_archive)


def test_staging_folders_of_a_killed_run_are_removed(tmp_path, pix2pix_archive):
    out = populated_out(tmp_path)
    for stale in (".raw-staging-k1lled", ".raw-staging-k1lled-old-x"):
        (out.parent / stale / "cityscapes").mkdir(parents=True)
    download(tiny_cfg(pix2pix_archive), out)
    assert list(out.parent.iterdir()) == [out]


def test_missing_local_source(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        download(tiny_cfg(tmp_path / "nope.tar.gz"), tmp_path / "data" / "raw")


# --- stage entry point -------------------------------------------------------------------------------


def test_stage_main_prints_a_summary_and_fails_cleanly(tmp_path, pix2pix_archive, monkeypatch, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(
        f"data:\n  source: {pix2pix_archive}\n  sha256: null\n  retries: 0\n  timeout_s: 5\n"
        "  expected_counts: {train: 12, val: 4}\n"
    )
    assert main(["--params", str(params), "--out", str(tmp_path / "raw")]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert (
        summary.startswith("download: ")
        and "train=12 val=4" in summary
        and sha256(pix2pix_archive) in summary
    )

    monkeypatch.setenv(SOURCE_ENV, str(tmp_path / "missing.tar.gz"))
    assert main(["--params", str(params), "--out", str(tmp_path / "raw")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: CYCLEGAN_DATA_SOURCE") and "does not exist" in err[-1]
