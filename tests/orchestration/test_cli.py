"""The `cyclegan` command line: argument handling and `translate` end to end on a tiny checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.orchestration.cli import build_parser, main
from tests.factories import make_checkpoint


def _images(folder: Path, count: int = 3, size: int = 20) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = rng.integers(0, 256, size=(size, size + 4, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.jpg")
    return folder


def test_translate_writes_one_png_per_input(tmp_path: Path, capsys):
    checkpoint = make_checkpoint(tmp_path / "checkpoint.pt")
    inputs = _images(tmp_path / "in")
    out = tmp_path / "out"
    argv = [str(checkpoint), str(inputs), str(out), "--direction", "label2photo", "--device", "cpu"]
    assert main(["translate", *argv, "--batch-size", "2", "--size", "16"]) == 0
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["0.png", "1.png", "2.png"]
    assert Image.open(written[0]).size == (16, 16)
    assert "translated 3 image(s) label2photo" in capsys.readouterr().out


def test_translate_errors_are_one_line_and_exit_1(tmp_path: Path, capsys):
    inputs = _images(tmp_path / "in", count=1)
    argv = ["translate", str(tmp_path / "missing.pt"), str(inputs), str(tmp_path / "out")]
    assert main([*argv, "--direction", "photo2label", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "checkpoint" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["translate", "c.pt", "in", "out"],  # --direction is required
        ["translate", "c.pt", "in", "out", "--direction", "sideways"],
        ["translate", "c.pt", "in", "out", "--direction", "photo2label", "--batch-size", "x"],
        ["deploy"],  # --pool is required
    ],
)
def test_bad_arguments_exit_2_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: cyclegan" in capsys.readouterr().err


def test_serve_defaults_to_deployment_ablation_one_run_at_a_time():
    args = build_parser().parse_args(["serve"])
    assert (args.name, args.limit) == ("ablation", 1)


def test_module_entry_point_prints_help():
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.orchestration.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert all(command in result.stdout for command in ("serve", "deploy", "translate"))


def test_serve_without_a_prefect_api_says_how_to_start_one(capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Prefect reads its settings once per process, so they are changed through its own API.
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: PREFECT_API_URL is not set") and "prefect server start" in err


def test_serve_with_an_unreachable_api_is_one_line(capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # refused at once
        assert main(["serve"]) == 1
    err = capsys.readouterr().err.strip()
    assert "does not answer" in err and "\n" not in err
