"""What the end-to-end tests share besides fixtures: the tiny overrides, server processes, and the
queries that read back what a run left in Prefect, DVC and MLflow."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.factories import N_TRAIN, N_VAL, TINY_OVERRIDES  # noqa: F401 (re-exported to the e2e tests)

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
EXPERIMENT = "cyclegan-ablation"
VARIANTS = ["cycle_only", "gan_only", "gan_forward", "gan_backward", "cyclegan"]  # the whole ablation
RUN_TIMEOUT_S = 1500


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


def stop_tree(service: Service, grace_s: float = 20.0) -> None:
    """`service.stop()`, then SIGKILL what it had started in process groups of their own (a Prefect
    worker's flow-run processes), so that a failed test leaves nothing running."""
    import psutil

    try:
        below = psutil.Process(service.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        below = []
    service.stop(grace_s)
    for process in below:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


PIPELINE_PROCESSES = ("guard.py", " -m dvc ", "stages.")  # the flow's guards, DVC, the stages


def processes_in(project: Path, markers: tuple[str, ...] = PIPELINE_PROCESSES) -> list:
    """The live processes working in `project` whose command line holds one of `markers` (by default
    the guard, DVC and stage processes of a flow run); `psutil.Process` objects, zombies left out."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline", "cwd", "status"]):
        info = process.info  # read in process_iter: a process may end while it is looked at
        if info["cwd"] != str(project) or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        line = f"{' '.join(info['cmdline'] or [])} "
        if any(marker in line for marker in markers):
            found.append(process)
    return found


def http_ok(url: str) -> bool:
    return requests.get(url, timeout=5).status_code == 200


@dataclass
class DeploymentRun:
    """One `prefect deployment run cyclegan/ablation --watch`: its exit status, output and flow run."""

    returncode: int
    output: str
    flow_run: dict
    wall_s: float


def run_deployment(
    api: str,
    env: dict[str, str],
    cwd: Path,
    params: dict[str, str],
    log: Path,
    deployment: str = "cyclegan/ablation",
) -> DeploymentRun:
    """Run the deployment through the CLI exactly as the README does and read back its flow run."""
    argv = [str(VENV_BIN / "prefect"), "deployment", "run", deployment, "--watch"]
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
