"""What the flow tests share: a real Prefect API (a temporary server), a throw-away MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.orchestration.fakes import PARAMS


@pytest.fixture(scope="session")
def prefect_api():
    """A temporary Prefect server for the session (`prefect_test_harness`): flows run for real."""
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """Every MLflow call of the module, flows included, goes to a fresh SQLite store."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI")
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    """A project with `PARAMS` and no stages (DVC is faked); allowed although not the served one."""
    # Not the project this test process serves (the repository): the flow may act on it once allowed.
    monkeypatch.setenv("CYCLEGAN_ALLOWED_PROJECTS", str(tmp_path))
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text(PARAMS)
    (root / "dvc.yaml").write_text("stages: {}\n")
    return root
