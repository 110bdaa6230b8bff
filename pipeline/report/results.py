"""What the report summarises: every (variant, seed) run's scores, their intervals, floor and ceiling.

The runs and bounds come from `pipeline.report.inputs`; which metrics exist depends on the dataset
(`pipeline.report.dataset`).

Every per-image metric is recomputed from the per-image arrays (the FCN scores from per-image confusion
matrices, SSIM and PSNR as means of per-image values), so one code path gives the point value, the
val-image bootstrap (`pipeline.scoring.bootstrap`) and the floor-to-ceiling share. Differences between
variants are paired: each resample draws the same images for both. FID and KID are statistics of a
whole image set: they are read as the evaluate stage wrote them, with an interval across seeds only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.judge.metrics import SCORES, segmentation_scores
from pipeline.report.dataset import DatasetInfo
from pipeline.report.inputs import FLOOR_PREFIX, Inputs, Run
from pipeline.scoring.bootstrap import (
    percentile_interval,
    resample_counts,
    resampled_scores,
    seed_summary,
)

REFERENCE = "cyclegan"  # the variant every other one is compared with (the paper's question)


# --- per-image metrics: the value over all images, and its value in every resample ----------------------

Measured = dict[str, tuple[float, np.ndarray]]  # metric -> (value, value in each resample)


def _measure_fcn(
    per_image: Mapping[str, np.ndarray], directions: Sequence[str], counts: np.ndarray
) -> Measured:
    """FCN scores from per-image confusion matrices (the evaluate stage's code for the value)."""
    measured: Measured = {}
    for direction in directions:
        value = segmentation_scores(per_image[direction].sum(axis=0))
        resampled = resampled_scores(per_image[direction], counts)
        for score in SCORES:
            measured[f"fcn/{direction}/{score}"] = (value[score], resampled[score])
    return measured


def _measure_means(
    per_image: Mapping[str, np.ndarray], metrics: Sequence[str], counts: np.ndarray
) -> Measured:
    """Means over images (SSIM, PSNR), resampled with the same counts as the FCN scores."""
    measured: Measured = {}
    for metric in metrics:
        values = per_image[metric].astype(np.float64)
        measured[metric] = (float(values.mean()), counts @ values / len(values))
    return measured


def _measure(per_image: Mapping[str, np.ndarray], dataset: DatasetInfo, counts: np.ndarray) -> Measured:
    return _measure_fcn(per_image, dataset.judged_directions, counts) | _measure_means(
        per_image, dataset.fidelity_metrics, counts
    )


def _share(score: np.ndarray | float, floor: np.ndarray | float, ceiling: np.ndarray | float):
    """(score - floor) / (ceiling - floor): how much of the way from floor to ceiling a score went."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.asarray(score) - floor) / (np.asarray(ceiling) - floor)


def _finite(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def mean_of_known(values: Sequence[float | None]) -> float | None:
    """The mean of the values that exist (None when none does)."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


@dataclasses.dataclass
class Summary:
    """Everything the tables and figures show, as plain data (`pipeline.report.tables` writes it out)."""

    dataset: DatasetInfo
    variants: dict[str, dict[str, Any]]
    pairwise: dict[str, dict[str, Any]]
    floor: dict[str, float | None]  # every metric of the dataset
    ceiling: dict[str, float]  # the FCN scores of the real images (empty without a judge)
    ceiling_per_class_iou: dict[str, list[float | None]]
    bootstrap: dict[str, Any]
    seeds: list[int]
    fid_unavailable: dict[str, str]  # why FID or KID is missing -> for whom


def summarize(inputs: Inputs, resamples: int, bootstrap_seed: int) -> Summary:
    """Per variant and metric: per-seed values, mean, std, seed t-interval (>= 2 seeds); for per-image
    metrics also the val-image bootstrap interval of the mean over seeds and (FCN) the floor-to-ceiling
    share; per variant against `REFERENCE`: the mean difference with its paired bootstrap interval."""
    dataset = inputs.dataset
    counts = resample_counts(len(inputs.image_ids), resamples, bootstrap_seed)
    floor_measured = _measure(inputs.floor, dataset, counts)
    ceiling_measured = _measure_fcn(inputs.ceiling, list(inputs.ceiling), counts)

    resampled_means: dict[str, dict[str, np.ndarray]] = {}
    variants: dict[str, dict[str, Any]] = {}
    for variant, runs in inputs.runs.items():
        per_seed = [_measure(run.per_image, dataset, counts) for run in runs]
        entry: dict[str, Any] = {"seeds": [run.seed for run in runs]}
        resampled_means[variant] = {}
        for metric in dataset.per_image_metrics:
            entry[metric], resampled_means[variant][metric] = _per_image_entry(
                per_seed, metric, floor_measured, ceiling_measured
            )
        if dataset.has_judge:
            entry["per_class_iou"] = {d: _per_class_iou(runs, d) for d in dataset.directions}
        variants[variant] = entry | _distribution_entries(runs, dataset)

    floor = {m: measured[0] for m, measured in floor_measured.items()} | _distribution_floor(inputs)
    return Summary(
        dataset=dataset,
        variants=variants,
        pairwise=_pairwise(variants, resampled_means, dataset.per_image_metrics),
        floor=floor,
        ceiling={m: measured[0] for m, measured in ceiling_measured.items()},
        ceiling_per_class_iou={
            d: segmentation_scores(cms.sum(axis=0))["per_class_iou"] for d, cms in inputs.ceiling.items()
        },
        bootstrap={"resamples": resamples, "seed": bootstrap_seed, "images": len(inputs.image_ids)},
        seeds=sorted({run.seed for runs in inputs.runs.values() for run in runs}),
        fid_unavailable=_fid_reasons(inputs),
    )


def _per_image_entry(
    per_seed: Sequence[Measured], metric: str, floor: Measured, ceiling: Measured
) -> tuple[dict[str, Any], np.ndarray]:
    """A variant's entry for one per-image metric (per-seed values, their seed summary, the bootstrap
    interval of their mean and, where there is a ceiling, the floor-to-ceiling share), and the mean
    over seeds in every resample (what the paired differences subtract)."""
    values = [measured[metric][0] for measured in per_seed]
    mean_b = np.mean([measured[metric][1] for measured in per_seed], axis=0)
    entry = {"values": values, **seed_summary(values), "bootstrap_ci95": percentile_interval(mean_b)}
    if metric in ceiling:
        (floor_value, floor_b), (ceiling_value, ceiling_b) = floor[metric], ceiling[metric]
        entry["share_of_ceiling"] = _finite(_share(np.mean(values), floor_value, ceiling_value))
        entry["share_of_ceiling_ci95"] = percentile_interval(_share(mean_b, floor_b, ceiling_b))
    return entry, mean_b


def _per_class_iou(runs: Sequence[Run], direction: str) -> list[float | None]:
    """Per-class IoU averaged over seeds (None for a class absent from the ground truth)."""
    per_seed = [segmentation_scores(r.per_image[direction].sum(axis=0))["per_class_iou"] for r in runs]
    columns = zip(*per_seed, strict=True)
    return [None if any(v is None for v in col) else float(np.mean(col)) for col in columns]


def _recorded(metric: str) -> str:
    """The key a metrics file holds a distribution metric under (KID: its mean over subsets)."""
    return f"{metric}/mean" if metric.startswith("kid/") else metric


def _unavailable(record: Mapping[str, Any], keys: Sequence[str], reason_key: str) -> str | None:
    """Why `record` lacks a value under one of `keys`: the reason it gives, else that it is missing."""
    if all(_finite(record.get(key)) is not None for key in keys):
        return None
    return record.get(reason_key) or "missing from its file (written by an older stage: re-run it)"


def _run_unavailable(run: Run, dataset: DatasetInfo) -> str | None:
    return _unavailable(run.metrics, [_recorded(m) for m in dataset.distribution_metrics], "fid_unavailable")


def _distribution_entries(runs: Sequence[Run], dataset: DatasetInfo) -> dict[str, Any]:
    """FID and KID of a variant as its runs recorded them (None where a run has none): per-seed values
    and the seed summary of those that exist; KID also its std over subsets, per seed."""
    entries: dict[str, Any] = {}
    for metric in dataset.distribution_metrics:
        values = [_finite(run.metrics.get(_recorded(metric))) for run in runs]
        known = [v for v in values if v is not None]
        summary = seed_summary(known) if known else {"mean": None, "std": None, "ci95": None}
        entries[metric] = {"values": values, **summary}
        if metric.startswith("kid/"):
            entries[metric]["subset_std"] = [_finite(run.metrics.get(f"{metric}/std")) for run in runs]
    reasons = {_run_unavailable(run, dataset) for run in runs} - {None}
    if reasons:
        entries["fid_unavailable"] = "; ".join(sorted(reasons))
    return entries


def _floor_keys(dataset: DatasetInfo) -> dict[str, str]:
    """Distribution metric -> the key the bounds stage's JSON holds the floor's value under."""
    return {m: FLOOR_PREFIX + _recorded(m) for m in dataset.distribution_metrics}


def _distribution_floor(inputs: Inputs) -> dict[str, float | None]:
    """The floor's FID and KID, from the bounds stage's JSON."""
    return {m: _finite(inputs.bounds.get(key)) for m, key in _floor_keys(inputs.dataset).items()}


def _fid_reasons(inputs: Inputs) -> dict[str, str]:
    """Why FID or KID is missing -> for whom (usually one reason for all: no Inception weights)."""
    by_reason: dict[str, list[str]] = {}
    for variant, runs in inputs.runs.items():
        for reason in sorted({_run_unavailable(run, inputs.dataset) for run in runs} - {None}):
            by_reason.setdefault(reason, []).append(variant)
    who = {
        reason: "every variant" if len(names) == len(inputs.runs) else ", ".join(names)
        for reason, names in by_reason.items()
    }
    floor_keys = list(_floor_keys(inputs.dataset).values())
    floor_reason = _unavailable(inputs.bounds, floor_keys, "floor_fid_unavailable")
    if floor_reason:
        who[floor_reason] = f"{who[floor_reason]}, the floor" if floor_reason in who else "the floor"
    return who


def _pairwise(
    variants: Mapping[str, dict[str, Any]],
    resampled_means: Mapping[str, Mapping[str, np.ndarray]],
    metrics: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Every variant against `REFERENCE` in each per-image metric: the difference of the means, its
    paired bootstrap interval (the same resample for both) and, with seeds, its Welch interval."""
    if REFERENCE not in variants or not metrics:
        return {}
    pairwise: dict[str, dict[str, Any]] = {}
    for variant in variants:
        if variant == REFERENCE:
            continue
        rows = {}
        for metric in metrics:
            interval = percentile_interval(
                resampled_means[variant][metric] - resampled_means[REFERENCE][metric]
            )
            ours, theirs = variants[variant][metric], variants[REFERENCE][metric]
            rows[metric] = {
                "difference": ours["mean"] - theirs["mean"],
                "bootstrap_ci95": interval,
                "excludes_zero": interval[0] > 0 or interval[1] < 0,
                "seeds_ci95": _welch(ours["values"], theirs["values"]),
            }
        pairwise[variant] = rows
    return pairwise


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
