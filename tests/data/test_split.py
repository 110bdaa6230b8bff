import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.data.labels import colorize, decode_label_map
from pipeline.data.manifest import read_manifest
from pipeline.data.split import SplitConfig, domain_halves, split
from stages.split import main as split_main
from tests.factories import make_pair_image

CFG = SplitConfig(seed=3, load_size=40, test_size=32, workers=1)


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_domains_are_disjoint_halves_and_every_output_is_listed(pix2pix_tree, tmp_path):
    out = tmp_path / "split"
    summary = split(pix2pix_tree, out, CFG)
    photos = set(read_manifest(out, "train_photo")["image_id"])
    labels = set(read_manifest(out, "train_label")["image_id"])
    assert photos.isdisjoint(labels)
    assert photos | labels == {str(i) for i in range(1, 13)}
    assert len(photos) == len(labels) == 6
    assert summary["counts"] == {
        "evaluator/mask": 12,
        "evaluator/photo": 12,
        "train_label/label": 6,
        "train_photo/photo": 6,
        "val/label": 4,
        "val/mask": 4,
        "val/photo": 4,
    }
    manifest = read_manifest(out)
    assert {"image_id", "subset", "kind", "path"} <= set(manifest.columns)
    for row in manifest.itertuples():
        with Image.open(out / row.path) as image:
            assert image.size == (row.width, row.height)
    assert set(read_manifest(out, "train_photo")["width"]) == {40}
    assert set(read_manifest(out, "val")["width"]) == {32}


def test_the_paper_protocol_keeps_every_photo_and_every_label_map(pix2pix_tree, tmp_path):
    import dataclasses

    summary = split(pix2pix_tree, tmp_path / "split", dataclasses.replace(CFG, protocol="paper"))
    manifest = read_manifest(tmp_path / "split")
    photos = set(manifest[manifest.subset == "train_photo"].image_id)
    labels = set(manifest[manifest.subset == "train_label"].image_id)
    assert photos == labels == {str(i) for i in range(1, 13)}  # all 12 train images in both domains
    assert summary["config"]["protocol"] == "paper"
    assert summary["counts"]["evaluator/photo"] == 12 and summary["counts"]["val/mask"] == 4


def test_masks_hold_train_ids_and_match_the_label_maps(pix2pix_tree, tmp_path):
    out = tmp_path / "split"
    split(pix2pix_tree, out, CFG)
    for row in read_manifest(out, "val", "mask").itertuples():
        mask = np.asarray(Image.open(out / row.path))
        assert set(np.unique(mask)) <= set(range(19)) | {255}
        label = np.asarray(Image.open(out / f"val/label/{row.image_id}.png"))
        assert (decode_label_map(label) == mask).all()


def test_label_domain_keeps_exact_table_colours(tmp_path):
    # Lossless label maps: nearest-neighbour resizing must not invent colours between classes.
    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    for folder, count in (("train", 4), ("val", 1)):
        (root / folder).mkdir(parents=True)
        for index in range(1, count + 1):
            make_pair_image(rng).save(root / folder / f"{index}.png")
    out = tmp_path / "split"
    split(root, out, CFG)
    for row in read_manifest(out, "train_label").itertuples():
        label = np.asarray(Image.open(out / row.path))
        assert (colorize(decode_label_map(label)) == label).all()


def test_same_params_give_byte_identical_outputs(pix2pix_tree, tmp_path):
    split(pix2pix_tree, tmp_path / "a", CFG)
    split(pix2pix_tree, tmp_path / "b", SplitConfig(seed=3, load_size=40, test_size=32, workers=2))
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")


def test_seed_changes_the_halves():
    ids = [str(i) for i in range(1, 101)]
    assert domain_halves(ids, 0) != domain_halves(ids, 1)
    assert domain_halves(ids, 0) == domain_halves(ids, 0)


def _corrupt(tree: Path) -> Path:
    bad = tree / "train" / "5.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    return bad


def test_corrupt_image_is_named_and_nothing_is_written(pix2pix_tree, tmp_path):
    _corrupt(pix2pix_tree)
    out = tmp_path / "split"
    out.mkdir()
    (out / "keep.txt").write_text("previous split")
    with pytest.raises(PipelineError, match=r"5\.jpg.*on_bad_image: skip"):
        split(pix2pix_tree, out, CFG)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".split")] == []
    assert (out / "keep.txt").read_text() == "previous split"


def test_a_paired_image_that_is_not_a_pair_is_named(pix2pix_tree, tmp_path):
    Image.new("RGB", (301, 150)).save(pix2pix_tree / "val" / "2.jpg")
    with pytest.raises(PipelineError, match=r"2\.jpg: size 301x150, not an A\|B pair"):
        split(pix2pix_tree, tmp_path / "split", CFG)


def test_skip_mode_counts_bad_images(pix2pix_tree, tmp_path):
    _corrupt(pix2pix_tree)
    cfg = SplitConfig(seed=3, load_size=40, test_size=32, workers=1, on_bad_image="skip")
    summary = split(pix2pix_tree, tmp_path / "split", cfg)
    assert len(summary["skipped"]) == 1 and "5.jpg" in summary["skipped"][0]
    assert "5" not in set(read_manifest(tmp_path / "split")["image_id"])


def test_staging_folders_of_a_killed_run_are_removed(pix2pix_tree, tmp_path):
    out = tmp_path / "data" / "split"
    (tmp_path / "data" / ".split-staging-k1lled" / "val").mkdir(parents=True)
    split(pix2pix_tree, out, CFG)
    assert sorted(p.name for p in out.parent.iterdir()) == ["split"]


def test_stage_reports_missing_raw_folder_in_one_line(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("split: {seed: 0}\n")
    assert (
        split_main(["--params", str(params), "--raw", str(tmp_path / "nope"), "--out", str(tmp_path / "s")])
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "dvc repro download" in err and "\n" not in err


def test_unknown_param_key_is_refused(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("split: {seed: 0, lod_size: 100}\n")
    assert split_main(["--params", str(params), "--raw", str(tmp_path), "--out", str(tmp_path / "s")]) == 1
    assert "split.lod_size" in capsys.readouterr().err
