"""Checkpoint and resume, once, for every training stage (the CycleGAN runs and the judge).

A training stage keeps two files:

- the finished checkpoint, ``<out_dir>/checkpoint.pt``: the stage's DVC output;
- the unfinished ones, ``<resume_dir>/checkpoint.pt``: written atomically every few steps and on
  SIGTERM/SIGINT, outside the output, so the output is an ordinary one that DVC's run cache can
  restore (it never holds a ``persist`` output), and removed once the finished one is written.

Every checkpoint carries a `fingerprint`: the settings and data that decide what the training
computes (the keys that only say how it is carried out are left out). A checkpoint is continued only
when its fingerprint is the current one; otherwise the stage says which keys changed and starts over.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.core.config import flatten
from pipeline.core.errors import PipelineError
from pipeline.core.fileio import save_torch

CHECKPOINT_NAME = "checkpoint.pt"
ABSENT = "<absent>"


@dataclasses.dataclass(frozen=True)
class CheckpointFiles:
    """Where one training stage keeps its finished and its unfinished checkpoint."""

    final: Path
    resume: Path

    @classmethod
    def of(cls, out_dir: str | os.PathLike, resume_dir: str | os.PathLike | None = None) -> CheckpointFiles:
        """``<out_dir>/checkpoint.pt`` and ``<resume_dir>/checkpoint.pt`` (the same file without one)."""
        final = Path(out_dir) / CHECKPOINT_NAME
        return cls(final, Path(resume_dir) / CHECKPOINT_NAME if resume_dir is not None else final)

    def save_progress(self, state: Mapping[str, Any]) -> None:
        """An unfinished checkpoint, atomically (the previous one stays whole until this one is)."""
        save_torch(self.resume, dict(state))

    def save_final(self, state: Mapping[str, Any]) -> None:
        """The finished checkpoint into the output; the resume file has done its job."""
        save_torch(self.final, dict(state))
        if self.resume != self.final:
            self.resume.unlink(missing_ok=True)

    def load_resumable(
        self,
        read: Callable[[Path], dict[str, Any] | None],
        fingerprint: Mapping[str, Any],
        say: Callable[[str], None],
    ) -> dict[str, Any] | None:
        """The checkpoint to continue from: the finished one, else the unfinished one, whose
        fingerprint is `fingerprint`; None (and `say` why) when there is none.

        `read(path)` loads a checkpoint (None when the file does not exist); an unreadable one is
        said and skipped, as is one made under other settings.
        """
        for path in dict.fromkeys((self.final, self.resume)):
            try:
                state = read(path)
            except PipelineError as exc:
                say(f"starting over: {exc}")
                continue
            if state is None:
                continue
            changed = differences(state.get("fingerprint") or {}, fingerprint)
            if changed:
                say(f"starting over: {path} was made with other settings:\n  " + "\n  ".join(changed))
                continue
            return state
        return None


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: checkpoint X, now Y`` for every dotted key whose value differs ([] when none does)."""
    old, new = flatten(stored), flatten(current)
    return [
        f"{key}: checkpoint {old.get(key, ABSENT)!r}, now {new.get(key, ABSENT)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key, ABSENT) != new.get(key, ABSENT)
    ]
