"""The study a params file describes: its `variants:` times its `seeds:`, and the one name of each run.

Every (variant, seed) is one run: one set of DVC stages (``train@cyclegan-0``), one folder of outputs
(``models/cyclegan-0``), one MLflow run. `run_name` is that name, written once; `read_study` is the one
reader of both sections, for the stages, the report, the flow and the recording layer alike.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from pipeline.core.errors import PipelineError

# Variant names become folders (models/<name>) and words of the shell commands in dvc.yaml.
VARIANT_NAME = re.compile(r"[A-Za-z0-9_]+")


def run_name(variant: str, seed: int) -> str:
    """``<variant>-<seed>``: the DVC stage suffix (``train@cyclegan-0``), the output stem, the MLflow run."""
    return f"{variant}-{seed}"


@dataclasses.dataclass(frozen=True)
class Study:
    """The variants (name -> loss switches, in params.yaml's order) and the seeds of a params file."""

    variants: dict[str, dict[str, Any]]
    seeds: list[int]

    @property
    def runs(self) -> list[tuple[str, int]]:
        """Every (variant, seed), variants first, in params.yaml's order."""
        return [(variant, seed) for variant in self.variants for seed in self.seeds]

    @property
    def names(self) -> list[str]:
        return [run_name(variant, seed) for variant, seed in self.runs]


def read_variants(params: Mapping[str, Any], where: str = "params.yaml") -> dict[str, dict[str, Any]]:
    """The `variants:` section of a params mapping, each name checked against `VARIANT_NAME`."""
    variants = params.get("variants") or {}
    if not isinstance(variants, dict):
        raise PipelineError(f"{where} `variants:` must map variant names to their loss switches")
    for name in variants:
        if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name):
            raise PipelineError(
                f"variant name {name!r} in {where} `variants:` must match ^[A-Za-z0-9_]+$ (it becomes "
                "a folder and a shell word in dvc.yaml): rename it"
            )
    return dict(variants)


def read_seeds(params: Mapping[str, Any], where: str = "params.yaml") -> list[int]:
    """The top-level `seeds:` list: distinct non-negative integers, at least one (no default: dvc.yaml's
    matrix expands it, so a params file without it has no training stages at all)."""
    seeds = params.get("seeds")
    valid = (
        isinstance(seeds, list)
        and seeds
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    )
    if not valid or len(set(seeds)) != len(seeds):
        raise PipelineError(
            f"{where} `seeds:` must be a non-empty list of distinct integers >= 0, got {seeds!r}"
        )
    return list(seeds)


def read_study(params: Mapping[str, Any], where: str = "params.yaml") -> Study:
    """Both sections of a params mapping, checked."""
    return Study(read_variants(params, where), read_seeds(params, where))
