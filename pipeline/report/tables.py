"""The report's text: the ablation tables (markdown, CSV, JSON) and the `dvc metrics` rows, from one
`pipeline.report.results.Summary`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.directions import DIRECTIONS
from pipeline.judge.metrics import SCORES
from pipeline.report.paper import (
    DEVIATIONS,
    DIRECTION_TITLES,
    FLOOR,
    GROUND_TRUTH,
    PAPER_SCORES,
    PAPER_SOURCE,
    PAPER_TITLES,
    PROTOCOL_TITLES,
    ROW_TITLES,
    SCORE_TITLES,
)
from pipeline.report.results import FCN_METRICS, REFERENCE, Summary

SIGNIFICANT = "✱"


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table; n/a for a missing or non-finite one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _interval(interval: list[float] | None, digits: int = 3) -> str:
    return "" if not interval else f" [{fmt(interval[0], digits)}, {fmt(interval[1], digits)}]"


def _paper(name: str, metric: str) -> float | None:
    _, direction, score = metric.split("/")
    published = PAPER_SCORES[direction].get(name)
    return published[SCORES.index(score)] if published else None


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def provenance(summary: Summary, runs_metrics: dict[str, list[dict]]) -> dict[str, Any]:
    """Where the numbers came from: protocol, training settings and the machines, as the runs recorded."""
    records = [m for ms in runs_metrics.values() for m in ms]
    protocols = sorted({str(m.get("protocol")) for m in records})
    machines = {tuple(sorted((m.get("machine") or {}).items())) for m in records}
    trains = {tuple(sorted((m.get("train") or {}).items())) for m in records}
    return {
        "protocol": protocols[0] if len(protocols) == 1 else protocols,
        "machines": [dict(machine) for machine in sorted(machines)],
        "training": [dict(train) for train in sorted(trains)],
        "steps": sorted({m.get("steps") for m in records if m.get("steps") is not None}),
        "seeds": summary.seeds,
        "bootstrap": summary.bootstrap,
    }


def _cell(entry: dict[str, Any]) -> str:
    """Mean, then the interval a reader should use: across seeds when there are several, else the
    val-image bootstrap."""
    interval = entry.get("ci95") or entry.get("bootstrap_ci95")
    return fmt(entry.get("mean")) + _interval(interval)


def _direction_table(summary: Summary, direction: str) -> list[str]:
    header = ["Loss", *(SCORE_TITLES[s] for s in SCORES), "share of floor → ceiling (pixel / class / IoU)"]
    header += ["FID", *(f"Paper {PAPER_TITLES[s]}" for s in SCORES)]
    metrics = [f"fcn/{direction}/{s}" for s in SCORES]
    rows = [[ROW_TITLES[FLOOR], *(fmt(summary.floor[m]) for m in metrics), "0", "—", "", "", ""]]
    for name, entry in summary.variants.items():
        shares = " / ".join(fmt(entry[m]["share_of_ceiling"], 2) for m in metrics)
        fid = entry[f"fid/{direction}"]
        rows.append(
            [
                ROW_TITLES.get(name, name),
                *(_cell(entry[m]) for m in metrics),
                shares,
                fmt(fid.get("mean"), 1),
                *(fmt(_paper(name, m), 2) for m in metrics),
            ]
        )
    ceiling = [fmt(summary.ceiling[m]) for m in metrics]
    rows.append(
        [ROW_TITLES[GROUND_TRUTH], *ceiling, "1", "—", *(fmt(_paper(GROUND_TRUTH, m), 2) for m in metrics)]
    )
    return [f"## {DIRECTION_TITLES[direction]}", "", *_md_table(header, rows), ""]


def _pairwise_table(summary: Summary) -> list[str]:
    if not summary.pairwise:
        return []
    header = ["Variant − CycleGAN", *(f"{d} {SCORE_TITLES[s]}" for d in DIRECTIONS for s in SCORES)]
    rows = []
    for name, diffs in summary.pairwise.items():
        cells = [ROW_TITLES.get(name, name)]
        for metric in FCN_METRICS:
            d = diffs[metric]
            mark = f" {SIGNIFICANT}" if d["excludes_zero"] else ""
            seeds = f" seeds{_interval(d['seeds_ci95'])}" if d["seeds_ci95"] else ""
            cells.append(f"{fmt(d['difference'], 3)}{_interval(d['bootstrap_ci95'])}{mark}{seeds}")
        rows.append(cells)
    note = (
        f"{SIGNIFICANT}: the paired 95% bootstrap interval over val images excludes 0 (each resample draws "
        "the same images for both variants). It covers evaluation variance only"
        + (
            "; with one seed, training variance (which the seed intervals would show) is not in it."
            if len(summary.seeds) < 2
            else "; `seeds [..]` is the 95% Welch interval across seeds (training variance)."
        )
    )
    return [
        f"## The paper's question: each variant against {REFERENCE} (mean difference)",
        "",
        *_md_table(header, rows),
        "",
        note,
        "",
    ]


def _sources(summary: Summary, prov: dict[str, Any], fid_reasons: dict[str, str]) -> list[str]:
    lines = ["## Where these numbers came from, and how far they can move", ""]
    protocol = prov["protocol"]
    title = PROTOCOL_TITLES.get(protocol, protocol) if isinstance(protocol, str) else protocol
    lines.append(f"- Split protocol: {title}.")
    for train in prov["training"]:
        shown = ", ".join(f"{k} {v}" for k, v in train.items())
        lines.append(f"- Training: {shown}; {', '.join(map(str, prov['steps']))} optimiser steps per run.")
    seeds = summary.seeds
    lines.append(
        f"- Seeds: {', '.join(map(str, seeds))}. "
        + (
            "Intervals in the tables are 95% t-intervals across seeds (training variance)."
            if len(seeds) >= 2
            else "One seed: this is one draw of a chaotic training process, not the answer. The intervals in "
            "the tables are the val-image bootstrap (evaluation variance) only; two runs of the same "
            "configuration on two CPUs can differ by more (add seeds: `dvc exp run -S 'seeds=[0,1,2]'`)."
        )
    )
    b = summary.bootstrap
    lines.append(
        f"- Bootstrap: {b['resamples']} resamples of the {b['images']} val images (seed {b['seed']})."
    )
    for machine in prov["machines"]:
        lines.append("- Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if v) + ".")
    for reason, who in fid_reasons.items():
        lines.append(f"- FID n/a ({who}): {reason}")
    return [*lines, ""]


def markdown(
    summary: Summary, prov: dict[str, Any], fid_reasons: dict[str, str], plots: list[Path], out_dir: Path
) -> str:
    lines = [
        "# CycleGAN loss ablation on Cityscapes",
        "",
        f"FCN scores over the {summary.bootstrap['images']} val images, one confusion matrix per direction "
        "(19 classes, void ignored), each as mean [95% interval]. Every score also stands between a floor "
        "(a content-free output) and a ceiling (the real images) computed by the same code: the share "
        "column says how much of that way a translation went. Paper numbers: " + PAPER_SOURCE + ".",
        "",
    ]
    for direction in DIRECTIONS:
        lines += _direction_table(summary, direction)
    lines += _pairwise_table(summary)
    lines += _sources(summary, prov, fid_reasons)
    lines += ["## How this differs from the paper's protocol", "", *(f"- {item}" for item in DEVIATIONS), ""]
    lines += ["## Plots", "", *(f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in plots)]
    return "\n".join(lines) + "\n"


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def json_document(summary: Summary, prov: dict[str, Any], fid_reasons: dict[str, str]) -> dict[str, Any]:
    """`reports/ablation.json`: per variant its `seeds` and per metric `values`, `mean`, `std`, `ci95`
    (across seeds), `bootstrap_ci95` (val images) and the floor-to-ceiling share; the pairwise
    differences; floor, ceiling, the paper's numbers and where it all came from."""
    paper = {
        name: {
            f"fcn/{d}/{s}": PAPER_SCORES[d][name][i]
            for d in DIRECTIONS
            if name in PAPER_SCORES[d]
            for i, s in enumerate(SCORES)
        }
        for name in {n for d in DIRECTIONS for n in PAPER_SCORES[d]}
    }
    return _rounded(
        {
            "source": PAPER_SOURCE,
            "variants": summary.variants,
            "pairwise_vs": REFERENCE,
            "pairwise": summary.pairwise,
            "floor": summary.floor,
            "ceiling": summary.ceiling,
            "paper": paper,
            "provenance": prov,
            "fid_unavailable": fid_reasons,
            "deviations": list(DEVIATIONS),
        }
    )


def csv_table(summary: Summary) -> pd.DataFrame:
    """One row per variant, then floor and ceiling: each FCN metric's mean, bootstrap interval, seed
    interval and floor-to-ceiling share; FID; the paper's numbers."""
    rows: dict[str, dict[str, Any]] = {}
    for name, entry in summary.variants.items():
        row: dict[str, Any] = {}
        for metric in FCN_METRICS:
            e = entry[metric]
            row[metric] = e["mean"]
            row[f"{metric}/bootstrap_low"], row[f"{metric}/bootstrap_high"] = e["bootstrap_ci95"]
            row[f"{metric}/seeds_low"], row[f"{metric}/seeds_high"] = e["ci95"] or (math.nan, math.nan)
            row[f"{metric}/share"] = e["share_of_ceiling"]
            row[f"paper/{metric}"] = _paper(name, metric)
        for direction in DIRECTIONS:
            row[f"fid/{direction}"] = entry[f"fid/{direction}"].get("mean")
        row["seeds"] = " ".join(map(str, entry["seeds"]))
        rows[name] = row
    rows[FLOOR] = {m: summary.floor[m] for m in FCN_METRICS}
    rows[GROUND_TRUTH] = {m: summary.ceiling[m] for m in FCN_METRICS} | {
        f"paper/{m}": _paper(GROUND_TRUTH, m) for m in FCN_METRICS
    }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "variant"
    return table


def dvc_rows(summary: Summary) -> list[tuple[str, dict[str, dict[str, float]]]]:
    """(row name, the numbers `dvc metrics show` prints for it) in table order: floor, variants, ceiling;
    nested so that its columns read ``l2p.class_iou``."""
    short = {"label2photo": "l2p", "photo2label": "p2l"}

    def row(values: dict[str, float | None]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for direction in DIRECTIONS:
            kept = {
                s: round(float(values[f"fcn/{direction}/{s}"]), 5)
                for s in SCORES
                if values.get(f"fcn/{direction}/{s}") is not None
            }
            if kept:
                out[short[direction]] = kept
        return out

    rows = [(FLOOR, row(summary.floor))]
    rows += [(name, row({m: e[m]["mean"] for m in FCN_METRICS})) for name, e in summary.variants.items()]
    return [*rows, (GROUND_TRUTH, row(summary.ceiling))]
