"""The workspace a flow run acts on: which folder it may be, and the lock that keeps two runs apart.

The folder is the served project: the DVC repo the serving or worker process runs in (its working
directory, found upwards as `dvc` finds its repo). A flow run's `project_dir` may name another folder
only inside one listed in `ALLOWED_ENV` on that machine: anyone who can create flow runs through the
Prefect API could otherwise point a worker at any folder's `dvc.yaml` and run its commands.

One flow run at a time per workspace: a run holds `LOCK_NAME` (an advisory lock, released by the
kernel when its process ends however it ends) while it rewrites params.yaml and runs stages, so a
second run refuses with one line instead of rewriting params.yaml under the first one's stages.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.project import dvc_root

ALLOWED_ENV = "CYCLEGAN_ALLOWED_PROJECTS"  # os.pathsep-separated folders a flow's project_dir may be in
LOCK_NAME = ".dvc/tmp/cyclegan-flow.lock"


def served_project() -> Path:
    """The DVC project the serving (or worker) process was started in, found from its working
    directory upwards as `dvc` finds its repo; never the folder the package is installed in."""
    root = dvc_root(Path.cwd())
    if root is None:
        raise PipelineError(
            f"{Path.cwd()} is not inside a DVC project: start `cyclegan serve` (or the worker) in the "
            "project's folder"
        )
    return root


def allowed_folders() -> list[Path]:
    """The folders `ALLOWED_ENV` lists on this machine (resolved), none when it is unset."""
    listed = os.environ.get(ALLOWED_ENV, "")
    return [Path(item).expanduser().resolve() for item in listed.split(os.pathsep) if item.strip()]


def resolve_project(project_dir: str | os.PathLike | None) -> Path:
    """The project a flow run works in: the served one, or `project_dir` when an allowed folder holds it.

    Symlinks are resolved before the check, so a link inside an allowed folder cannot lead outside it.
    """
    if not project_dir:
        return served_project()
    project = Path(project_dir).expanduser().resolve()
    with contextlib.suppress(PipelineError):
        if project == served_project():
            return project
    if any(project.is_relative_to(folder) for folder in allowed_folders()):
        return project
    raise PipelineError(
        f"project_dir {project} refused: flow runs act on the project this worker serves, or on folders "
        f"listed in {ALLOWED_ENV} on the worker's machine (now: {os.environ.get(ALLOWED_ENV) or 'unset'})"
    )


@contextlib.contextmanager
def workspace_lock(project: Path, holder: Mapping[str, str | None]) -> Iterator[None]:
    """Hold the workspace for the block, or raise one line naming the run that holds it.

    `holder` (the flow run's id and name) is written into the lock file for that message.
    """
    path = project / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise PipelineError(
                f"another flow run is working in {project} ({_describe(handle.read())}): wait for it to "
                "end, or run this one in another clone of the project"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({**holder, "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        yield
    finally:
        handle.close()  # closing the file releases the lock


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
    except ValueError:
        return "unknown run"
    name = info.get("name") or info.get("id") or "a run"
    return f"{name}, pid {info.get('pid')}, since {info.get('since')}"
