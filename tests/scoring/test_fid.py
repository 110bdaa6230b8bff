"""FID: the distance itself, the offline path, and loading weights from a local file."""

from __future__ import annotations

import hashlib
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


@pytest.fixture
def published(monkeypatch, random_inception_weights) -> Path:
    """The random weights, as if they were the published ones (their hash prefix made the expected one)."""
    digest = hashlib.sha256(random_inception_weights.read_bytes()).hexdigest()
    monkeypatch.setattr(fid, "WEIGHTS_HASH_PREFIX", digest[:8])
    return random_inception_weights


class RunsCode:
    """Unpickling this creates `marker`: what a hostile pickle at the weights' path would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


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


def test_local_weights_file_is_loaded_and_gives_2048_features(tmp_path, offline_hub, published):
    model = load_inception(published)
    saved = torch.load(published, weights_only=True)
    assert torch.equal(model.blocks[0][0].conv.weight, saved["Conv2d_1a_3x3.conv.weight"])
    acts = activations(write_images(tmp_path / "a", 2, seed=0), model, batch_size=2)
    assert acts.shape == (2, 2048) and np.isfinite(acts).all()


def test_fid_between_feeds_both_feature_sets_to_the_distance(tmp_path, offline_hub, published, monkeypatch):
    # The distance of 2048-d features is ~10 s of sqrtm on CPU; its maths is tested above.
    seen = []
    monkeypatch.setattr(fid, "frechet_distance", lambda a, b: seen.append((a.shape, b.shape)) or 1.5)
    result = fid_between(
        write_images(tmp_path / "a", 3, seed=0),
        write_images(tmp_path / "b", 2, seed=1),
        FidConfig(weights=str(published), batch_size=2, device="cpu"),
    )
    assert result == fid.FidResult(1.5, None)
    assert seen == [((3, 2048), (2, 2048))]


def test_a_foreign_state_dict_is_rejected(tmp_path, monkeypatch):
    path = tmp_path / "foreign.pth"
    torch.save({"weight": torch.zeros(1)}, path)
    with pytest.raises(
        PipelineError, match=r"foreign\.pth is not pytorch-fid's .*the published one 6726825d"
    ):
        load_inception(path)
    monkeypatch.setattr(fid, "WEIGHTS_HASH_PREFIX", hashlib.sha256(path.read_bytes()).hexdigest()[:8])
    with pytest.raises(PipelineError, match="not the FID Inception state dict"):
        load_inception(path)


# --- nothing let in: the weights are checked against their hash and never unpickled with code -----------


def test_the_published_hash_is_the_one_in_pytorch_fids_url():
    assert fid.WEIGHTS_HASH_PREFIX == "6726825d" and fid.WEIGHTS_URL.endswith("-6726825d.pth")


def test_a_pickle_at_the_hub_cache_path_never_runs(tmp_path, offline_hub, monkeypatch):
    marker = tmp_path / "pwned"
    cached = fid.cached_weights_path()
    assert cached.parent == offline_hub / "checkpoints"  # the path the README names
    cached.parent.mkdir(parents=True)
    torch.save({"Conv2d_1a_3x3.conv.weight": RunsCode(marker)}, cached)
    with pytest.raises(PipelineError, match=r"is not pytorch-fid's .*refused unread"):
        load_inception()
    assert not marker.exists()
    # Even a file that matched the hash would be unpickled as plain tensors only.
    monkeypatch.setattr(fid, "WEIGHTS_HASH_PREFIX", hashlib.sha256(cached.read_bytes()).hexdigest()[:8])
    with pytest.raises(PipelineError, match="cannot be loaded as plain tensors"):
        load_inception()
    assert not marker.exists()


def test_a_pickle_named_in_the_config_never_runs(tmp_path, monkeypatch):
    marker, path = tmp_path / "pwned", tmp_path / "weights.pth"
    torch.save(RunsCode(marker), path)
    monkeypatch.setattr(fid, "WEIGHTS_HASH_PREFIX", hashlib.sha256(path.read_bytes()).hexdigest()[:8])
    with pytest.raises(PipelineError, match=r"evaluate\.fid\.weights=.* cannot be loaded as plain tensors"):
        load_inception(path)
    assert not marker.exists()


def test_the_download_is_hash_checked_then_loaded_safely(tmp_path, offline_hub, published, monkeypatch):
    requests = []

    def download(url, dst, hash_prefix=None, progress=True):
        requests.append((url, hash_prefix))
        Path(dst).write_bytes(published.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    model = load_inception()
    assert requests == [(fid.WEIGHTS_URL, fid.WEIGHTS_HASH_PREFIX)]
    assert fid.cached_weights_path().is_file() and model.blocks[0][0].conv.weight.shape[0] == 32
