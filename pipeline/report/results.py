"""What the report summarises: every (variant, seed) run's scores, their intervals, floor and ceiling.

Inputs, read by name for exactly the variants and seeds of params.yaml (a removed variant's old files
are never read): ``<metrics>/<variant>-<seed>.json`` and ``<confusion>/<variant>-<seed>.npz`` from the
evaluate stages, and ``<confusion>/bounds.npz`` from the bounds stage (the floor and the ceiling).

Every score is recomputed from per-image confusion matrices, so one code path gives the point value,
the val-image bootstrap (`pipeline.scoring.bootstrap`) and the floor-to-ceiling share. Differences
between variants are paired: each resample draws the same images for both.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.directions import DIRECTIONS
from pipeline.core.errors import PipelineError
from pipeline.core.study import run_name
from pipeline.judge.metrics import SCORES, segmentation_scores
from pipeline.scoring.bootstrap import (
    percentile_interval,
    resample_counts,
    resampled_scores,
    seed_summary,
)

FCN_METRICS = tuple(f"fcn/{d}/{s}" for d in DIRECTIONS for s in SCORES)
FID_METRICS = tuple(f"fid/{d}" for d in DIRECTIONS)
REFERENCE = "cyclegan"  # the variant every other one is compared with (the paper's question)


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


def read_confusions(path: Path) -> dict[str, np.ndarray]:
    """Per-image confusion matrices ``(N, 19, 20)`` per direction, and the ``image_ids``."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run the stage that writes it first (`dvc repro`)") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path} is not a confusion-matrix file ({exc}): re-run its stage") from None


@dataclasses.dataclass
class Run:
    """One (variant, seed): its metrics file and per-image matrices."""

    variant: str
    seed: int
    metrics: dict[str, Any]
    confusions: dict[str, np.ndarray]


@dataclasses.dataclass
class Inputs:
    runs: dict[str, list[Run]]  # variant -> its runs, in seed order
    floor: dict[str, np.ndarray]  # direction -> per-image matrices of the content-free output
    ceiling: dict[str, np.ndarray]  # direction -> per-image matrices of the real images
    image_ids: list[str]
    bounds: dict[str, Any]  # the bounds stage's JSON (what the floor images are)


def load_inputs(
    variants: Sequence[str], seeds: Sequence[int], metrics_dir: Path, confusion_dir: Path, bounds_json: Path
) -> Inputs:
    """Read exactly the runs of `variants` x `seeds` and the bounds; all must score the same images."""
    if not variants or not seeds:
        raise PipelineError("params.yaml names no variants or no seeds: nothing to report")
    bounds = read_confusions(confusion_dir / "bounds.npz")
    image_ids = [str(i) for i in bounds["image_ids"]]
    runs: dict[str, list[Run]] = {}
    for variant in variants:
        for seed in seeds:
            name = run_name(variant, seed)
            confusions = read_confusions(confusion_dir / f"{name}.npz")
            if [str(i) for i in confusions["image_ids"]] != image_ids:
                raise PipelineError(
                    f"{confusion_dir / name}.npz scores other val images than the bounds: "
                    "re-run its evaluate stage (`dvc repro`)"
                )
            metrics = read_json(metrics_dir / f"{name}.json")
            runs.setdefault(variant, []).append(Run(variant, seed, metrics, confusions))
    return Inputs(
        runs=runs,
        floor={d: bounds[f"floor/{d}"] for d in DIRECTIONS},
        ceiling={d: bounds[f"ceiling/{d}"] for d in DIRECTIONS},
        image_ids=image_ids,
        bounds=read_json(bounds_json),
    )


def _scores(per_image: np.ndarray) -> dict[str, float]:
    """The FCN scores of a set of images, from their per-image matrices (the evaluate stage's code)."""
    return segmentation_scores(per_image.sum(axis=0))


def _share(score: np.ndarray | float, floor: np.ndarray | float, ceiling: np.ndarray | float):
    """(score - floor) / (ceiling - floor): how much of the way from floor to ceiling a score went."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.asarray(score) - floor) / (np.asarray(ceiling) - floor)


def _finite(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


@dataclasses.dataclass
class Summary:
    """Everything the tables and figures show, as plain data (`as_json` is `reports/ablation.json`)."""

    variants: dict[str, dict[str, Any]]
    pairwise: dict[str, dict[str, Any]]
    floor: dict[str, float]
    ceiling: dict[str, float]
    ceiling_per_class_iou: dict[str, list[float | None]]
    bootstrap: dict[str, Any]
    seeds: list[int]


def summarize(inputs: Inputs, resamples: int, bootstrap_seed: int) -> Summary:
    """Per variant and metric: per-seed values, mean, std, seed t-interval (>= 2 seeds), the val-image
    bootstrap interval of the mean over seeds, and the floor-to-ceiling share; per variant against
    `REFERENCE`: the mean difference with its paired bootstrap interval."""
    counts = resample_counts(len(inputs.image_ids), resamples, bootstrap_seed)
    floor_b = {d: resampled_scores(inputs.floor[d], counts) for d in DIRECTIONS}
    ceiling_b = {d: resampled_scores(inputs.ceiling[d], counts) for d in DIRECTIONS}
    floor = {f"fcn/{d}/{s}": _scores(inputs.floor[d])[s] for d in DIRECTIONS for s in SCORES}
    ceiling = {f"fcn/{d}/{s}": _scores(inputs.ceiling[d])[s] for d in DIRECTIONS for s in SCORES}

    resampled_means: dict[str, dict[str, np.ndarray]] = {}
    variants: dict[str, dict[str, Any]] = {}
    for variant, runs in inputs.runs.items():
        entry: dict[str, Any] = {"seeds": [run.seed for run in runs]}
        resampled_means[variant] = {}
        for direction in DIRECTIONS:
            per_seed = [resampled_scores(run.confusions[direction], counts) for run in runs]
            for score in SCORES:
                metric = f"fcn/{direction}/{score}"
                values = [_scores(run.confusions[direction])[score] for run in runs]
                mean_b = np.mean([b[score] for b in per_seed], axis=0)
                resampled_means[variant][metric] = mean_b
                share = _share(np.mean(values), floor[metric], ceiling[metric])
                share_b = _share(mean_b, floor_b[direction][score], ceiling_b[direction][score])
                entry[metric] = {
                    "values": values,
                    **seed_summary(values),
                    "bootstrap_ci95": percentile_interval(mean_b),
                    "share_of_ceiling": _finite(share),
                    "share_of_ceiling_ci95": percentile_interval(share_b),
                }
        entry["per_class_iou"] = {
            d: _mean_per_class(
                [segmentation_scores(r.confusions[d].sum(axis=0))["per_class_iou"] for r in runs]
            )
            for d in DIRECTIONS
        }
        for metric in FID_METRICS:
            values = [_finite(run.metrics.get(metric)) for run in runs]
            known = [v for v in values if v is not None]
            entry[metric] = {"values": values, **(seed_summary(known) if known else {"mean": None})}
            reasons = {run.metrics.get("fid_unavailable") for run in runs} - {None, ""}
            if reasons:
                entry["fid_unavailable"] = "; ".join(sorted(reasons))
        variants[variant] = entry

    pairwise: dict[str, dict[str, Any]] = {}
    if REFERENCE in variants:
        for variant in variants:
            if variant == REFERENCE:
                continue
            rows = {}
            for metric in FCN_METRICS:
                diff_b = resampled_means[variant][metric] - resampled_means[REFERENCE][metric]
                interval = percentile_interval(diff_b)
                ours, theirs = variants[variant][metric], variants[REFERENCE][metric]
                rows[metric] = {
                    "difference": ours["mean"] - theirs["mean"],
                    "bootstrap_ci95": interval,
                    "excludes_zero": interval[0] > 0 or interval[1] < 0,
                    "seeds_ci95": _welch(ours["values"], theirs["values"]),
                }
            pairwise[variant] = rows
    bootstrap = {
        "resamples": resamples,
        "seed": bootstrap_seed,
        "images": len(inputs.image_ids),
    }
    ceiling_classes = {
        d: segmentation_scores(inputs.ceiling[d].sum(axis=0))["per_class_iou"] for d in DIRECTIONS
    }
    seeds = sorted({run.seed for runs in inputs.runs.values() for run in runs})
    return Summary(variants, pairwise, floor, ceiling, ceiling_classes, bootstrap, seeds)


def _mean_per_class(per_seed: list[list[float | None]]) -> list[float | None]:
    """Per-class IoU averaged over seeds (None for a class absent from the ground truth)."""
    columns = zip(*per_seed, strict=True)
    return [None if any(v is None for v in col) else float(np.mean(col)) for col in columns]


def _welch(a: Sequence[float], b: Sequence[float]) -> list[float] | None:
    """95% Welch interval of mean(a) - mean(b) over seeds (None with fewer than two seeds each)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    diff = float(np.mean(a) - np.mean(b))
    if se == 0:
        return [diff, diff]
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.975, dof)) * se
    return [diff - half, diff + half]
