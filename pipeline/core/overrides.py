"""Parameter overrides in the grammar of ``dvc exp run -S`` (Hydra's override syntax), and applying them.

Profiles, the Prefect flow and the CLI all take overrides as ``{"train.max_steps": 5}`` or as
``["train.max_steps=5", "~variants.gan_only"]``; this module turns either into Hydra strings that
DVC's own `apply_overrides` understands.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.config import read_params
from pipeline.core.errors import PipelineError
from pipeline.core.fileio import atomic_write_text
from pipeline.core.study import read_variants

PARAMS_NAME = "params.yaml"
BACKUP_NAME = "params.before-overrides.yaml"  # params.yaml as the last run with overrides found it


def hydra_value(value: Any) -> str:
    """`value` written in Hydra's override grammar (the syntax of ``dvc exp run -S``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # Quoted, so "8", "true" or "null" stay strings. Inside quotes Hydra reads backslashes
        # literally except in front of a quote, so only those (and the quotes) are escaped.
        escaped = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value)
        escaped = escaped.replace("${", "\\${")  # OmegaConf would resolve it as an interpolation
        return f"'{escaped}'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{key}:{hydra_value(item)}" for key, item in value.items()) + "}"
    raise PipelineError(f"override value {value!r} ({type(value).__name__}) is not a scalar, list or mapping")


def normalize_overrides(overrides: Mapping[str, Any] | Sequence[str] | str | None) -> list[str]:
    """Overrides as Hydra strings: ``["train.max_steps=5", "~variants.gan_only"]`` pass through;
    ``{"train.max_steps": 5}`` becomes ``["train.max_steps=5"]`` (a ``~key`` entry deletes the key)."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(overrides, Mapping):
        result = []
        for key, value in overrides.items():
            if not isinstance(key, str) or not key.strip():
                raise PipelineError(f"override key {key!r} must be a dotted params key like train.max_steps")
            key = key.strip()
            result.append(key if key.startswith("~") and value is None else f"{key}={hydra_value(value)}")
        return result
    result = []
    for item in overrides:
        if not isinstance(item, str) or not item.strip():
            raise PipelineError(
                f"override {item!r} must be a string like train.max_steps=5 (`dvc exp run -S`)"
            )
        result.append(item.strip())
    return result


@dataclasses.dataclass(frozen=True)
class ParamsChange:
    """What `apply_params_overrides` did to params.yaml."""

    overrides: list[str]  # everything applied, in order
    variants: list[str]  # the variants params.yaml holds afterwards, in its order
    changed: bool  # params.yaml was rewritten
    backup: Path | None  # the file as found, when changed
    before: dict[str, Any]
    after: dict[str, Any]


def apply_params_overrides(
    params_path: str | os.PathLike,
    overrides: Sequence[str] = (),
    backup_path: str | os.PathLike | None = None,
) -> ParamsChange:
    """Apply Hydra `overrides` to `params_path` the way ``dvc exp run -S`` does.

    The overrides are applied to a scratch copy first, so a bad key or value fails before the real
    file is touched. When the result differs from the file (compared as data: DVC's YAML writer
    re-wraps lines), the file as found is written to `backup_path` (default: `BACKUP_NAME` beside it)
    and the new one moved into place atomically. Applying the same overrides again changes nothing
    and keeps the earlier backup.
    """
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    params_path = Path(params_path)
    backup_path = Path(backup_path) if backup_path is not None else params_path.with_name(BACKUP_NAME)
    original_text = params_path.read_text()
    before = read_params(params_path)
    known = list(read_variants(before, params_path))
    applied = list(overrides)
    if not applied:
        return ParamsChange([], known, False, None, before, before)

    scratch = params_path.with_name(f".{params_path.name}.{os.getpid()}.overrides.yaml")
    try:
        scratch.write_text(original_text)
        try:
            apply_overrides(scratch, applied)
        except InvalidArgumentError as exc:
            cause = exc.__cause__ or exc
            raise PipelineError(
                f"invalid override(s) {applied}: {str(cause).splitlines()[0]} "
                "(syntax as in `dvc exp run -S`: key=value, ++key=value to add a key, ~key to delete one)"
            ) from None
        after = read_params(scratch)
        left = list(read_variants(after, f"{params_path} with overrides {applied}"))
        if not left:
            raise PipelineError(f"overrides {applied} leave no variant in `variants:`: keep at least one")
        if after == before:
            return ParamsChange(applied, left, False, None, before, after)
        atomic_write_text(backup_path, original_text)
        os.replace(scratch, params_path)
    finally:
        scratch.unlink(missing_ok=True)
    return ParamsChange(applied, left, True, backup_path, before, after)
