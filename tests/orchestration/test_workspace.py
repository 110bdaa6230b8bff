"""The workspace a flow run may act on, and its lock, with real processes (the flow-level behaviour is in
test_flows.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.orchestration.workspace import ALLOWED_ENV, resolve_project, workspace_lock

ROOT = Path(__file__).resolve().parents[2]


def _dvc_project(path: Path) -> Path:
    (path / ".dvc").mkdir(parents=True)
    return path


def test_the_served_project_is_the_one_the_worker_runs_in(tmp_path, monkeypatch):
    served = _dvc_project(tmp_path / "served")
    (served / "sub").mkdir()
    monkeypatch.chdir(served / "sub")
    monkeypatch.delenv(ALLOWED_ENV, raising=False)
    assert resolve_project(None) == served
    assert resolve_project(str(served)) == served  # naming it is fine
    other = _dvc_project(tmp_path / "other")
    with pytest.raises(PipelineError, match=f"project_dir {other} refused: .*{ALLOWED_ENV} .*now: unset"):
        resolve_project(str(other))


def test_other_projects_only_inside_allowed_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(_dvc_project(tmp_path / "served"))
    allowed = tmp_path / "clones"
    inside = _dvc_project(allowed / "a")
    monkeypatch.setenv(ALLOWED_ENV, os.pathsep.join([str(tmp_path / "elsewhere"), str(allowed)]))
    assert resolve_project(str(inside)) == inside
    (allowed / "escape").symlink_to(tmp_path / "outside")
    with pytest.raises(PipelineError, match="refused"):  # a link is judged by where it leads
        resolve_project(str(allowed / "escape"))
    with pytest.raises(PipelineError, match="refused"):
        resolve_project(str(allowed / ".." / "outside"))


HOLDS_THE_LOCK = """\
import sys, time
from pathlib import Path
from pipeline.orchestration.workspace import workspace_lock
with workspace_lock(Path(sys.argv[1]), {"id": "f00", "name": "ablation-first"}):
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_lock_names_its_holder_and_is_free_once_the_holder_is_killed(tmp_path):
    project = _dvc_project(tmp_path / "p")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDS_THE_LOCK, str(project)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(
                PipelineError,
                match=rf"another flow run is working in .* \(ablation-first, pid {holder.pid}, since ",
            ),
            workspace_lock(project, {"id": "f01", "name": "ablation-second"}),
        ):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    started = time.monotonic()
    with workspace_lock(project, {"id": "f01", "name": "ablation-second"}):  # the kernel let it go
        assert time.monotonic() - started < 1
