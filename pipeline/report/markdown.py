"""`reports/ablation.md`: one section per metric family the dataset has, from one
`pipeline.report.results.Summary`.

- FCN scores (with a judge): one table per direction with the floor, the ceiling, the share of the way
  between them and the paper's numbers, then every variant against CycleGAN;
- paired fidelity (paired test sets): SSIM and PSNR with the floor, then every variant against CycleGAN;
- distribution (always): FID and KID with the floor, n/a where they could not be computed, and why.

A family the dataset lacks gets no table, only one line saying why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.judge.metrics import SCORES
from pipeline.report.dataset import metric_column, metric_direction
from pipeline.report.paper import (
    DIRECTION_TITLES,
    FLOOR,
    GROUND_TRUTH,
    INCEPTION_INPUT,
    METRIC_TITLES,
    PAPER_SOURCE,
    PAPER_TITLES,
    PROTOCOL_TITLES,
    ROW_TITLES,
    SCORE_TITLES,
    deviations,
    paper_value,
)
from pipeline.report.results import REFERENCE, Summary, mean_of_known

SIGNIFICANT = "✱"
NOT_MEASURED = "Not measured:"  # starts the one line that says why a metric family is absent
DIGITS = {"fid": 1, "kid": 4}  # decimals shown; 3 for the rest


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table; n/a for a missing or non-finite one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _interval(interval: list[float] | None, digits: int = 3) -> str:
    return "" if not interval else f" [{fmt(interval[0], digits)}, {fmt(interval[1], digits)}]"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _title(metric: str) -> str:
    """A column title: the direction's name and the metric's (``label2photo Class IOU``)."""
    column = metric_column(metric)
    return f"{metric_direction(metric)} {SCORE_TITLES.get(column) or METRIC_TITLES[column]}"


def _cell(entry: dict[str, Any], digits: int = 3) -> str:
    """Mean, then the interval a reader should use: across seeds when there are several, else the
    val-image bootstrap."""
    interval = entry.get("ci95") or entry.get("bootstrap_ci95")
    return fmt(entry.get("mean"), digits) + _interval(interval, digits)


def _row_title(name: str) -> str:
    return ROW_TITLES.get(name, name)


# --- FCN scores ---------------------------------------------------------------------------------------


def _fcn_intro(summary: Summary) -> list[str]:
    return [
        f"FCN scores over the {summary.bootstrap['images']} val images, one confusion matrix per direction "
        "(19 classes, void ignored), each as mean [95% interval]. Every score also stands between a floor "
        "(a content-free output) and a ceiling (the real images) computed by the same code: the share "
        "column says how much of that way a translation went. Paper numbers: " + PAPER_SOURCE + ".",
        "",
    ]


def _fcn_direction_table(summary: Summary, direction: str) -> list[str]:
    header = ["Loss", *(SCORE_TITLES[s] for s in SCORES), "share of floor → ceiling (pixel / class / IoU)"]
    header += [f"Paper {PAPER_TITLES[s]}" for s in SCORES]
    metrics = [f"fcn/{direction}/{s}" for s in SCORES]
    rows = [[_row_title(FLOOR), *(fmt(summary.floor[m]) for m in metrics), "0", "", "", ""]]
    for name, entry in summary.variants.items():
        shares = " / ".join(fmt(entry[m]["share_of_ceiling"], 2) for m in metrics)
        paper = [fmt(paper_value(name, m), 2) for m in metrics]
        rows.append([_row_title(name), *(_cell(entry[m]) for m in metrics), shares, *paper])
    ceiling = [fmt(summary.ceiling[m]) for m in metrics]
    rows.append(
        [_row_title(GROUND_TRUTH), *ceiling, "1", *(fmt(paper_value(GROUND_TRUTH, m), 2) for m in metrics)]
    )
    title = DIRECTION_TITLES.get(direction, summary.dataset.arrow(direction))
    return [f"## {title}", "", *_md_table(header, rows), ""]


def _pairwise_table(summary: Summary, metrics: Sequence[str], heading: str) -> list[str]:
    """Every variant minus `REFERENCE` in `metrics`, with the paired bootstrap interval (and the seeds')."""
    if not summary.pairwise or not metrics:
        return []
    header = [f"Variant − {_row_title(REFERENCE)}", *(_title(m) for m in metrics)]
    rows = []
    for name, diffs in summary.pairwise.items():
        cells = [_row_title(name)]
        for metric in metrics:
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
    return [heading, "", *_md_table(header, rows), "", note, ""]


def _fcn_section(summary: Summary) -> list[str]:
    lines = _fcn_intro(summary)
    for direction in summary.dataset.directions:
        lines += _fcn_direction_table(summary, direction)
    heading = f"## The paper's question: each variant against {_row_title(REFERENCE)} (mean difference)"
    return lines + _pairwise_table(summary, summary.dataset.fcn_metrics, heading)


# --- paired fidelity: SSIM and PSNR ---------------------------------------------------------------------


def _fidelity_section(summary: Summary) -> list[str]:
    metrics = summary.dataset.fidelity_metrics
    rows = [[_row_title(FLOOR), *(fmt(summary.floor[m]) for m in metrics)]]
    rows += [[_row_title(n), *(_cell(e[m]) for m in metrics)] for n, e in summary.variants.items()]
    text = (
        "Each translation scored against its true counterpart (scikit-image; PSNR capped at 100 dB) and "
        f"averaged over the {summary.bootstrap['images']} val images, shown as mean [95% interval]; higher "
        "is better. The floor is the content-free output scored the same way. There is no ceiling: a real "
        "image against itself is trivially perfect (SSIM 1, PSNR unbounded). The paper publishes no SSIM "
        "or PSNR."
    )
    heading = f"### SSIM and PSNR: each variant against {_row_title(REFERENCE)} (mean difference)"
    return [
        "## Paired fidelity: SSIM and PSNR",
        "",
        text,
        "",
        *_md_table(["Loss", *(_title(m) for m in metrics)], rows),
        "",
        *_pairwise_table(summary, metrics, heading),
    ]


# --- distribution: FID and KID ----------------------------------------------------------------------------


def _distribution_cell(entry: dict[str, Any], metric: str) -> str:
    """FID: mean [seed interval]; KID: mean ± its std over subsets [seed interval]; n/a where missing."""
    digits = DIGITS[metric_column(metric)]
    if entry["mean"] is None:
        return "n/a"
    spread = ""
    if "subset_std" in entry and mean_of_known(entry["subset_std"]) is not None:
        spread = f" ± {fmt(mean_of_known(entry['subset_std']), digits)}"
    return fmt(entry["mean"], digits) + spread + _interval(entry.get("ci95"), digits)


def _distribution_section(summary: Summary) -> list[str]:
    metrics = summary.dataset.distribution_metrics
    floor = [fmt(summary.floor[m], DIGITS[metric_column(m)]) for m in metrics]
    rows = [[_row_title(FLOOR), *floor]]
    rows += [
        [_row_title(n), *(_distribution_cell(e[m], m) for m in metrics)] for n, e in summary.variants.items()
    ]
    text = (
        "FID and KID between the translations and the real val images of the target domain, from "
        "pytorch-fid's Inception (pool3, 2048-d features); lower is better. KID is the unbiased estimate, "
        "shown as mean ± its std over random subsets. Both are statistics of the whole image set, so they "
        "have no interval over images, only across seeds (in brackets, with two or more). The floor is the "
        "content-free output scored the same way. The paper publishes no FID or KID. " + INCEPTION_INPUT
    )
    reasons = [f"- FID and KID n/a ({who}): {reason}" for reason, who in summary.fid_unavailable.items()]
    return [
        "## Distribution: FID and KID",
        "",
        text,
        "",
        *_md_table(["Loss", *(_title(m) for m in metrics)], rows),
        "",
        *([*reasons, ""] if reasons else []),
    ]


# --- the whole document -----------------------------------------------------------------------------------


def _overview(summary: Summary) -> list[str]:
    dataset = summary.dataset
    first, second = dataset.directions
    lines = [
        f"Directions: `{first}` (F: {dataset.arrow(first)}) and `{second}` (G: {dataset.arrow(second)}).",
        "",
    ]
    absent = [("FCN scores", dataset.why_no_judge()), ("SSIM and PSNR", dataset.why_no_fidelity())]
    reasons = [f"- {NOT_MEASURED} {what}, because {why}." for what, why in absent if why]
    return [*lines, *reasons, ""] if reasons else lines


def _seeds_line(summary: Summary) -> str:
    seeds = f"- Seeds: {', '.join(map(str, summary.seeds))}. "
    if len(summary.seeds) >= 2:
        return seeds + "Intervals in the tables are 95% t-intervals across seeds (training variance)."
    if summary.dataset.per_image_metrics:
        which = "The intervals in the tables are the val-image bootstrap (evaluation variance) only"
    else:
        which = "FID and KID, statistics of the whole image set, have no interval with one seed"
    return (
        seeds
        + "One seed: this is one draw of a chaotic training process, not the answer. "
        + which
        + "; two "
        "runs of the same configuration on two CPUs can differ by more (add seeds: "
        "`dvc exp run -S 'seeds=[0,1,2]'`)."
    )


def _sources(summary: Summary, prov: dict[str, Any]) -> list[str]:
    lines = ["## Where these numbers came from, and how far they can move", ""]
    protocol = prov["protocol"]
    titles = PROTOCOL_TITLES if summary.dataset.is_cityscapes else {}
    title = titles.get(protocol, protocol) if isinstance(protocol, str) else protocol
    lines.append(f"- Split protocol: {title}.")
    for train in prov["training"]:
        shown = ", ".join(f"{k} {v}" for k, v in train.items())
        lines.append(f"- Training: {shown}; {', '.join(map(str, prov['steps']))} optimiser steps per run.")
    lines.append(_seeds_line(summary))
    if summary.dataset.per_image_metrics:
        b = summary.bootstrap
        lines.append(
            f"- Bootstrap: {b['resamples']} resamples of the {b['images']} val images (seed {b['seed']})."
        )
    for machine in prov["machines"]:
        lines.append("- Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if v) + ".")
    return [*lines, ""]


def _heading(summary: Summary) -> str:
    dataset = summary.dataset
    if dataset.is_cityscapes:
        return "# CycleGAN loss ablation on Cityscapes"
    return f"# CycleGAN loss ablation: {dataset.domain_a} ↔ {dataset.domain_b}"


def render(summary: Summary, prov: dict[str, Any], plots: list[Path], out_dir: Path) -> str:
    """The whole markdown report; `plots` are linked relative to `out_dir`."""
    lines = [_heading(summary), "", *_overview(summary)]
    if summary.dataset.has_judge:
        lines += _fcn_section(summary)
    if summary.dataset.fidelity_metrics:
        lines += _fidelity_section(summary)
    lines += _distribution_section(summary)
    lines += _sources(summary, prov)
    changes = deviations(summary.dataset.has_judge)
    lines += ["## How this differs from the paper's protocol", "", *(f"- {item}" for item in changes), ""]
    lines += ["## Plots", "", *(f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in plots)]
    return "\n".join(lines) + "\n"
