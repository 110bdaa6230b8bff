"""The report's inputs, read by name for exactly the variants and seeds of params.yaml (a removed
variant's old files are never read): ``<metrics>/<variant>-<seed>.json`` and
``<confusion>/<variant>-<seed>.npz`` from the evaluate stages, ``<confusion>/bounds.npz`` and the bounds
stage's JSON (the floor and the ceiling). Which arrays and keys they hold depends on the dataset
(`pipeline.report.dataset`); a file that lacks what its dataset has is stale, and says so.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.study import run_name
from pipeline.report.dataset import DatasetInfo

FLOOR_PREFIX, CEILING_PREFIX = "floor/", "ceiling/"  # bounds.npz names: a run's names behind these


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run the stage that writes it first (`dvc repro`)") from None
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path} is not valid JSON ({exc}): delete it and re-run its stage") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path} must hold a JSON object; delete it and re-run its stage")
    return data


def read_per_image(path: Path) -> dict[str, np.ndarray]:
    """An evaluate or bounds stage's .npz: ``image_ids`` and per-image arrays by name."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run the stage that writes it first (`dvc repro`)") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path} is not a per-image score file ({exc}): re-run its stage") from None


def per_image_names(dataset: DatasetInfo) -> list[str]:
    """The arrays a run's .npz holds besides ``image_ids``: per direction its confusion matrices
    ``(N, 19, 20)`` when there is a judge, ``ssim/<d>`` and ``psnr/<d>`` ``(N,)`` when paired."""
    return [*dataset.judged_directions, *dataset.fidelity_metrics]


def _require(arrays: Mapping[str, np.ndarray], names: Sequence[str], path: Path, stage: str) -> None:
    missing = [name for name in names if name not in arrays]
    if missing:
        raise PipelineError(
            f"{path} lacks {', '.join(missing)}, which this dataset has: "
            f"re-run its {stage} stage (`dvc repro`)"
        )


@dataclasses.dataclass
class Run:
    """One (variant, seed): its metrics file and per-image arrays."""

    variant: str
    seed: int
    metrics: dict[str, Any]
    per_image: dict[str, np.ndarray]


@dataclasses.dataclass
class Inputs:
    dataset: DatasetInfo
    runs: dict[str, list[Run]]  # variant -> its runs, in seed order
    floor: dict[str, np.ndarray]  # a run's array names -> the content-free output's arrays
    ceiling: dict[str, np.ndarray]  # direction -> per-image matrices of the real images (with a judge)
    image_ids: list[str]
    bounds: dict[str, Any]  # the bounds stage's JSON (floor FID and KID, what the floor images are)


def load_inputs(
    variants: Sequence[str],
    seeds: Sequence[int],
    metrics_dir: Path,
    confusion_dir: Path,
    bounds_json: Path,
    dataset: DatasetInfo,
) -> Inputs:
    """Read exactly the runs of `variants` x `seeds` and the bounds; all must score the same images."""
    if not variants or not seeds:
        raise PipelineError("params.yaml names no variants or no seeds: nothing to report")
    names = per_image_names(dataset)
    bounds_npz = confusion_dir / "bounds.npz"
    bounds = read_per_image(bounds_npz)
    ceiling_names = dataset.judged_directions
    expected = [FLOOR_PREFIX + n for n in names] + [CEILING_PREFIX + d for d in ceiling_names]
    _require(bounds, expected, bounds_npz, "bounds")
    image_ids = [str(i) for i in bounds["image_ids"]]
    runs: dict[str, list[Run]] = {}
    for variant in variants:
        for seed in seeds:
            name = run_name(variant, seed)
            path = confusion_dir / f"{name}.npz"
            per_image = read_per_image(path)
            if [str(i) for i in per_image["image_ids"]] != image_ids:
                raise PipelineError(
                    f"{confusion_dir / name}.npz scores other val images than the bounds: "
                    "re-run its evaluate stage (`dvc repro`)"
                )
            _require(per_image, names, path, "evaluate")
            metrics = read_json(metrics_dir / f"{name}.json")
            runs.setdefault(variant, []).append(Run(variant, seed, metrics, per_image))
    return Inputs(
        dataset=dataset,
        runs=runs,
        floor={n: bounds[FLOOR_PREFIX + n] for n in names},
        ceiling={d: bounds[CEILING_PREFIX + d] for d in ceiling_names},
        image_ids=image_ids,
        bounds=read_json(bounds_json),
    )
