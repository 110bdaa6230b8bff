"""Atomic files and folders: what a killed process leaves is the old version or the new one, never half.

- A file is written to a temp file beside it (or in `temp_dir`, on the same filesystem, so the final
  `os.replace` is atomic), flushed and fsynced, then moved over the target; on any error the temp
  file is removed, and one that a killed writer left is removed by the next write of the same file.
  A checkpoint (`save_torch`) lives in a DVC output folder, where DVC would cache and push a stray
  temp file: its temp file is written beside that folder instead.
- A folder is built in a staging folder beside it (`staging_dir`) and moved into place whole
  (`publish_dir`), or entry by entry, all of them or none (`publish_entries`); the staging folder is
  removed on error, and staging folders that a killed run left behind are removed by the next run
  that stages the same output.

Every output has one writer at a time (DVC's repo lock; rank 0 under DDP), which is what makes a
temp file or staging folder of the same output a leftover to be removed rather than someone's work.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pipeline.core.errors import PipelineError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike, mode: str = "w", temp_dir: str | os.PathLike | None = None
) -> Iterator[IO]:
    """Open a temp file for writing `path`; on success it replaces `path` (fsynced), else vanishes.

    The temp file is made in `temp_dir` (default: beside `path`), which must be on the same
    filesystem as `path`. A temp file of `path` that a killed writer left there is removed first.
    """
    path = Path(path).absolute()
    folder = Path(temp_dir).absolute() if temp_dir is not None else path.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}." if folder == path.parent else f".{path.parent.name}.{path.name}."
    for stale in folder.glob(f"{glob.escape(prefix)}*.tmp"):
        if re.fullmatch(rf"{re.escape(prefix)}[a-z0-9_]{{8}}\.tmp", stale.name):  # mkstemp's names only
            stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs should read like any other file
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        # A failed write (a full disk) names no file, and torch.save wraps it in a RuntimeError of its
        # own: say which file could not be written, since the message is all the user gets.
        failed = exc.__context__ if isinstance(exc, RuntimeError) else exc
        if isinstance(failed, OSError) and failed.filename is None and failed.errno is not None:
            raise OSError(failed.errno, failed.strerror, str(path)) from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_file(path, "w") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically.

    NaN and inf are not JSON, and a metric that is NaN is a diverged model or an empty average, not a
    score: either is a `PipelineError` naming the keys, and the previous file stays as it was.
    """
    bad = _non_finite(data)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise PipelineError(
            f"refusing to write {path}: {shown} {'is' if len(bad) == 1 else 'are'} not a finite number "
            "(a model that diverged, or a mean over nothing); the previous file is kept"
        )
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def _non_finite(data: Any, where: str = "") -> list[str]:
    """The keys (dotted, with [i] for list items) of every NaN or inf float in `data`."""
    if isinstance(data, float):
        return [] if math.isfinite(data) else [f"{where or 'the value'} ({data})"]
    if isinstance(data, dict):
        return [
            bad for key, value in data.items() for bad in _non_finite(value, f"{where}.{key}".lstrip("."))
        ]
    if isinstance(data, (list, tuple)):
        return [bad for index, value in enumerate(data) for bad in _non_finite(value, f"{where}[{index}]")]
    return []


def _staging_prefix(out_dir: Path) -> str:
    return f".{out_dir.name}-staging-"


@contextlib.contextmanager
def staging_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """A fresh folder beside `out_dir` to build it in; removed if the block raises (or after publishing).

    Staging folders of `out_dir` left by a killed run are removed first: one output is built by one
    stage at a time (DVC's repo lock), so any sibling with the prefix is a leftover.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    prefix = _staging_prefix(out_dir)
    for stale in out_dir.parent.glob(f"{prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out_dir.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would become the output's mode
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished folder `tmp` to `out_dir`, replacing what was there.

    A folder cannot be swapped atomically for a non-empty one, so the old one is renamed aside first
    (beside it, so every rename stays on one filesystem); if the second rename fails the old one is put
    back. At every instant `out_dir` is the old complete tree, absent, or the new complete tree.
    """
    out_dir = Path(out_dir)
    if not (out_dir.exists() or out_dir.is_symlink()):
        os.replace(tmp, out_dir)
        return
    aside = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out_dir)}old-", dir=out_dir.parent))
    os.replace(out_dir, aside / out_dir.name)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        os.replace(aside / out_dir.name, out_dir)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def publish_entries(tmp: Path, out_dir: Path) -> None:
    """Move the entries of `tmp` into `out_dir`, replacing the old ones, all of them or none; anything
    else in `out_dir` stays (DVC's .gitignore, for one).

    The old entries are first moved aside (beside `tmp`, on its filesystem), then the new ones in; if
    any move fails, those done are undone. SIGINT and SIGTERM wait until the moves are over, so an
    interrupted stage leaves the old set or the new one. (Only a SIGKILL in those microseconds can
    leave a mix, which DVC then sees as changed outputs and rebuilds.)
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(entry.name for entry in tmp.iterdir())
    aside = Path(tempfile.mkdtemp(prefix=f"{tmp.name}-old-", dir=tmp.parent))  # swept with the staging
    moved_aside: list[str] = []
    moved_in: list[str] = []
    try:
        with _signals_held():
            try:
                for name in names:
                    if (out_dir / name).exists() or (out_dir / name).is_symlink():
                        os.replace(out_dir / name, aside / name)
                        moved_aside.append(name)
                for name in names:
                    os.replace(tmp / name, out_dir / name)
                    moved_in.append(name)
            except BaseException:
                for name in reversed(moved_in):
                    os.replace(out_dir / name, tmp / name)
                for name in reversed(moved_aside):
                    os.replace(aside / name, out_dir / name)
                raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back during the block; they are delivered when it ends."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def save_torch(path: str | os.PathLike, state: Any) -> None:
    """`torch.save` of `state` to `path`, atomically (a checkpoint is whole or the previous one).

    `path` is taken to sit in an output folder (``models/<variant>/checkpoint.pt``, a DVC output):
    the temp file is written beside that folder, so that a kill during the save leaves nothing inside
    it for DVC to cache and push.
    """
    import torch

    with atomic_file(path, "wb", temp_dir=Path(path).absolute().parent.parent) as handle:
        torch.save(_canonical(state), handle)


def _canonical(value: Any) -> Any:
    """`value` with its containers rebuilt and its strings interned, so that equal states pickle to
    equal bytes. Pickle writes an object it has seen by reference: a fresh run's state shares the
    strings of torch's source ("lr" in every Adam param group), a resumed run's state holds the
    separate copies that loading made, and the same checkpoint would otherwise differ in its bytes
    (and so in its DVC md5) by whether its run was ever interrupted."""
    if type(value) is str:
        return sys.intern(value)
    if isinstance(value, dict):  # a state_dict's OrderedDict keeps its `_metadata` attribute
        rebuilt = {} if type(value) is dict else copy.copy(value)
        rebuilt.clear()
        rebuilt.update((_canonical(k), _canonical(v)) for k, v in value.items())
        for name, attribute in getattr(value, "__dict__", {}).items():
            setattr(rebuilt, name, _canonical(attribute))
        return rebuilt
    if type(value) is list:
        return [_canonical(v) for v in value]
    if type(value) is tuple:  # not torch.Size or a named tuple: those keep their type
        return tuple(_canonical(v) for v in value)
    return value
