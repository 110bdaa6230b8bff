"""Real servers for the end-to-end tests: a Prefect server, the served deployment, an MLflow server.

Everything runs in a throw-away copy of the project (its tracked and untracked-but-not-ignored
files, committed to a fresh git repository so DVC works), on a tiny generated stand-in for the
Cityscapes archive, with its own PREFECT_HOME and its own MLflow store (the default one, at the
copy's root). The copy's own code is what runs: PYTHONPATH points at it, and the tests check that.
Every server runs in its own process group and the whole group is stopped at teardown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import (
    N_TRAIN,
    N_VAL,
    TINY_OVERRIDES,
    VARIANTS,
    VENV_BIN,
    DeploymentRun,
    Service,
    free_port,
    http_ok,
    run_deployment,
)
from tests.factories import copy_project, make_archive, make_pix2pix_tree


@pytest.fixture(scope="session")
def e2e_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def project(e2e_root: Path) -> Path:
    return copy_project(e2e_root / "project", keep_lock=False, commit=True)


@pytest.fixture(scope="session")
def archive(e2e_root: Path) -> Path:
    make_pix2pix_tree(e2e_root / "dataset", n_train=N_TRAIN, n_val=N_VAL)
    return make_archive(e2e_root / "dataset", e2e_root / "cityscapes.tar.gz")


@pytest.fixture(scope="session")
def base_env(e2e_root: Path, project: Path, archive: Path) -> dict[str, str]:
    """The environment every e2e process gets: this venv first, the copy's code, nothing shared."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "CYCLEGAN_"))}
    env.update(
        PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
        PYTHONPATH=str(project),
        CYCLEGAN_DATA_SOURCE=str(archive),
        PREFECT_HOME=str(e2e_root / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PYTHONUNBUFFERED="1",
    )
    root = subprocess.run(
        [sys.executable, "-c", "from pipeline.core.config import PROJECT_ROOT; print(PROJECT_ROOT)"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The served flow defaults to the package's project root: it must be the copy, never the repo.
    assert Path(root) == project, f"the e2e processes import pipeline from {root}, not the copy {project}"
    return env


@pytest.fixture(scope="session")
def prefect_server(e2e_root: Path, base_env: dict[str, str]):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    argv = [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = Service.start("prefect server", argv, base_env, e2e_root, e2e_root / "prefect-server.log")
    server.url = api
    try:
        server.wait_until(lambda: http_ok(f"{api}/health"), 120, "/api/health")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def env(base_env: dict[str, str], prefect_server: Service) -> dict[str, str]:
    """`base_env` pointed at the Prefect server (serve, the CLI, DVC)."""
    return dict(base_env, PREFECT_API_URL=prefect_server.url)


@pytest.fixture(scope="session")
def served_deployment(prefect_server: Service, project: Path, env: dict[str, str], e2e_root: Path):
    """`cyclegan serve` (`python -m pipeline.orchestration.cli serve`: the copy's code) for the session."""
    argv = [sys.executable, "-m", "pipeline.orchestration.cli", "serve"]
    serve = Service.start("cyclegan serve", argv, env, project, e2e_root / "serve.log")
    url = f"{prefect_server.url}/deployments/name/cyclegan/ablation"
    try:
        serve.wait_until(lambda: http_ok(url), 120, "deployment cyclegan/ablation registered")
        yield serve
    finally:
        serve.stop()


@pytest.fixture(scope="session")
def ablation_run(prefect_server, served_deployment, project, env, e2e_root) -> DeploymentRun:
    """Test 1's run: every variant, tiny overrides, through the CLI. Shared by the MLflow UI test."""
    params = {"variants": json.dumps(VARIANTS), "overrides": json.dumps(TINY_OVERRIDES)}
    run = run_deployment(prefect_server.url, env, project, params, e2e_root / "ablation-run.log")
    print(f"e2e ablation run: {run.wall_s:.0f} s wall, exit {run.returncode}")
    return run


@pytest.fixture(scope="session")
def store_uri(project: Path) -> str:
    """The MLflow store the flow used: the default one at the copy's root."""
    return f"sqlite:///{project / 'mlflow.db'}"


@pytest.fixture(scope="session")
def mlflow_server(ablation_run, store_uri: str, base_env: dict[str, str], e2e_root: Path):
    port = free_port()
    argv = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", store_uri]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server = Service.start("mlflow server", argv, base_env, e2e_root, e2e_root / "mlflow-server.log")
    server.url = f"http://127.0.0.1:{port}"
    try:
        server.wait_until(lambda: http_ok(f"{server.url}/health"), 120, "/health")
        yield server
    finally:
        server.stop()
