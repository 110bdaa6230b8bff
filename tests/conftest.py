"""Shared fixtures: tiny pix2pix-layout Cityscapes stand-ins made on the fly (never real images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.data.download import SOURCE_ENV
from tests.factories import make_archive, make_pix2pix_tree

# The end-to-end units, heaviest first (by their share of make test's time): under `pytest -n 2` each
# runs whole on one worker, and starting the longest ones first leaves the short tests to fill in at the
# end instead of one worker finishing a long module alone. The flow tests and the MLflow UI tests are
# one unit: they share the session's whole ablation through the Prefect deployment (`ablation_run`),
# which a unit of its own on each worker would run twice.
E2E_UNITS = {
    "tests/e2e/test_mlflow_ui.py": "tests/e2e/ablation",
    "tests/e2e/test_prefect_flow.py": "tests/e2e/ablation",
    "tests/e2e/test_concurrent_repro.py": "tests/e2e/test_concurrent_repro.py",
    "tests/e2e/test_dvc_pipeline.py": "tests/e2e/test_dvc_pipeline.py",
    "tests/e2e/test_fan_out.py": "tests/e2e/test_fan_out.py",
    "tests/e2e/test_datasets.py": "tests/e2e/test_datasets.py",
    "tests/e2e/test_flow_faults.py": "tests/e2e/test_flow_faults.py",
    "tests/e2e/test_tracking_outage.py": "tests/e2e/test_tracking_outage.py",
}


def e2e_unit(nodeid: str) -> str | None:
    """The end-to-end unit a test belongs to (None: any other test, scheduled on its own)."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("tests/e2e/"):
        return E2E_UNITS.get(path, path)  # a new module is a unit of its own until listed
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The end-to-end units first, heaviest first, each module's tests in their order; the rest after."""
    order = {path: rank for rank, path in enumerate(E2E_UNITS)}
    items.sort(key=lambda item: order.get(item.nodeid.split("::", 1)[0], len(order)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under `pytest -n N` (make test) each end-to-end unit runs whole on one worker, so its module
    fixtures (a whole ablation, a concurrent repro) run once; every other test is scheduled on its own.

    xdist's `--dist loadgroup` would do this from an `xdist_group` mark, but pytest-xdist 3.8 marks the
    group by rewriting `item._nodeid`, which pytest 9 no longer reads: the groups are silently lost.
    """
    from xdist.scheduler import LoadScopeScheduling

    class EndToEndUnitsWhole(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return e2e_unit(nodeid) or nodeid

    return EndToEndUnitsWhole(config, log)


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
