"""End to end: a flow run that is cancelled, or whose process is SIGKILLed, while a quiet training stage runs.

Real Prefect (`cyclegan serve` of a deployment `faults` against the session's server), real DVC, the
real train stage (made to run long and print nothing for minutes), the project's own MLflow store.
Within seconds nothing of the flow run may be left: no guard, DVC or stage process, no live holder
of DVC's locks, and the stage's MLflow run ended KILLED.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.harness import (
    TINY_OVERRIDES,
    VENV_BIN,
    Service,
    dvc,
    http_ok,
    mlflow_client,
    processes_in,
    stop_tree,
)
from tests.factories import copy_project

pytestmark = pytest.mark.e2e

GONE_WITHIN_S = 20  # the guard's grace (10 s) for the stage's checkpoint, and some
# The train stage for many minutes: a long schedule, few checkpoints and log lines.
LONGER = {"++train.max_steps": "1000000", "++train.checkpoint_every": "500", "++train.log_every": "500"}
LONG_TRAINING = [
    f"{key}={LONGER[key]}" if (key := item.split("=", 1)[0]) in LONGER else item for item in TINY_OVERRIDES
] + ["++train.epochs_constant=100000"]


@pytest.fixture(scope="module")
def faults_project(e2e_root: Path) -> Path:
    return copy_project(e2e_root / "faults-project", keep_lock=False, commit=True)


@pytest.fixture(scope="module")
def faults_env(env: dict[str, str], faults_project: Path) -> dict[str, str]:
    # Progress lines at most every 10 minutes: the stage writes nothing to the flow's pipe meanwhile.
    return {**env, "PYTHONPATH": str(faults_project), "TQDM_MININTERVAL": "600"}


@pytest.fixture(scope="module")
def faults_deployment(prefect_server, faults_project, faults_env, e2e_root):
    argv = [sys.executable, "-m", "pipeline.orchestration.cli", "serve", "--name", "faults"]
    serve = Service.start(
        "cyclegan serve (faults)", argv, faults_env, faults_project, e2e_root / "faults.log"
    )
    try:
        url = f"{prefect_server.url}/deployments/name/cyclegan/faults"
        serve.wait_until(lambda: http_ok(url), 120, "deployment cyclegan/faults registered")
        yield serve
    finally:
        stop_tree(serve)
        for process in processes_in(faults_project):  # what a failing test would otherwise leave running
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def _wait(check, timeout_s: float, what: str, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"{what} not within {timeout_s:.0f} s\n{log.read_text()[-4000:] if log.is_file() else ''}")


def _start(prefect_server, faults_env, faults_project, faults_deployment) -> tuple[str, psutil.Process]:
    """A flow run of cyclegan/faults, once its train stage runs; the flow run's id and the stage."""
    argv = [
        str(VENV_BIN / "prefect"),
        "deployment",
        "run",
        "cyclegan/faults",
        "--param",
        'variants=["gan_only"]',
    ]
    argv += ["--param", "seeds=[0]", "--param", f"overrides={json.dumps(LONG_TRAINING)}"]
    started = subprocess.run(argv, env=faults_env, capture_output=True, text=True, timeout=120, check=True)
    flow_run_id = next(line.split()[-1] for line in started.stdout.splitlines() if "UUID" in line)

    def stage():  # the stage's Python, not the shell DVC may start it through
        return [p for p in processes_in(faults_project) if p.info["cmdline"][1:3] == ["-m", "stages.train"]]

    (train,) = _wait(stage, 240, "the train stage", faults_deployment.log)
    _wait(lambda: _run_status(faults_project) == "RUNNING", 60, "its MLflow run", faults_deployment.log)
    return flow_run_id, train


def _run_status(project: Path) -> str | None:
    client = mlflow_client(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cyclegan-ablation")
    runs = (
        client.search_runs([experiment.experiment_id], "tags.`cyclegan.variant` = 'gan_only'")
        if experiment
        else []
    )
    return runs[0].info.status if runs else None


def _assert_nothing_left(project: Path, env: dict[str, str], log: Path, what: str) -> None:
    started = time.monotonic()
    _wait(
        lambda: not processes_in(project),
        GONE_WITHIN_S,
        f"the end of {processes_in(project)} after {what}",
        log,
    )
    print(f"{what}: no guard, DVC or stage process left after {time.monotonic() - started:.1f} s")
    # No live process holds DVC's locks: the repo lock (`dvc status` takes it) and the rwlock's paths.
    status = dvc(project, env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    rwlock = project / ".dvc" / "tmp" / "rwlock"
    holders = json.loads(rwlock.read_text()) if rwlock.is_file() else {}
    pids = {info["pid"] for mode in holders.values() for infos in mode.values() for info in infos}
    assert not [pid for pid in pids if psutil.pid_exists(pid)], holders
    _wait(lambda: _run_status(project) == "KILLED", 10, "the stage's MLflow run ended KILLED", log)


def _flow_run_state(prefect_server, flow_run_id: str) -> str:
    import requests

    return requests.get(f"{prefect_server.url}/flow_runs/{flow_run_id}", timeout=10).json()["state"]["type"]


def test_a_cancelled_flow_run_leaves_nothing_running(
    prefect_server, faults_project, faults_env, faults_deployment
):
    flow_run_id, _train = _start(prefect_server, faults_env, faults_project, faults_deployment)
    cancel = [str(VENV_BIN / "prefect"), "flow-run", "cancel", flow_run_id]
    subprocess.run(cancel, env=faults_env, capture_output=True, text=True, timeout=60, check=True)
    _assert_nothing_left(faults_project, faults_env, faults_deployment.log, "cancel")
    _wait(
        lambda: _flow_run_state(prefect_server, flow_run_id) == "CANCELLED",
        60,
        "state Cancelled",
        faults_deployment.log,
    )


def test_a_sigkilled_flow_run_leaves_nothing_running(
    prefect_server, faults_project, faults_env, faults_deployment
):
    _flow_run_id, train = _start(prefect_server, faults_env, faults_project, faults_deployment)
    # The flow-run process: the one that `cyclegan serve` started, above the stage.
    flow_process = next(p for p in train.parents() if p.ppid() == faults_deployment.process.pid)
    with contextlib.suppress(psutil.NoSuchProcess):
        os.kill(flow_process.pid, signal.SIGKILL)
    _assert_nothing_left(faults_project, faults_env, faults_deployment.log, "SIGKILL of the flow-run process")
