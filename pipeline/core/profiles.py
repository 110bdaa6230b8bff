"""Named params profiles: `profiles/<name>.yaml` holds dotted-key overrides of params.yaml.

A profile is applied the way DVC experiments apply parameters (``dvc exp run -S key=value``), so the
run is recorded as a DVC experiment and ``params.yaml`` in git stays the default profile:

    python -m pipeline.core.profiles paper      # prints: -S 'train.crop_size=128' -S ...
    dvc exp run $(python -m pipeline.core.profiles paper)
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import PROJECT_ROOT
from pipeline.core.errors import PipelineError
from pipeline.core.overrides import normalize_overrides
from pipeline.core.project import dvc_root


def default_dir() -> Path:
    """`profiles/` of the DVC project the command runs in (else of the checkout holding the package)."""
    return (dvc_root(Path.cwd()) or PROJECT_ROOT) / "profiles"


def available(profiles_dir: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (profiles_dir or default_dir()).glob("*.yaml"))


def load_profile(name: str, profiles_dir: Path | None = None) -> dict[str, Any]:
    """The overrides of profile `name` as ``{dotted key: value}``."""
    profiles_dir = profiles_dir or default_dir()
    path = profiles_dir / f"{name}.yaml"
    if not path.is_file():
        raise PipelineError(f"no profile {name!r}; available: {', '.join(available(profiles_dir)) or 'none'}")
    overrides = yaml.safe_load(path.read_text()) or {}
    if not isinstance(overrides, dict) or not all(isinstance(k, str) and "." in k for k in overrides):
        raise PipelineError(f"{path} must map dotted params keys (like train.crop_size) to values")
    return overrides


def matching_profile(params: dict[str, Any], profiles_dir: Path | None = None) -> str:
    """The profile whose every override `params` holds (e.g. ``paper``), else ``default``: what an MLflow
    run and the report call the settings they ran with."""

    def value(key: str) -> Any:
        node: Any = params
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return KeyError
            node = node[part]
        return node

    for name in available(profiles_dir):
        if all(value(key) == wanted for key, wanted in load_profile(name, profiles_dir).items()):
            return name
    return "default"


def set_params_args(name: str, profiles_dir: Path | None = None) -> list[str]:
    """``dvc exp run`` arguments that apply profile `name`."""
    args: list[str] = []
    for override in normalize_overrides(load_profile(name, profiles_dir)):
        args += ["-S", override]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(
            f"usage: python -m pipeline.core.profiles NAME  (one of: {', '.join(available())})",
            file=sys.stderr,
        )
        return 2
    try:
        print(shlex.join(set_params_args(argv[0])))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
