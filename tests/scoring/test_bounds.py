import json

import numpy as np
import pytest

from pipeline.data.labels import colorize, decode_label_map
from pipeline.scoring.bounds import mean_photo, modal_label_map, run_bounds
from pipeline.scoring.evaluate import EvaluateConfig
from stages import bounds as bounds_stage
from tests.factories import make_full_split, tiny_judge_checkpoint

CFG = EvaluateConfig(device="cpu", batch_size=2)


@pytest.fixture(autouse=True)
def offline_fid(monkeypatch):
    """No Inception weights here: the FID and KID floors are null, at once."""
    from pipeline.scoring import bounds
    from pipeline.scoring.fid import FidKidResult

    monkeypatch.setattr(bounds, "fid_kid_between", lambda *a: FidKidResult(None, None, None, None, "offline"))


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    return make_full_split(tmp_path_factory.mktemp("bounds") / "split")


def test_the_floor_images_are_content_free_averages(split_dir):
    from pipeline.data.domains import load_domain
    from pipeline.data.manifest import LABEL_SUBSET, PHOTO_SUBSET

    photos, _ = load_domain(split_dir, PHOTO_SUBSET, 16)
    expected = photos.double().mean(dim=0).round().permute(1, 2, 0).numpy()
    assert np.array_equal(mean_photo(split_dir, 16), expected.astype(np.uint8))

    labels, _ = load_domain(split_dir, LABEL_SUBSET, 16)
    ids = np.stack([decode_label_map(label) for label in labels.permute(0, 2, 3, 1).numpy()])
    modal = decode_label_map(modal_label_map(split_dir, 16))
    for y, x in [(0, 0), (7, 9), (15, 15)]:
        counts = np.bincount(ids[:, y, x][ids[:, y, x] != 255], minlength=19)
        assert modal[y, x] == counts.argmax()
    assert np.array_equal(colorize(modal), modal_label_map(split_dir, 16))


def test_bounds_score_the_floor_and_the_real_images_with_the_same_code(split_dir, tmp_path):
    judge = tiny_judge_checkpoint(tmp_path / "judge.pt")
    result = run_bounds(split_dir, judge, tmp_path / "bounds.json", tmp_path / "bounds.npz", CFG)
    # Real label maps decode to their own classes: the photo -> labels ceiling is perfect.
    assert result["ceiling/fcn/photo2label/pixel_acc"] == pytest.approx(1.0)
    assert result["floor/fcn/photo2label/pixel_acc"] < 0.5  # one layout for every image
    with np.load(tmp_path / "bounds.npz") as stored:
        assert sorted(stored.files) == [
            "ceiling/label2photo",
            "ceiling/photo2label",
            "floor/label2photo",
            "floor/photo2label",
            "floor/psnr/label2photo",
            "floor/psnr/photo2label",
            "floor/ssim/label2photo",
            "floor/ssim/photo2label",
            "image_ids",
        ]
        assert stored["floor/ssim/label2photo"].shape == (3,)
        assert stored["floor/label2photo"].shape == (3, 19, 20) and list(stored["image_ids"]) == [
            "1",
            "2",
            "3",
        ]
    written = json.loads((tmp_path / "bounds.json").read_text())
    assert written["n_images"] == 3 and written["floor/fid/label2photo"] is None
    assert written["floor_fid_unavailable"] == "offline" and -1 <= written["floor/ssim/label2photo"] <= 1


def test_stage_prints_both_bounds(split_dir, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("evaluate: {device: cpu, batch_size: 2}\n")
    judge = tiny_judge_checkpoint(tmp_path / "judge.pt")
    argv = ["--params", str(params), "--split", str(split_dir), "--judge", str(judge)]
    argv += ["--out", str(tmp_path / "b.json"), "--confusion", str(tmp_path / "b.npz")]
    assert bounds_stage.main(argv) == 0
    out = capsys.readouterr().out
    assert "floor/fcn/label2photo/pixel_acc" in out and "ceiling/fcn/photo2label/class_iou" in out
