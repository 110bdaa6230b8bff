"""The report's machine-readable outputs, from one `pipeline.report.results.Summary`: the CSV table,
``ablation.json`` and the `dvc metrics` rows, each holding exactly the metrics the dataset has."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from pipeline.judge.metrics import SCORES
from pipeline.report.dataset import DatasetInfo, metric_column, metric_direction
from pipeline.report.paper import (
    FLOOR,
    GROUND_TRUTH,
    INCEPTION_INPUT,
    PAPER_SCORES,
    PAPER_SOURCE,
    deviations,
    paper_value,
    variant_order,
)
from pipeline.report.results import REFERENCE, Summary, mean_of_known


def provenance(summary: Summary, runs_metrics: dict[str, list[dict]]) -> dict[str, Any]:
    """Where the numbers came from: protocol, training settings and the machines, as the runs recorded."""
    records = [m for ms in runs_metrics.values() for m in ms]
    protocols = sorted({str(m.get("protocol")) for m in records})
    machines = {tuple(sorted((m.get("machine") or {}).items())) for m in records}
    trains = {tuple(sorted((m.get("train") or {}).items())) for m in records}
    found = {
        "protocol": protocols[0] if len(protocols) == 1 else protocols,
        "machines": [dict(machine) for machine in sorted(machines)],
        "training": [dict(train) for train in sorted(trains)],
        "steps": sorted({m.get("steps") for m in records if m.get("steps") is not None}),
        "seeds": summary.seeds,
    }
    # The val-image bootstrap serves only metrics scored image by image (none on an unpaired test set).
    return found | ({"bootstrap": summary.bootstrap} if summary.dataset.per_image_metrics else {})


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _paper_document(directions: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """The paper's FCN scores by row name, as metric names."""
    names = sorted({n for d in directions for n in PAPER_SCORES.get(d, {})}, key=variant_order)
    return {
        name: {
            f"fcn/{d}/{s}": PAPER_SCORES[d][name][i]
            for d in directions
            if name in PAPER_SCORES.get(d, {})
            for i, s in enumerate(SCORES)
        }
        for name in names
    }


def json_document(summary: Summary, prov: dict[str, Any]) -> dict[str, Any]:
    """`reports/ablation.json`: the dataset; per variant its `seeds` and per metric `values`, `mean`,
    `std`, `ci95` (across seeds), for per-image metrics `bootstrap_ci95` (val images) and for FCN scores
    the floor-to-ceiling share; the pairwise differences; the floor, and with a judge the ceiling and the
    paper's numbers; where it all came from."""
    dataset = summary.dataset
    judged = dataset.has_judge
    document: dict[str, Any] = {"source": PAPER_SOURCE} if judged else {}
    document |= {
        "dataset": dataset.as_json(),
        "variants": summary.variants,
        "pairwise_vs": REFERENCE,
        "pairwise": summary.pairwise,
        "floor": summary.floor,
    }
    if judged:
        document |= {"ceiling": summary.ceiling, "paper": _paper_document(dataset.directions)}
    document |= {
        "provenance": prov,
        "fid_unavailable": summary.fid_unavailable,
        "fid_kid_inputs": INCEPTION_INPUT,
        "deviations": deviations(judged),
    }
    return _rounded(document)


def _fcn_columns(name: str, entry: dict[str, Any], dataset: DatasetInfo) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for metric in dataset.fcn_metrics:
        e = entry[metric]
        row[metric] = e["mean"]
        row[f"{metric}/bootstrap_low"], row[f"{metric}/bootstrap_high"] = e["bootstrap_ci95"]
        row[f"{metric}/seeds_low"], row[f"{metric}/seeds_high"] = e["ci95"] or (math.nan, math.nan)
        row[f"{metric}/share"] = e["share_of_ceiling"]
        row[f"paper/{metric}"] = paper_value(name, metric)
    return row


def _fidelity_columns(entry: dict[str, Any], dataset: DatasetInfo) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for metric in dataset.fidelity_metrics:
        e = entry[metric]
        row[metric] = e["mean"]
        row[f"{metric}/bootstrap_low"], row[f"{metric}/bootstrap_high"] = e["bootstrap_ci95"]
        row[f"{metric}/seeds_low"], row[f"{metric}/seeds_high"] = e["ci95"] or (math.nan, math.nan)
    return row


def _distribution_columns(entry: dict[str, Any], dataset: DatasetInfo) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for metric in dataset.distribution_metrics:
        row[metric] = entry[metric]["mean"]
        if "subset_std" in entry[metric]:
            row[f"{metric}/subset_std"] = mean_of_known(entry[metric]["subset_std"])
    return row


def csv_table(summary: Summary) -> pd.DataFrame:
    """One row per variant, then the floor (and with a judge the ceiling): each FCN score's mean,
    bootstrap interval, seed interval, floor-to-ceiling share and the paper's number; FID and KID (its
    mean std over subsets beside it); SSIM and PSNR with their intervals. Only the dataset's metrics."""
    dataset = summary.dataset
    rows: dict[str, dict[str, Any]] = {}
    for name, entry in summary.variants.items():
        rows[name] = (
            _fcn_columns(name, entry, dataset)
            | _distribution_columns(entry, dataset)
            | _fidelity_columns(entry, dataset)
            | {"seeds": " ".join(map(str, entry["seeds"]))}
        )
    rows[FLOOR] = dict(summary.floor)
    if dataset.has_judge:
        rows[GROUND_TRUTH] = dict(summary.ceiling) | {
            f"paper/{m}": paper_value(GROUND_TRUTH, m) for m in dataset.fcn_metrics
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "variant"
    return table


def direction_keys(dataset: DatasetInfo) -> dict[str, str]:
    """The short key of each direction in `dvc metrics show`'s columns: the domains' initials
    (``l2p``, ``p2l``) when they differ, else the direction's name."""
    a, b = dataset.domain_a[0], dataset.domain_b[0]
    if a == b:
        return {d: d for d in dataset.directions}
    return dict(zip(dataset.directions, (f"{b}2{a}", f"{a}2{b}"), strict=True))


def dvc_rows(summary: Summary) -> list[tuple[str, dict[str, dict[str, float]]]]:
    """(row name, the numbers `dvc metrics show` prints for it) in table order: floor, variants, then
    the ceiling where there is one; nested so that its columns read ``l2p.class_iou``, ``l2p.fid``.
    Missing values (FID offline) are left out, never written as a number."""
    dataset = summary.dataset
    keys = direction_keys(dataset)

    def row(values: dict[str, float | None]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for metric in dataset.metrics:
            if values.get(metric) is not None:
                key = keys[metric_direction(metric)]
                out.setdefault(key, {})[metric_column(metric)] = round(float(values[metric]), 5)
        return {key: out[key] for key in keys.values() if key in out}

    rows = [(FLOOR, row(summary.floor))]
    rows += [(name, row({m: e[m]["mean"] for m in dataset.metrics})) for name, e in summary.variants.items()]
    if dataset.has_judge:
        rows.append((GROUND_TRUTH, row(summary.ceiling)))
    return rows
