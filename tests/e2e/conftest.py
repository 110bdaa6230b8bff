"""Real servers for the end-to-end tests: a Prefect server, the served deployment, an MLflow server.

Everything runs in a throw-away copy of the project (its tracked and untracked-but-not-ignored
files, committed to a fresh git repository so DVC works), on a tiny generated stand-in for the
Cityscapes archive, with its own PREFECT_HOME and its own MLflow store (the default one, at the
copy's root). The copy's own code is what runs: PYTHONPATH points at it, and the tests check that.
Every server runs in its own process group and the whole group is stopped at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.conftest import make_archive, make_pix2pix_tree

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
N_TRAIN, N_VAL = 8, 4
EXPERIMENT = "cyclegan-ablation"
VARIANTS = ["gan_only", "cyclegan"]
RUN_TIMEOUT_S = 1500

# Shrinks every stage to seconds. `++` sets a key whether or not params.yaml has it yet (a typo still
# fails: the stage's config rejects unknown keys).
TINY_OVERRIDES = [
    f"++data.expected_counts={{train:{N_TRAIN},val:{N_VAL}}}",
    "++split.load_size=40",
    "++split.test_size=32",
    "++split.workers=1",
    "++train.device=cpu",
    "++train.load_size=36",
    "++train.crop_size=32",
    "++train.max_images=4",
    "++train.ngf=4",
    "++train.ndf=4",
    "++train.n_blocks=1",
    "++train.max_steps=4",
    "++train.checkpoint_every=2",
    "++train.log_every=1",
    "++evaluator.device=cpu",
    "++evaluator.image_size=32",
    "++evaluator.epochs=1",
    "++evaluator.batch_size=4",
    "++evaluator.width=4",
    "++evaluator.eval_batch_size=4",
    "++translate.device=cpu",
    "++translate.batch_size=4",
    "++evaluate.device=cpu",
    "++evaluate.batch_size=4",
    "++evaluate.log_samples=1",
    "++report.n_samples=2",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 80) -> str:
    """The end of a log file, for assertion messages."""
    if not path.is_file():
        return f"({path} missing)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Service:
    """A server process in its own process group, logging to a file."""

    name: str
    process: subprocess.Popen
    log: Path
    url: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def start(cls, name: str, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> Service:
        handle = log.open("w")
        process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        handle.close()
        return cls(name, process, log)

    def wait_until(self, check, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{tail(self.log)}")
            with contextlib.suppress(requests.RequestException):
                if check():
                    return
            time.sleep(0.5)
        pytest.fail(f"{self.name}: {what} not within {timeout_s:.0f} s:\n{tail(self.log)}")

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the whole process group, SIGKILL what is left after `grace_s`."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # stragglers (e.g. a flow-run subprocess)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def _http_ok(url: str) -> bool:
    return requests.get(url, timeout=5).status_code == 200


def copy_project(destination: Path) -> Path:
    """The repository's tracked and untracked-but-not-ignored files (no data, no dvc.lock), committed."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in listed:
        relative = raw.decode()
        source = REPO / relative
        if not relative or not source.is_file() or relative in ("dvc.lock", "params.before-overrides.yaml"):
            continue
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    git = ["git", "-c", "user.name=e2e", "-c", "user.email=e2e@localhost", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=destination, check=True)
    subprocess.run([*git, "add", "-A"], cwd=destination, check=True)
    subprocess.run([*git, "commit", "-qm", "e2e snapshot"], cwd=destination, check=True)
    return destination


@pytest.fixture(scope="session")
def e2e_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def project(e2e_root: Path) -> Path:
    return copy_project(e2e_root / "project")


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
        [sys.executable, "-c", "from pipeline.config import PROJECT_ROOT; print(PROJECT_ROOT)"],
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
        server.wait_until(lambda: _http_ok(f"{api}/health"), 120, "/api/health")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def env(base_env: dict[str, str], prefect_server: Service) -> dict[str, str]:
    """`base_env` pointed at the Prefect server (serve, the CLI, DVC)."""
    return dict(base_env, PREFECT_API_URL=prefect_server.url)


@pytest.fixture(scope="session")
def served_deployment(prefect_server: Service, project: Path, env: dict[str, str], e2e_root: Path):
    """`cyclegan serve` (as `python -m pipeline.cli serve`: the copy's code) until the session ends."""
    argv = [sys.executable, "-m", "pipeline.cli", "serve"]
    serve = Service.start("cyclegan serve", argv, env, project, e2e_root / "serve.log")
    url = f"{prefect_server.url}/deployments/name/cyclegan/ablation"
    try:
        serve.wait_until(lambda: _http_ok(url), 120, "deployment cyclegan/ablation registered")
        yield serve
    finally:
        serve.stop()


@dataclass
class DeploymentRun:
    """One `prefect deployment run cyclegan/ablation --watch`: its exit status, output and flow run."""

    returncode: int
    output: str
    flow_run: dict
    wall_s: float


def run_deployment(
    api: str, env: dict[str, str], cwd: Path, params: dict[str, str], log: Path
) -> DeploymentRun:
    """Run the deployment through the CLI exactly as the README does and read back its flow run."""
    argv = [str(VENV_BIN / "prefect"), "deployment", "run", "cyclegan/ablation", "--watch"]
    argv += ["--watch-timeout", str(RUN_TIMEOUT_S)]
    for key, value in params.items():
        argv += ["--param", f"{key}={value}"]
    start = time.monotonic()
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S + 120
    )
    wall_s = time.monotonic() - start
    output = result.stdout + result.stderr
    log.write_text(output)
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, f"no flow run id in the CLI output:\n{output[-4000:]}"
    flow_run = requests.get(f"{api}/flow_runs/{match[1]}", timeout=10).json()
    return DeploymentRun(result.returncode, output, flow_run, wall_s)


def task_run_states(api: str, flow_run_id: str) -> dict[str, str]:
    """Task-run name -> state type for one flow run, from the Prefect API."""
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200}
    runs = requests.post(f"{api}/task_runs/filter", json=body, timeout=10).json()
    return {run["name"]: run["state"]["type"] for run in runs}


def dvc(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="session")
def ablation_run(prefect_server, served_deployment, project, env, e2e_root) -> DeploymentRun:
    """Test 1's run: two variants, tiny overrides, through the CLI. Shared by the MLflow UI test."""
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
        server.wait_until(lambda: _http_ok(f"{server.url}/health"), 120, "/health")
        yield server
    finally:
        server.stop()


# --- MLflow queries ------------------------------------------------------------------------------------


def mlflow_client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def parent_run(uri: str, flow_run_id: str):
    """The ablation parent run the flow run made (tagged with its Prefect flow-run id)."""
    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, f"no MLflow experiment {EXPERIMENT!r} in {uri}"
    runs = client.search_runs([experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    assert len(runs) == 1, f"{len(runs)} parent runs for flow run {flow_run_id}"
    return runs[0]


def child_runs(uri: str, parent) -> list:
    """The runs nested under `parent` (MLflow's mlflow.parentRunId tag)."""
    client = mlflow_client(uri)
    return client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
