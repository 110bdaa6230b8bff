"""Shared fixtures: tiny pix2pix-layout Cityscapes stand-ins made on the fly (never real images)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.labels import NUM_CLASSES, colorize


def make_pair_image(rng: np.random.Generator, width: int = 512, height: int = 256) -> Image.Image:
    """One archive-style image: a noisy 'photo' on the left, a blocky colour label map on the right."""
    half = width // 2
    blocks = rng.integers(0, NUM_CLASSES, size=(height // 32, half // 32)).astype(np.uint8)
    train_ids = np.kron(blocks, np.ones((32, 32), dtype=np.uint8))
    label = colorize(train_ids)
    photo = np.clip(label.astype(np.int16) // 2 + rng.integers(0, 96, size=label.shape), 0, 255)
    return Image.fromarray(np.concatenate([photo.astype(np.uint8), label], axis=1))


def make_pix2pix_tree(
    root: Path, n_train: int = 12, n_val: int = 4, seed: int = 0, width: int = 512, height: int = 256
) -> Path:
    """Write ``root/cityscapes/{train,val}/N.jpg`` like the pix2pix archive; return ``root/cityscapes``."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        folder = root / "cityscapes" / split
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(1, count + 1):
            make_pair_image(rng, width, height).save(folder / f"{index}.jpg", quality=95)
    return root / "cityscapes"


def make_archive(tree_parent: Path, archive: Path) -> Path:
    """Pack ``tree_parent/cityscapes`` into a tar.gz at `archive` (sorted, like the shared copy)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree_parent / "cityscapes", arcname="cityscapes")
    return archive


@pytest.fixture
def pix2pix_tree(tmp_path: Path) -> Path:
    """An extracted tiny archive: 12 train and 4 val images, 512x256."""
    return make_pix2pix_tree(tmp_path / "src")


@pytest.fixture
def pix2pix_archive(tmp_path: Path) -> Path:
    """The same tiny dataset packed as ``cityscapes.tar.gz``."""
    make_pix2pix_tree(tmp_path / "src")
    return make_archive(tmp_path / "src", tmp_path / "cityscapes.tar.gz")


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """A throw-away MLflow SQLite store, one per test module."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def private_tracking_store(monkeypatch, store_uri) -> str:
    """Point every MLflow call of the test at `store_uri`, outside any ablation parent run."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.delenv("CYCLEGAN_PARENT_RUN_ID", raising=False)
    return store_uri
