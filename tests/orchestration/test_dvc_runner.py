"""`dvc_command` and its guard on a real DVC project, with real processes and signals: whatever happens to
the process that runs DVC, no DVC or stage process outlives it by more than seconds, and DVC's locks
are free again."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from pipeline.orchestration import guard
from pipeline.orchestration.dvc_runner import dvc_command

pytestmark = pytest.mark.slow  # real DVC commands under the guard, in processes


ROOT = Path(__file__).resolve().parents[2]

# A stage that prints nothing while it works: in the old set-up it outlived a dead flow run until it
# next wrote a line. It sleeps only while `hold` exists, so the same stage can then run to the end.
QUIET_STAGE = """\
import os, pathlib, signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
pathlib.Path("stage.pid").write_text(str(os.getpid()))
while pathlib.Path("hold").exists() and not stop:
    time.sleep(0.1)
if stop:  # as a training stage does: say so, save, then exit 143
    for step in range(200):
        print(f"saving the checkpoint of step {step}", flush=True)
    pathlib.Path("stopped-cleanly").write_text("yes")
    sys.exit(143)
pathlib.Path("out.txt").write_text("done")
"""

# The flow's side: one dvc_command, as a task runs it.
RUNS_DVC = """\
import os, sys
from pathlib import Path
from pipeline.orchestration.dvc_runner import dvc_command
dvc_command(["repro", "quiet"], Path(sys.argv[1]), dict(os.environ))
"""


@pytest.fixture
def quiet_project(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    (root / "quiet.py").write_text(QUIET_STAGE)
    (root / "dvc.yaml").write_text(
        textwrap.dedent("""\
        stages:
          quiet:
            cmd: python quiet.py
            deps: [quiet.py]
            outs: [out.txt]
        """)
    )
    (root / "hold").write_text("")
    return root


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    return dict(os.environ, PATH=path, PYTHONPATH=str(ROOT))


def _wait_for(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"{what} not within {timeout_s:.0f} s")


def _running(pids: list[int]) -> list[str]:
    alive = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {' '.join(process.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return alive


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _start_flow_side(root: Path) -> tuple[subprocess.Popen, list[int]]:
    """The process that runs `dvc repro quiet`, once the stage runs; and every process below it."""
    flow_side = subprocess.Popen(
        [sys.executable, "-c", RUNS_DVC, str(root)],
        cwd=root,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    stage_pid = int(
        _wait_for(
            lambda: (root / "stage.pid").is_file() and (root / "stage.pid").read_text(), 60, "the stage"
        )
    )
    below = [p.pid for p in psutil.Process(flow_side.pid).children(recursive=True)]
    assert stage_pid in below, below
    return flow_side, below


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_stopped_or_killed_flow_side_leaves_no_dvc_or_stage_process_and_frees_the_locks(
    quiet_project: Path, signum: int, request
):
    flow_side, below = _start_flow_side(quiet_project)
    request.addfinalizer(lambda: _kill(below))  # a failing run must not leave them behind either
    os.kill(flow_side.pid, signum)
    flow_side.wait(timeout=60)
    started = time.monotonic()
    _wait_for(lambda: not _running(below), 15, f"the end of {_running(below)} after {signum!r}")
    print(f"{signal.Signals(signum).name}: everything below it gone in {time.monotonic() - started:.1f} s")
    # The stage was stopped with SIGTERM and could finish its own stopping: its writes did not fail.
    assert (quiet_project / "stopped-cleanly").read_text() == "yes"

    # DVC's repo lock is free: a DVC command that does not wait for it gets it...
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=quiet_project, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stdout + status.stderr
    # ...and so are the stage's paths (DVC's rwlock): the same stage runs again, to the end.
    (quiet_project / "hold").unlink()
    repro = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "quiet"], cwd=quiet_project, capture_output=True, text=True
    )
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert (quiet_project / "out.txt").read_text() == "done"


def test_the_guard_stops_the_group_on_sigterm_and_reports_it(tmp_path: Path):
    marker = tmp_path / "child.pid"
    script = f"import os, pathlib, time; pathlib.Path({str(marker)!r}).write_text(str(os.getpid()))"
    script += "; time.sleep(600)"
    # The guard's parent is this test process: pass our pid, as dvc_command passes the flow's.
    process = subprocess.Popen(
        [sys.executable, guard.__file__, str(os.getpid()), sys.executable, "-c", script]
    )
    child = int(_wait_for(lambda: marker.is_file() and marker.read_text(), 30, "the guarded command"))
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert not _running([child])


def test_the_guard_passes_the_exit_status_through(tmp_path: Path):
    code = subprocess.run(
        [sys.executable, guard.__file__, str(os.getpid()), sys.executable, "-c", "raise SystemExit(7)"]
    ).returncode
    assert code == 7


MAKE = """\
import json, pathlib, time
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path("out/data.txt").write_text("data")
pathlib.Path("m.json").write_text(json.dumps({"made_at": time.time()}))
"""


def test_a_stage_with_an_uncached_metric_is_restored_in_another_clone_from_the_pushed_run_cache(tmp_path):
    # DVC 3's `push --run-cache` leaves out `cache: false` metrics, and DVC restores a stage from the
    # run cache only with all of its outputs: dvc_command pushes them too.
    origin, clone, remote = tmp_path / "origin", tmp_path / "clone", tmp_path / "remote"
    origin.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=origin, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=origin, check=True)
    (origin / "make.py").write_text(MAKE)
    (origin / "dvc.yaml").write_text(
        textwrap.dedent("""\
        stages:
          make:
            cmd: python make.py
            deps: [make.py]
            outs: [out]
            metrics:
              - m.json:
                  cache: false
        """)
    )
    subprocess.run([*git, "add", "-A"], cwd=origin, check=True)
    subprocess.run([*git, "commit", "-qm", "a stage"], cwd=origin, check=True)
    subprocess.run([*git, "clone", "-q", str(origin), str(clone)], check=True)
    env = _env()
    for workspace in (origin, clone):
        dvc_command(["remote", "add", "--local", "--default", "shared", str(remote)], workspace, env)
    dvc_command(["repro", "make"], origin, env)
    dvc_command(["push", "--run-cache"], origin, env)

    restored = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "--pull", "make"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "Stage 'make' is cached - skipping run" in restored.stdout, restored.stdout
    assert (clone / "m.json").read_text() == (origin / "m.json").read_text()


def test_under_restore_only_a_stage_command_refuses_and_dvc_still_runs(tmp_path):
    from pipeline.orchestration.tasks import restore_only_env

    env = restore_only_env(dict(os.environ), tmp_path, "not in the run cache: the collect only restores")
    stage = subprocess.run(
        ["sh", "-c", "python -m stages.train --variant x"], env=env, capture_output=True, text=True
    )
    assert (
        stage.returncode == 1 and stage.stderr == "error: not in the run cache: the collect only restores\n"
    )
    dvc = subprocess.run([sys.executable, "-m", "dvc", "--version"], env=env, capture_output=True, text=True)
    assert dvc.returncode == 0, dvc.stderr
