"""FID and KID: the scores themselves, the offline path, loading weights from a local file, and the
features of a test-only network (pytorch-fid's Inception architecture with random weights) feeding
both scores. Numbers from that network are not the FID or KID of anything."""

from __future__ import annotations

import hashlib
import os
import urllib.error
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from pytorch_fid import inception as fid_inception

from pipeline.core.errors import PipelineError
from pipeline.scoring import fid
from pipeline.scoring.fid import (
    FidConfig,
    FidKidResult,
    activations,
    fid_between,
    fid_kid_between,
    frechet_distance,
    image_features,
    kernel_inception_distance,
    load_inception,
    scores_from_features,
)


def write_images(folder: Path, count: int, seed: int, size: int = 16) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"{index}.png"
        Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(autouse=True)
def _empty_feature_cache(monkeypatch):
    """Each test starts without cached features (they are keyed on file paths, sizes and times)."""
    monkeypatch.setattr(fid, "_FEATURES", OrderedDict())


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
    """A state dict with the FID Inception's exact structure but random values (test-only: its
    features are no Inception features, and no score from them is a FID or KID of anything)."""
    # fid_inception_v3() builds the patched network and then loads the real weights; skip only the
    # loading, so the saved keys and shapes are exactly the ones production code loads.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fid_inception, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(torchvision.models.Inception3, "load_state_dict", lambda self, *a, **k: None)
        network = fid_inception.fid_inception_v3()
    # Untrained layers with identity BatchNorm statistics shrink the signal to ~1e-8 by pool3, where
    # every kernel value is 1 to machine precision. BatchNorm statistics measured on one batch of noise
    # keep each layer's input near unit variance, so the features differ between images.
    for layer in network.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None  # a plain average: after one batch, that batch's statistics
    network.train()
    with torch.no_grad():
        network(torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1)
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


# --- KID ------------------------------------------------------------------------------------------------


def kid_by_double_loop(a: np.ndarray, b: np.ndarray) -> float:
    """The unbiased MMD² estimate of Bińkowski et al. (2018), eq. for equal-size samples, written out
    pair by pair with k(x, y) = (x·y / d + 1)³: independent of the vectorised code under test."""
    m, d = len(a), a.shape[1]

    def k(x, y):
        return (float(np.dot(x, y)) / d + 1.0) ** 3

    within_a = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j)
    within_b = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j)
    across = sum(k(a[i], b[j]) for i in range(m) for j in range(m))
    return within_a / (m * (m - 1)) + within_b / (m * (m - 1)) - 2.0 * across / (m * m)


@pytest.fixture(params=["full kernel", "kernel per subset"])
def kernel_path(request, monkeypatch):
    """Both ways the vectorised code gets its kernel blocks must give the same numbers."""
    if request.param == "kernel per subset":
        monkeypatch.setattr(fid, "FULL_KERNEL_ENTRIES", 0)
    return request.param


def test_kid_matches_a_plain_double_loop_when_every_sample_is_used(kernel_path):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(30, 8)), rng.normal(0.3, 1.2, size=(30, 8))
    mean, std = kernel_inception_distance(a, b, subsets=1, subset_size=1000)
    assert abs(mean - kid_by_double_loop(a, b)) < 1e-10 and std == 0.0


def test_kid_matches_a_plain_double_loop_over_the_documented_draws(kernel_path):
    # 40 and 30 samples: each subset takes m = min(subset_size, 40, 30) rows of each set, drawn without
    # replacement from default_rng(seed), a's rows first; the double loop repeats those draws.
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(40, 8)), rng.normal(0.2, 1.0, size=(30, 8))
    for subsets, subset_size, seed in [(1, 100, 0), (3, 10, 7)]:
        draws = np.random.default_rng(seed)
        expected = []
        for _ in range(subsets):
            m = min(subset_size, 40, 30)
            rows_a, rows_b = draws.choice(40, m, replace=False), draws.choice(30, m, replace=False)
            expected.append(kid_by_double_loop(a[rows_a], b[rows_b]))
        mean, std = kernel_inception_distance(a, b, subsets=subsets, subset_size=subset_size, seed=seed)
        assert abs(mean - np.mean(expected)) < 1e-10 and abs(std - np.std(expected)) < 1e-10


def test_kid_is_near_zero_for_one_distribution_and_clearly_positive_for_a_shifted_one():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    shifted = rng.normal(size=(400, 16)) + 0.5
    same_mean, _ = kernel_inception_distance(a, b, subsets=50, subset_size=200)
    shifted_mean, shifted_std = kernel_inception_distance(a, shifted, subsets=50, subset_size=200)
    assert abs(same_mean) < 0.03  # measured within ±0.008 over five seeds
    assert shifted_mean > 0.5 and shifted_mean > 10 * shifted_std  # measured 0.9 to 1.1


def test_kid_is_seeded_and_checks_its_input():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(60, 4))
    assert kernel_inception_distance(a, b, 5, 20, seed=1) == kernel_inception_distance(a, b, 5, 20, seed=1)
    assert kernel_inception_distance(a, b, 5, 20, seed=1) != kernel_inception_distance(a, b, 5, 20, seed=2)
    with pytest.raises(ValueError, match="at least two"):
        kernel_inception_distance(a[:1], b)
    with pytest.raises(ValueError, match="one width"):
        kernel_inception_distance(a, b[:, :3])


def test_scores_from_features_carry_fid_kid_and_the_subset_size_used():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(40, 4)), rng.normal(size=(30, 4))
    result = scores_from_features(a, b, kid_subsets=4, kid_subset_size=1000, seed=0)
    assert result.fid == frechet_distance(a, b)
    assert (result.kid_mean, result.kid_std) == kernel_inception_distance(a, b, 4, 1000, 0)
    assert result.kid_subset_size == 30 and result.reason is None


# --- FID and KID from images, through the network -------------------------------------------------------


def test_offline_fid_and_kid_are_null_with_the_reason(tmp_path, offline_hub):
    images = write_images(tmp_path / "a", 2, seed=0)
    with pytest.warns(UserWarning, match="FID not computed"):
        result = fid_kid_between(images, images, FidConfig(device="cpu"))
    assert (result.fid, result.kid_mean, result.kid_std) == (None, None, None)
    assert "pt_inception-2015-12-05-6726825d.pth" in result.reason
    with pytest.raises(PipelineError, match=r"evaluate\.fid\.required"):
        fid_kid_between(images, images, FidConfig(required=True, device="cpu"))


def test_pool3_features_of_a_test_network_feed_kid(tmp_path, offline_hub, published, monkeypatch):
    # 2048-d features of random weights: KID is computed for real; the Fréchet distance of 2048-d
    # features costs a minute of sqrtm on a shared CPU, so it only records what it is given (its maths
    # is tested above, and numerically through the network below at 64-d).
    seen = []
    monkeypatch.setattr(fid, "frechet_distance", lambda a, b: seen.append((a.shape, b.shape)) or 1.5)
    cfg = FidConfig(weights=str(published), batch_size=2, device="cpu", kid_subsets=3, kid_subset_size=2)
    images_a, images_b = write_images(tmp_path / "a", 3, seed=0), write_images(tmp_path / "b", 2, seed=1)
    result = fid_kid_between(images_a, images_b, cfg)
    feats_a, feats_b = image_features(images_a, cfg), image_features(images_b, cfg)
    assert feats_a.shape == (3, 2048) and np.isfinite(feats_a).all() and feats_a.std(axis=0).mean() > 1e-3
    assert seen == [((3, 2048), (2, 2048))]
    assert (result.kid_mean, result.kid_std) == kernel_inception_distance(feats_a, feats_b, 3, 2, 0)
    assert np.isfinite(result.kid_mean) and result.kid_std > 0 and result.fid == 1.5


def test_features_of_a_test_network_feed_fid_and_kid_numerically(
    tmp_path, offline_hub, published, monkeypatch
):
    # The same test-only weights file, read through pytorch-fid's first block (64-d features): both
    # scores computed for real, in milliseconds.
    monkeypatch.setattr(fid, "DIMS", 64)
    cfg = FidConfig(weights=str(published), batch_size=4, device="cpu", kid_subsets=5, kid_subset_size=4)
    images_a, images_b = write_images(tmp_path / "a", 6, seed=0), write_images(tmp_path / "b", 5, seed=1)
    result = fid_kid_between(images_a, images_b, cfg)
    feats_a, feats_b = image_features(images_a, cfg), image_features(images_b, cfg)
    assert feats_a.shape == (6, 64) and feats_b.shape == (5, 64)
    assert result == FidKidResult(
        frechet_distance(feats_a, feats_b), *kernel_inception_distance(feats_a, feats_b, 5, 4, 0), 4
    )
    assert result.fid > 0 and np.isfinite(result.kid_mean)
    assert fid_between(images_a, images_b, cfg) == fid.FidResult(result.fid)


def test_features_are_computed_once_per_file_list(tmp_path, offline_hub, published, monkeypatch):
    monkeypatch.setattr(fid, "DIMS", 64)
    passes = []
    real_activations = fid.activations
    monkeypatch.setattr(
        fid,
        "activations",
        lambda paths, *a, **k: passes.append(len(paths)) or real_activations(paths, *a, **k),
    )
    cfg = FidConfig(weights=str(published), batch_size=4, device="cpu", kid_subsets=2, kid_subset_size=3)
    real = write_images(tmp_path / "real", 4, seed=0)
    for seed in (1, 2, 3):  # three translations against one set of real images
        fid_kid_between(write_images(tmp_path / f"fake{seed}", 4, seed=seed), real, cfg)
    assert passes == [4, 4, 4, 4]  # three fakes, the real ones once
    first = image_features(real, cfg)
    assert passes == [4] * 4 and not first.flags.writeable

    write_images(tmp_path / "real", 1, seed=9)  # real/0.png rewritten
    os.utime(real[1], ns=(0, 0))  # and real/1.png's modification time changed
    again = image_features(real, cfg)
    assert passes == [4] * 5 and not np.array_equal(first, again)
    image_features(list(reversed(real)), cfg)  # rows follow the paths: another order, another entry
    assert passes == [4] * 6
