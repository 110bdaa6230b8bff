"""The ablation table: reading the variants' metric files, the table, its markdown, JSON and DVC rows."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.directions import DIRECTIONS
from pipeline.core.errors import PipelineError
from pipeline.data.labels import CLASS_NAMES
from pipeline.report.paper import (
    DIRECTION_TITLES,
    GROUND_TRUTH,
    PAPER_SCORES,
    PAPER_SOURCE,
    PAPER_TITLES,
    ROW_TITLES,
    SCORE_TITLES,
    variant_order,
)
from pipeline.scoring.metrics import SCORES


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


def load_variant_metrics(
    metrics: str | os.PathLike | Sequence[str | os.PathLike], exclude: Sequence[str | os.PathLike] = ()
) -> dict[str, dict]:
    """Read per-variant metric files (a folder of them, or a list), keyed by variant, paper order.

    In a folder, JSON files without a ``variant`` key (the judge's own scores sit beside the
    variants' in ``metrics/``) and the paths in `exclude` are skipped.
    """
    skip = {Path(p).resolve() for p in exclude}
    if isinstance(metrics, (str, os.PathLike)) and Path(metrics).is_dir():
        files = [p for p in sorted(Path(metrics).glob("*.json")) if p.resolve() not in skip]
        from_folder = True
    elif isinstance(metrics, (str, os.PathLike)):
        files, from_folder = [Path(metrics)], False
    else:
        files, from_folder = [Path(p) for p in metrics], False
    by_variant: dict[str, dict] = {}
    for path in files:
        data = read_json(path)
        variant = data.get("variant")
        if variant is None:
            if from_folder:
                continue
            raise PipelineError(f"{path} has no `variant` key: is it an evaluate stage's metrics file?")
        if variant in by_variant:
            raise PipelineError(f"two metric files for variant {variant!r} (one is {path}); keep one")
        by_variant[variant] = data
    if not by_variant:
        raise PipelineError(f"no variant metrics found in {metrics}: run the evaluate stages first")
    return {name: by_variant[name] for name in sorted(by_variant, key=variant_order)}


def number(value: Any) -> float:
    """A metric value as float, NaN for missing / null."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def per_class(values: Any) -> list[float]:
    """Per-class IoU as 19 floats (NaN for absent) from a ``{class: iou}`` mapping or a list."""
    if isinstance(values, dict):
        return [number(values.get(name)) for name in CLASS_NAMES]
    if isinstance(values, list) and len(values) == len(CLASS_NAMES):
        return [number(v) for v in values]
    return [math.nan] * len(CLASS_NAMES)


def ablation_table(variant_metrics: dict[str, dict], judge_metrics: dict | None) -> pd.DataFrame:
    """One row per variant (paper order) plus the judge's ceiling row; index = row name.

    Columns: our FCN scores per direction and FID (the metric names of ``metrics/<variant>.json``),
    the paper's scores as ``paper/<metric>``, our labels->photo scores over our judge's as
    ``vs_ceiling/<metric>`` and the paper's over its FCN-8s's as ``paper_vs_ceiling/<metric>``, and
    ``fid_unavailable``.
    """
    ceiling = {s: number((judge_metrics or {}).get(f"fcn/real/{s}")) for s in SCORES}
    rows: dict[str, dict[str, Any]] = {}
    for variant, metrics in variant_metrics.items():
        row: dict[str, Any] = {}
        for direction in DIRECTIONS:
            for score in SCORES:
                row[f"fcn/{direction}/{score}"] = number(metrics.get(f"fcn/{direction}/{score}"))
        for direction in DIRECTIONS:
            row[f"fid/{direction}"] = number(metrics.get(f"fid/{direction}"))
        rows[variant] = row
    if judge_metrics is not None:
        rows[GROUND_TRUTH] = {f"fcn/label2photo/{s}": ceiling[s] for s in SCORES}
    table = pd.DataFrame.from_dict(rows, orient="index")
    for direction in DIRECTIONS:
        for i, score in enumerate(SCORES):
            published = PAPER_SCORES[direction]
            table[f"paper/fcn/{direction}/{score}"] = [
                published[name][i] if name in published else math.nan for name in table.index
            ]
    paper_ceiling = PAPER_SCORES["label2photo"][GROUND_TRUTH]
    for i, score in enumerate(SCORES):
        ours = table[f"fcn/label2photo/{score}"]
        table[f"vs_ceiling/fcn/label2photo/{score}"] = (
            ours / ceiling[score] if ceiling[score] > 0 else math.nan
        )
        # The paper's scores over the paper's own ceiling: the number ours ÷ ceiling is comparable with.
        table[f"paper_vs_ceiling/fcn/label2photo/{score}"] = (
            table[f"paper/fcn/label2photo/{score}"] / paper_ceiling[i]
        )
    table["fid_unavailable"] = [
        variant_metrics.get(name, {}).get("fid_unavailable") or "" for name in table.index
    ]
    table.index.name = "variant"
    return table


def _fmt(value: Any, digits: int = 3) -> str:
    x = number(value)
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def markdown(table: pd.DataFrame, variant_metrics: dict[str, dict], plots: list[Path], out_dir: Path) -> str:
    n_images = sorted({m.get("n_images") for m in variant_metrics.values() if m.get("n_images") is not None})
    lines = [
        "# CycleGAN loss ablation on Cityscapes",
        "",
        f"FCN scores over {', '.join(map(str, n_images)) or 'the'} val images, one confusion matrix per "
        "direction (19 classes, void ignored). Paper numbers: " + PAPER_SOURCE + ". Our judge is an "
        "FCN trained by this pipeline, not the paper's FCN-8s, so labels → photo scores are also given "
        "divided by the judge's own score on real photos (its ceiling, the ground-truth row).",
        "",
    ]
    for direction in DIRECTIONS:
        header = ["Loss", *(SCORE_TITLES[s] for s in SCORES), "FID"]
        header += [f"Paper {PAPER_TITLES[s]}" for s in SCORES]
        with_ceiling = direction == "label2photo" and GROUND_TRUTH in table.index
        if with_ceiling:
            header += [f"{PAPER_TITLES[s]} ÷ ceiling (ours / paper)" for s in SCORES]
        rows = []
        for name, row in table.iterrows():
            if direction == "photo2label" and name == GROUND_TRUTH:
                continue  # no judge involved: real label maps decode to their own classes
            cells = [ROW_TITLES.get(name, name), *(_fmt(row[f"fcn/{direction}/{s}"]) for s in SCORES)]
            cells.append("—" if name == GROUND_TRUTH else _fmt(row[f"fid/{direction}"], 1))
            cells += [_fmt(row[f"paper/fcn/{direction}/{s}"], 2) for s in SCORES]
            if with_ceiling:
                for s in SCORES:
                    ours, paper = (
                        row[f"vs_ceiling/fcn/{direction}/{s}"],
                        row[f"paper_vs_ceiling/fcn/{direction}/{s}"],
                    )
                    cells.append(f"{_fmt(ours, 2)} / {_fmt(paper, 2)}")
            rows.append(cells)
        lines += [f"## {DIRECTION_TITLES[direction]}", "", *_md_table(header, rows), ""]
    reasons = {name: r for name, r in table["fid_unavailable"].items() if r}
    if reasons:
        # Usually one reason for every row (no Inception weights): say it once.
        by_reason: dict[str, list[str]] = {}
        for name, reason in reasons.items():
            by_reason.setdefault(reason, []).append(ROW_TITLES.get(name, name))
        for reason, rows in by_reason.items():
            every = len(rows) == sum(1 for name in table.index if name != GROUND_TRUTH)
            who = "every variant" if every else ", ".join(rows)
            lines += [f"FID n/a ({who}): {reason}", ""]
    lines += ["## Plots", ""]
    lines += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in plots]
    return "\n".join(lines) + "\n"


def _json_ready(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    return value


def row_records(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return {
        name: {
            column: _json_ready(value)
            for column, value in row.items()
            if column != "fid_unavailable" or value
        }
        for name, row in table.iterrows()
    }


def dvc_row(row: pd.Series) -> dict[str, dict[str, float]]:
    """The few numbers `dvc metrics show` prints per row, nested so its columns read ``l2p.class_iou``."""
    short = {"label2photo": "l2p", "photo2label": "p2l"}
    out: dict[str, dict[str, float]] = {}
    for direction in DIRECTIONS:
        values = {s: row[f"fcn/{direction}/{s}"] for s in SCORES} | {"fid": row[f"fid/{direction}"]}
        # DVC shows a missing key as "-": leave NaN out rather than write null.
        kept = {k: round(float(v), 5) for k, v in values.items() if not math.isnan(v)}
        if kept:
            out[short[direction]] = kept
    return out
