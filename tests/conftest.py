"""Shared fixtures: tiny pix2pix-layout Cityscapes stand-ins made on the fly (never real images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.data.download import SOURCE_ENV
from tests.factories import make_archive, make_pix2pix_tree


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under `pytest -n N` (make test) each end-to-end module runs whole on one worker, so its module
    fixtures (a whole ablation, a concurrent repro) run once; every other test is scheduled on its own.

    xdist's `--dist loadgroup` would do this from an `xdist_group` mark, but pytest-xdist 3.8 marks the
    group by rewriting `item._nodeid`, which pytest 9 no longer reads: the groups are silently lost.
    """
    from xdist.scheduler import LoadScopeScheduling

    class EndToEndModulesWhole(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path.startswith("tests/e2e/") else nodeid

    return EndToEndModulesWhole(config, log)


@pytest.fixture(autouse=True)
def _no_data_source_override(monkeypatch):
    """`.ci/run` exports CYCLEGAN_DATA_SOURCE (the real archive), which outranks `data.source`; every
    test names its own source (the e2e tests put theirs in the environments they build)."""
    monkeypatch.delenv(SOURCE_ENV, raising=False)


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
