"""Parameter overrides in the grammar of ``dvc exp run -S`` (Hydra's override syntax).

Profiles, the Prefect flow and the CLI all take overrides as ``{"train.max_steps": 5}`` or as
``["train.max_steps=5", "~variants.gan_only"]``; this module turns either into Hydra strings that
DVC's own `apply_overrides` understands.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.errors import PipelineError


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
