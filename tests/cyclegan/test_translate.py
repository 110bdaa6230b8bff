from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.cyclegan.models import ResnetGenerator
from pipeline.cyclegan.translate import TranslateConfig, run_generator, translate_folder, translate_val
from stages import translate as translate_stage
from tests.factories import TINY_GENERATOR as TINY
from tests.factories import make_checkpoint, make_val_split


def _generators(path: Path) -> tuple[ResnetGenerator, ResnetGenerator]:
    state = torch.load(path, weights_only=True)
    nets = []
    for name in ("G", "F"):
        net = ResnetGenerator(TINY)
        net.load_state_dict(state["nets"][name])
        nets.append(net.eval())
    return nets[0], nets[1]


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image)


@pytest.fixture
def split_dir(tmp_path: Path) -> Path:
    return make_val_split(tmp_path / "split")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "models" / "cyclegan" / "checkpoint.pt")


def test_translate_val_writes_g_of_photos_and_f_of_labels_as_png(split_dir, checkpoint, tmp_path):
    out = tmp_path / "translations" / "cyclegan"
    counts = translate_val(checkpoint, split_dir, out, TranslateConfig(batch_size=2, device="cpu"))
    assert counts == {"photo2label": 3, "label2photo": 3}
    G, F = _generators(checkpoint)
    for direction, net, source in (("photo2label", G, "photo"), ("label2photo", F, "label")):
        assert sorted(p.name for p in (out / direction).iterdir()) == ["1.png", "2.png", "3.png"]
        real = np.asarray(Image.open(split_dir / "val" / source / "2.png").convert("RGB"))
        expected = run_generator(net, [real], torch.device("cpu"))[0]
        assert np.array_equal(_rgb(out / direction / "2.png"), expected)
    # G and F really are different networks: the directions are not swapped
    assert not np.array_equal(_rgb(out / "photo2label" / "1.png"), _rgb(out / "label2photo" / "1.png"))


def test_translate_val_replaces_old_output_and_leaves_no_temp_folders(split_dir, checkpoint, tmp_path):
    out = tmp_path / "translations" / "cyclegan"
    (out / "photo2label").mkdir(parents=True)
    (out / "photo2label" / "stale.png").write_bytes(b"old")
    translate_val(checkpoint, split_dir, out, TranslateConfig(device="cpu"))
    assert not (out / "photo2label" / "stale.png").exists()
    assert [p.name for p in out.parent.iterdir()] == ["cyclegan"]


def test_staging_folders_of_a_killed_run_are_removed(split_dir, checkpoint, tmp_path):
    out = tmp_path / "translations" / "cyclegan"
    (out.parent / ".cyclegan-staging-k1lled" / "photo2label").mkdir(parents=True)
    translate_val(checkpoint, split_dir, out, TranslateConfig(device="cpu"))
    assert [p.name for p in out.parent.iterdir()] == ["cyclegan"]

    inputs, mine = tmp_path / "in", tmp_path / "mine"
    inputs.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(inputs / "1.png")
    (mine / ".cyclegan-translate-staging-k1lled").mkdir(parents=True)  # `cyclegan translate`'s
    (mine / "notes.txt").write_text("the user's own file")
    translate_folder(checkpoint, inputs, mine, "photo2label", device="cpu")
    assert sorted(p.name for p in mine.iterdir()) == ["1.png", "notes.txt"]


def test_batching_does_not_change_results(split_dir, checkpoint, tmp_path):
    one, many = tmp_path / "one", tmp_path / "many"
    translate_val(checkpoint, split_dir, one, TranslateConfig(batch_size=1, device="cpu"))
    translate_val(checkpoint, split_dir, many, TranslateConfig(batch_size=3, device="cpu"))
    for path in (one / "label2photo").iterdir():
        difference = _rgb(path).astype(int) - _rgb(many / "label2photo" / path.name).astype(int)
        assert np.abs(difference).max() <= 1  # float reduction order may flip a rounding


def test_translate_folder_any_format_and_size(checkpoint, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (22, 30, 3), dtype=np.uint8)).save(inputs / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(inputs / "b.png")
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(inputs / "c.bmp")  # greyscale
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    written = translate_folder(checkpoint, inputs, out, "label2photo", device="cpu", batch_size=2)
    assert written == 3
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    assert _rgb(out / "a.png").shape == (22, 30, 3)  # padded to a multiple of 4 and cropped back
    resized = translate_folder(checkpoint, inputs, tmp_path / "sized", "photo2label", device="cpu", size=12)
    assert resized == 3 and _rgb(tmp_path / "sized" / "a.png").shape == (12, 12, 3)


def test_translate_folder_names_an_unreadable_image(checkpoint, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(inputs / "1.png")
    (inputs / "2.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(PipelineError, match=r"cannot read image .*2\.jpg"):
        translate_folder(checkpoint, inputs, tmp_path / "out", "photo2label", device="cpu")
    assert list((tmp_path / "out").iterdir()) == []  # nothing half written


@pytest.mark.parametrize("content", [None, b"not a checkpoint", "folder"])
def test_translate_folder_rejects_missing_or_foreign_checkpoints(tmp_path, content):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(inputs / "1.png")
    path = tmp_path / "checkpoint.pt"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(PipelineError, match=r"checkpoint"):
        translate_folder(path, inputs, tmp_path / "out", "photo2label", device="cpu")


def test_translate_folder_rejects_bad_arguments(checkpoint, tmp_path):
    with pytest.raises(PipelineError, match="holds no images"):
        translate_folder(checkpoint, tmp_path, tmp_path / "out", "photo2label")
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "in" / "1.png")
    with pytest.raises(PipelineError, match="direction 'sideways' is not one of this checkpoint's"):
        translate_folder(checkpoint, tmp_path / "in", tmp_path / "out", "sideways")
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_stage_runs_from_params(split_dir, checkpoint, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("translate:\n  batch_size: 2\n  device: cpu\n")
    out = tmp_path / "translations" / "cyclegan"
    argv = [
        "--params",
        str(params),
        "--checkpoint",
        str(checkpoint),
        "--split",
        str(split_dir),
        "--out",
        str(out),
    ]
    assert translate_stage.main(argv) == 0
    assert "photo2label=3" in capsys.readouterr().out
    params.write_text("translate:\n  batch_size: 0\n")
    assert translate_stage.main(argv) == 1
    assert "batch_size" in capsys.readouterr().err
