"""The `cyclegan` command line: argument handling and `translate` end to end on a tiny checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.orchestration.cli import build_parser, main
from tests.factories import make_checkpoint, run_file_size_limited


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
        ["translate", "c.pt", "in", "out", "--direction", "photo2label", "--batch-size", "x"],
        ["deploy", "--pool", "gpu"],  # gone: prefect.yaml holds the deployments (prefect deploy --all)
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
    assert all(command in result.stdout for command in ("serve", "ui", "translate", "prefect.yaml"))


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


# --- users' own images and the ways their folders can be wrong -------------------------------------------


def test_translate_takes_exif_16_bit_palette_and_alpha_images(tmp_path: Path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown upright
    Image.new("RGB", (12, 8), (10, 20, 30)).save(inputs / "phone.jpg", exif=exif)
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(inputs / "deep.png")
    Image.new("P", (8, 8), 3).save(inputs / "palette.gif")
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(inputs / "alpha.png")
    checkpoint = make_checkpoint(tmp_path / "checkpoint.pt")
    argv = [
        str(checkpoint),
        str(inputs),
        str(tmp_path / "out"),
        "--direction",
        "label2photo",
        "--device",
        "cpu",
    ]
    assert main(["translate", *argv]) == 0
    sizes = {p.name: Image.open(p).size for p in (tmp_path / "out").iterdir()}
    assert sizes == {"phone.png": (8, 12), "deep.png": (8, 8), "palette.png": (8, 8), "alpha.png": (8, 8)}
    assert all(Image.open(p).mode == "RGB" for p in (tmp_path / "out").iterdir())


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """A folder this process cannot write into: chmod for a user, a read-only tmpfs for root."""
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "keep.png").write_bytes(b"the user's own file")
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    snapshot = tmp_path / "snapshot"
    shutil.copytree(folder, snapshot)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("root, and no tmpfs to mount: cannot make a folder root cannot write into")
    shutil.copy(snapshot / "keep.png", folder / "keep.png")
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize(
    "case", ["unknown device", "output is a file", "read-only output", "unreadable image"]
)
def test_translate_failures_are_one_line_and_write_nothing(tmp_path: Path, capsys, case, request):
    inputs = _images(tmp_path / "in", count=3)
    checkpoint = make_checkpoint(tmp_path / "checkpoint.pt")
    out, device, expected = tmp_path / "out", "cpu", ""
    out.mkdir()
    (out / "keep.png").write_bytes(b"the user's own file")
    if case == "unknown device":
        device, expected = "npu", "--device 'npu' is not a device: use auto, cpu, cuda or cuda:N"
    elif case == "output is a file":
        out = tmp_path / "out.png"
        out.write_bytes(b"the user's own file")
        expected = f"output folder {out} is a file"
    elif case == "read-only output":
        out = request.getfixturevalue("read_only_folder")
        expected = f"cannot write into {out} ("
    else:
        (inputs / "1.jpg").write_bytes(b"\xff\xd8 cut short")
        expected = f"cannot read image {inputs / '1.jpg'}"
    before = sorted(out.iterdir()) if out.is_dir() else out.read_bytes()
    argv = [str(checkpoint), str(inputs), str(out), "--direction", "photo2label", "--device", device]
    assert main(["translate", *argv]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and expected in errors[0], err
    assert "Traceback" not in err
    assert (sorted(out.iterdir()) if out.is_dir() else out.read_bytes()) == before


def test_translate_on_a_full_disk_is_one_line_and_leaves_the_folder_as_it_was(tmp_path: Path):
    inputs = _images(tmp_path / "in", count=3)
    checkpoint = make_checkpoint(tmp_path / "checkpoint.pt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "0.png").write_bytes(b"an earlier translation")
    argv = [
        "translate",
        str(checkpoint),
        str(inputs),
        str(out),
        "--direction",
        "photo2label",
        "--device",
        "cpu",
    ]
    child = run_file_size_limited(400, "pipeline.orchestration.cli", argv)  # each PNG is over 1 kB
    assert child.returncode == 1 and "Traceback" not in child.stderr, child.stderr
    assert child.stderr.strip().splitlines()[-1].startswith("error: file too large")
    assert [(p.name, p.read_bytes()) for p in out.iterdir()] == [("0.png", b"an earlier translation")]
