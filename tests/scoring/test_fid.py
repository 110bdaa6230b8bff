"""FID: the distance itself, the offline path, and loading weights from a local file."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from pytorch_fid import inception as fid_inception

from pipeline.core.errors import PipelineError
from pipeline.scoring import fid
from pipeline.scoring.fid import FidConfig, activations, fid_between, frechet_distance, load_inception


def write_images(folder: Path, count: int, seed: int, size: int = 16) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"{index}.png"
        Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and a download that fails the way it does without internet."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(fid, "_MODELS", {})
    return tmp_path / "hub"


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory) -> Path:
    """A state dict with the FID Inception's exact structure but random values (test-only)."""
    # fid_inception_v3() builds the patched network and then loads the real weights; skip only the
    # loading, so the saved keys and shapes are exactly the ones production code loads.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fid_inception, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(torchvision.models.Inception3, "load_state_dict", lambda self, *a, **k: None)
        network = fid_inception.fid_inception_v3()
    path = tmp_path_factory.mktemp("weights") / "random_fid_inception.pth"
    torch.save(network.state_dict(), path)
    return path


def test_identical_feature_sets_give_zero():
    acts = np.random.default_rng(0).normal(size=(200, 8))
    assert frechet_distance(acts, acts) == pytest.approx(0.0, abs=1e-6)


def test_gaussian_feature_sets_match_the_closed_form():
    # N(0, I) vs N(mu, s^2 I) in d dims: ||mu||^2 + tr(I + s^2 I - 2 s I) = ||mu||^2 + d (1 - s)^2.
    rng = np.random.default_rng(1)
    dims, samples, scale = 4, 40_000, 2.0
    mu = np.array([1.0, -2.0, 0.5, 0.0])
    acts_a = rng.normal(size=(samples, dims))
    acts_b = mu + scale * rng.normal(size=(samples, dims))
    expected = mu @ mu + dims * (1 - scale) ** 2  # 5.25 + 4 = 9.25
    assert frechet_distance(acts_a, acts_b) == pytest.approx(expected, rel=0.02)


def test_offline_without_weights_gives_null_and_reason(tmp_path, offline_hub):
    images = write_images(tmp_path / "a", 2, seed=0)
    with pytest.warns(UserWarning, match="FID not computed"):
        result = fid_between(images, images, FidConfig(device="cpu"))
    assert result.value is None
    assert "pt_inception-2015-12-05-6726825d.pth" in result.reason
    assert str(offline_hub) in result.reason and "evaluate.fid.weights" in result.reason


def test_offline_with_required_is_an_error(tmp_path, offline_hub):
    images = write_images(tmp_path / "a", 2, seed=0)
    with pytest.raises(PipelineError, match=r"evaluate\.fid\.required.*evaluate\.fid\.weights"):
        fid_between(images, images, FidConfig(required=True, device="cpu"))


def test_missing_local_weights_file_is_an_error(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        load_inception(tmp_path / "nope.pth")


def test_local_weights_file_is_loaded_and_gives_2048_features(
    tmp_path, offline_hub, random_inception_weights
):
    model = load_inception(random_inception_weights)
    saved = torch.load(random_inception_weights, weights_only=True)
    assert torch.equal(model.blocks[0][0].conv.weight, saved["Conv2d_1a_3x3.conv.weight"])
    acts = activations(write_images(tmp_path / "a", 2, seed=0), model, batch_size=2)
    assert acts.shape == (2, 2048) and np.isfinite(acts).all()


def test_fid_between_feeds_both_feature_sets_to_the_distance(
    tmp_path, offline_hub, random_inception_weights, monkeypatch
):
    # The distance of 2048-d features is ~10 s of sqrtm on CPU; its maths is tested above.
    seen = []
    monkeypatch.setattr(fid, "frechet_distance", lambda a, b: seen.append((a.shape, b.shape)) or 1.5)
    result = fid_between(
        write_images(tmp_path / "a", 3, seed=0),
        write_images(tmp_path / "b", 2, seed=1),
        FidConfig(weights=str(random_inception_weights), batch_size=2, device="cpu"),
    )
    assert result == fid.FidResult(1.5, None)
    assert seen == [((3, 2048), (2, 2048))]


def test_a_foreign_state_dict_is_rejected(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"weight": torch.zeros(1)}, path)
    with pytest.raises(PipelineError, match="not the FID Inception state dict"):
        load_inception(path)
