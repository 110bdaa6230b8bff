"""Atomic files and folders: what a killed process leaves is the old version or the new one, never half.

- A file is written to a temp file beside it (same folder, so the final `os.replace` is atomic),
  flushed and fsynced, then moved over the target; on any error the temp file is removed.
- A folder is built in a staging folder beside it (`staging_dir`) and moved into place whole
  (`publish_dir`); the staging folder is removed on error, and staging folders that a killed run left
  behind are removed by the next run that stages the same output.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
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
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside `path` for writing; on success it replaces `path` (fsynced), else vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs should read like any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
    """Move each entry of `tmp` into `out_dir`, replacing the old one, keeping anything else there
    (DVC's .gitignore, for one)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for entry in sorted(tmp.iterdir()):
        target = out_dir / entry.name
        if target.is_dir():
            publish_dir(entry, target)
        else:
            os.replace(entry, target)


def save_torch(path: str | os.PathLike, state: Any) -> None:
    """`torch.save` of `state` to `path`, atomically (a checkpoint is whole or the previous one)."""
    import torch

    with atomic_file(path, "wb") as handle:
        torch.save(state, handle)
