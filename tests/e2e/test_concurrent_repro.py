"""`cyclegan repro` (what `make repro` runs) trains the runs side by side in one workspace, and DVC stays
the record: afterwards `dvc status` is clean, `dvc repro` runs nothing, the run cache restores every
stage but the report (committed, not cached) in another clone, and a repro SIGKILLed while two runs
train resumes each of them to the same bytes as an uninterrupted run.

Each test works in its own git copy of the project on the tiny generated archive, against the session's
Prefect server (so no temporary server starts per command).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import TINY_OVERRIDES, VENV_BIN, processes_in, tail
from tests.factories import copy_project

pytestmark = pytest.mark.e2e

# Long enough to kill mid-training: a hundred tiny steps (4 images a domain: 4 steps an epoch), a
# checkpoint every 10.
STEPS = 100
OVERRIDES = [
    *(o for o in TINY_OVERRIDES if not o.startswith(("++train.max_steps", "++train.checkpoint_every"))),
    f"++train.max_steps={STEPS}",
    "++train.epochs_constant=40",
    "++train.epochs_decay=40",
    "++train.checkpoint_every=10",
]
RUNS = ["cyclegan-0", "gan_forward-0", "gan_backward-0", "cycle_only-0", "gan_only-0"]
# The killed repro trains two of them side by side (`cyclegan repro --variants`): enough to show that
# every run a kill interrupts resumes to its own bytes, at two fifths of the cost of all five.
KILLED = ["cyclegan", "gan_forward"]


def _env(base: dict[str, str], project: Path) -> dict[str, str]:
    return {**base, "PYTHONPATH": str(project)}


def repro(project: Path, env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen:
    argv = [str(VENV_BIN / "cyclegan"), "repro", *extra]
    for override in OVERRIDES:
        argv += ["-S", override]
    handle = log.open("w")
    process = subprocess.Popen(argv, cwd=project, env=env, stdout=handle, stderr=subprocess.STDOUT)
    handle.close()
    return process


def dvc(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def digests(project: Path, runs: list[str] = RUNS) -> dict[str, str]:
    """Every output a run makes, by path: the checkpoints, the loss curves, the scores."""
    files = [project / "models" / run / "checkpoint.pt" for run in runs]
    files += [project / "plots" / "train" / f"{run}.csv" for run in runs]
    files += [project / "metrics" / f"{run}.json" for run in runs]
    return {str(f.relative_to(project)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def reference(e2e_root: Path, env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A whole concurrent repro, uninterrupted: the record every other run is held to."""
    project = copy_project(e2e_root / "concurrent-a", keep_lock=False, commit=True)
    env = _env(env, project)
    started = time.monotonic()
    process = repro(project, env, e2e_root / "concurrent-a.log", "--jobs", "5")
    assert process.wait(timeout=1500) == 0, tail(e2e_root / "concurrent-a.log")
    print(f"concurrent repro, 5 runs of {STEPS} tiny steps: {time.monotonic() - started:.0f} s")
    return project, env


def test_the_runs_trained_together_and_dvc_recorded_every_one(reference, e2e_root):
    project, env = reference
    log = (e2e_root / "concurrent-a.log").read_text()
    assert "training 5 run(s), 5 at a time" in log
    # Side by side: every run's DVC process started before the first of them finished.
    starts = [log.index(f"$ dvc repro --single-item train@{run}") for run in RUNS]
    first_done = min(log.index(f"Task run 'train@{run}' - Finished in state Completed") for run in RUNS)
    assert max(starts) < first_done
    status = dvc(project, env, "status")
    assert "Data and pipelines are up to date." in status.stdout, status.stdout + status.stderr
    again = dvc(project, env, "repro")
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout


def test_another_clone_restores_every_stage_but_the_report_from_the_run_cache(reference, e2e_root, tmp_path):
    project, env = reference
    remote = tmp_path / "remote"
    assert dvc(project, env, "remote", "add", "-d", "--local", "shared", str(remote)).returncode == 0
    pushed = subprocess.run(
        [sys.executable, "-c", "import pipeline.orchestration.dvc_runner as d; d.push_run_cache_objects()"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert dvc(project, env, "push", "--run-cache").returncode == 0 and pushed.returncode == 0, pushed.stderr
    clone = copy_project(tmp_path / "clone", keep_lock=False, commit=True)
    (clone / "params.yaml").write_text((project / "params.yaml").read_text())  # the overrides the run kept
    clone_env = _env(env, clone)
    assert dvc(clone, clone_env, "remote", "add", "-d", "--local", "shared", str(remote)).returncode == 0
    restored = dvc(clone, clone_env, "repro", "--pull")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    # Every stage comes from the run cache but the report, whose outputs are committed to git rather
    # than cached (DVC's run cache keeps no stage with an uncached output): it runs again, in seconds.
    assert re.findall(r"Running stage '([^']+)'", restored.stdout) == ["report"], restored.stdout
    cached = restored.stdout.count("is cached - skipping run, checking out outputs")
    assert cached == 1 + 1 + 2 + 3 * len(RUNS)
    assert digests(clone) == digests(project)
    for report in ("reports/ablation.json", "reports/ablation.csv", "reports/ablation.md"):
        assert (clone / report).read_bytes() == (project / report).read_bytes(), report


def _resume_files(project: Path) -> list[Path]:
    return sorted((project / "models" / ".resume").glob("*/checkpoint.pt"))


def test_a_sigkilled_concurrent_repro_resumes_each_run_to_the_same_bytes(reference, e2e_root):
    project_a, env = reference
    project = copy_project(e2e_root / "concurrent-b", keep_lock=False, commit=True)
    env = _env(env, project)
    two = ["--jobs", "2", "--variants", *KILLED]
    first = repro(project, env, e2e_root / "concurrent-b1.log", *two)
    deadline = time.monotonic() + 900
    while len(_resume_files(project)) < len(KILLED):  # both have trained past a checkpoint, and go on
        assert first.poll() is None, tail(e2e_root / "concurrent-b1.log")
        assert time.monotonic() < deadline, "not every run reached a checkpoint"
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    # The guards see their flow process gone and stop every stage, each saving its checkpoint.
    deadline = time.monotonic() + 60
    while processes_in(project, ("stages.train",)):
        assert time.monotonic() < deadline, "stages outlived the killed repro"
        time.sleep(0.5)
    interrupted = {path.parent.name for path in _resume_files(project)}
    assert interrupted == {f"{variant}-0" for variant in KILLED}, interrupted

    second = repro(project, env, e2e_root / "concurrent-b2.log", *two)
    assert second.wait(timeout=1500) == 0, tail(e2e_root / "concurrent-b2.log")
    log = (e2e_root / "concurrent-b2.log").read_text()
    resumed = {run for run in interrupted if f"train[{run}]: resuming from step" in log}
    assert resumed == interrupted, log[-4000:]
    runs = [f"{variant}-0" for variant in KILLED]
    assert digests(project, runs) == digests(project_a, runs)  # bit for bit the uninterrupted runs
