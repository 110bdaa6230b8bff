"""One `error:` line and a non-zero exit for any failure of an entry point; a traceback only on request."""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from PIL import Image

from pipeline.core.entry import run_main
from pipeline.core.errors import PipelineError
from pipeline.cyclegan.losses import LossSwitches
from tests.factories import (
    ROOT,
    TINY_TRAIN,
    make_archive,
    make_bomb_image,
    make_checkpoint,
    make_pix2pix_tree,
    make_split,
    write_params,
)


def _raise(exc: BaseException):
    def main() -> int:
        raise exc

    return main


def _torch_save_on_a_full_disk() -> int:
    # What torch.save raises when the disk fills: its own RuntimeError, the OSError as the context.
    try:
        raise OSError(errno.EFBIG, "File too large")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None


def _unreachable() -> int:
    request = requests.Request("GET", "http://alice:s3cret@127.0.0.1:9/api?token=abc").prepare()
    raise requests.ConnectionError("Max retries exceeded with url: /api?token=abc", request=request)


@pytest.mark.parametrize(
    ("main", "expected"),
    [
        (_raise(PipelineError("data.source is wrong: fix it")), "error: data.source is wrong: fix it"),
        (
            _raise(OSError(errno.ENOSPC, "No space left on device", "out/a.png")),
            "no space left on device writing out/a.png",
        ),
        (_torch_save_on_a_full_disk, "file too large for this file system or the file size limit"),
        (_raise(sqlite3.OperationalError("database or disk is full")), "a database could not be written"),
        (_raise(Image.DecompressionBombError("Image size (9e8 pixels) exceeds limit")), "decompression bomb"),
        (_unreachable, "cannot connect to http://***@127.0.0.1:9/api?*** (ConnectionError)"),
        (_raise(FileExistsError(errno.EEXIST, "File exists", "data/raw/x")), "data/raw/x already exists"),
        (_raise(PermissionError(errno.EACCES, "Permission denied", "/out")), "permission denied /out"),
        (
            _raise(ValueError("two\nlines at http://u:p@host/x")),
            "unexpected ValueError: two lines at http://***@host/x",
        ),
    ],
)
def test_any_failure_is_one_line_without_a_traceback(main, expected, capsys, monkeypatch):
    monkeypatch.delenv("CYCLEGAN_DEBUG", raising=False)
    assert run_main(main) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert "Traceback" not in err and "s3cret" not in err and "token=abc" not in err


def test_ctrl_c_is_interrupted_130_and_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.delenv("CYCLEGAN_DEBUG", raising=False)
    assert run_main(_raise(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "interrupted: stopped by SIGINT (Ctrl-C)\n"
    monkeypatch.setenv("CYCLEGAN_DEBUG", "1")
    assert run_main(_raise(ValueError("boom"))) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith("error: unexpected")


# --- real stage processes ------------------------------------------------------------------------------


def _stage(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "CYCLEGAN_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**environment, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    return errors[0]


def test_download_of_an_archive_holding_a_decompression_bomb(tmp_path):
    tree = make_pix2pix_tree(tmp_path / "src")
    make_bomb_image(tree / "train" / "1.jpg")
    archive = make_archive(tmp_path / "src", tmp_path / "cityscapes.tar.gz")
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  source: {archive}\n  expected_counts: {{train: 12, val: 4}}\n")
    result = _stage("stages.download", "--params", str(params), "--out", str(tmp_path / "raw"))
    line = _one_error_line(result)
    assert "train/1.jpg" in line and "decompression bomb" in line
    assert not (tmp_path / "raw").exists()


@pytest.mark.slow
def test_train_against_an_unreachable_tracking_server_is_one_line_without_its_credentials(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    params = write_params(tmp_path / "params.yaml", TINY_TRAIN, {"cyclegan": LossSwitches()})
    split = make_split(tmp_path / "split")
    result = _stage(
        "stages.train",
        *(
            "--params",
            str(params),
            "--variant",
            "cyclegan",
            "--split",
            str(split),
            "--out",
            str(tmp_path / "m"),
        ),
        env={
            "MLFLOW_TRACKING_URI": f"http://alice:s3cret@127.0.0.1:{port}/?token=abc",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
        },
    )
    line = _one_error_line(result)
    assert "does not answer" in line and f"127.0.0.1:{port}" in line, line
    assert "s3cret" not in result.stderr + result.stdout and "token=abc" not in result.stderr + result.stdout


@pytest.mark.slow
def test_the_cyclegan_command_is_one_line_too(tmp_path):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    (tmp_path / "out").write_text("a file, not a folder")
    result = _stage(
        "pipeline.orchestration.cli",
        *("translate", str(make_checkpoint(tmp_path / "c.pt")), str(tmp_path / "in"), str(tmp_path / "out")),
        *("--direction", "photo2label", "--device", "cpu"),
    )
    assert str(tmp_path / "out") in _one_error_line(result)


def test_unreadable_image_errors_stay_named(tmp_path: Path):
    from pipeline.core.images import read_rgb

    with pytest.raises(PipelineError, match=r"cannot read image .*bomb\.png"):
        read_rgb(make_bomb_image(tmp_path / "bomb.png"))
