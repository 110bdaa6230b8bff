"""The DVC project a command works in, and what its `dvc.lock` records."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import yaml

from pipeline.core.errors import PipelineError


def dvc_root(start: str | os.PathLike) -> Path | None:
    """The DVC repo holding `start`: the nearest folder upwards with a `.dvc/` (as `dvc` finds it)."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return None


def read_lock(root: Path) -> dict:
    """The stages of `root/dvc.lock` ({} when there is none), read under DVC's repo lock.

    DVC records a stage by rewriting dvc.lock in place (truncate, then write), holding its repo lock.
    Runs trained side by side record theirs while others start and read the file (a run's data
    version), so a read without the lock can meet it empty or half written.
    """
    lock_path = root / "dvc.lock"
    if not lock_path.is_file():
        return {}
    with repo_lock(root):
        text = lock_path.read_text()
    try:
        lock = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise PipelineError(f"{lock_path} is not valid YAML ({exc}): restore it with git") from None
    return lock.get("stages") or {}


@contextlib.contextmanager
def repo_lock(root: Path) -> Iterator[None]:
    """DVC's own repo lock of the project at `root`, waited for as ``dvc --wait-for-lock`` does (the
    lock file and the ``core.hardlink_lock`` setting DVC itself uses)."""
    from dvc.config import Config
    from dvc.lock import make_lock

    dvc_dir = root / ".dvc"
    tmp_dir = dvc_dir / "tmp"
    tmp_dir.mkdir(exist_ok=True)
    hardlink = Config(os.fspath(dvc_dir), validate=False)["core"].get("hardlink_lock", False)
    lock = make_lock(
        os.fspath(tmp_dir / "lock"), tmp_dir=os.fspath(tmp_dir), hardlink_lock=hardlink, wait=True
    )
    with lock:
        yield


def stage_output_md5(root: Path, stage: str) -> str | None:
    """The md5 `root/dvc.lock` records for the first output of `stage` (e.g. the split's data version)."""
    outs = (read_lock(root).get(stage) or {}).get("outs") or []
    return outs[0].get("md5") if outs else None


def dvc_output_md5(path: str | os.PathLike) -> str | None:
    """The md5 that the enclosing repo's `dvc.lock` records for `path` as some stage's output.

    Read from dvc.lock rather than hashing the folder again: the stage that wrote `path` just recorded
    it there, and `dvc repro` reruns that stage before any reader whenever the data changed. None
    outside a DVC repo, or when no stage lists `path` as an output (e.g. a hand-made split).
    """
    path = Path(path).resolve()
    root = dvc_root(path.parent)
    if root is None:
        return None
    relative = path.relative_to(root).as_posix()
    for stage in read_lock(root).values():
        for out in stage.get("outs") or []:
            if Path(out.get("path", "")).as_posix().rstrip("/") == relative:
                return out.get("md5")
    return None


def data_provenance(start: str | os.PathLike) -> dict:
    """The provenance file the download stage wrote (where the data came from, which dataset):
    empty outside a DVC repo or before the data was downloaded."""
    import json

    root = dvc_root(start)
    if root is None:
        return {}
    outs = (read_lock(root).get("download") or {}).get("outs") or []
    if not outs:
        return {}
    try:
        return json.loads((root / outs[0]["path"] / "provenance.json").read_text())
    except (OSError, ValueError, KeyError):
        return {}
