"""The report's figures: scores beside the paper's, per-class IoU, loss curves, the sample sheet."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.directions import DIRECTIONS
from pipeline.core.errors import PipelineError
from pipeline.core.images import read_rgb
from pipeline.data.labels import CLASS_NAMES
from pipeline.data.manifest import image_id_key, read_manifest
from pipeline.report.paper import GROUND_TRUTH, ROW_TITLES, SCORE_TITLES, SHORT_TITLES
from pipeline.report.tables import per_class
from pipeline.scoring.metrics import SCORES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a build machine
    import matplotlib.pyplot as plt

    return plt


def plot_scores(table: pd.DataFrame, path: Path) -> None:
    """Bars across variants for each metric, the paper's value beside ours, the ceiling as a line."""
    plt = _pyplot()
    variants = [name for name in table.index if name != GROUND_TRUTH]
    x = np.arange(len(variants))
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5), squeeze=False)
    for r, direction in enumerate(DIRECTIONS):
        for c, metric in enumerate([*SCORES, "fid"]):
            ax = axes[r][c]
            column = f"fid/{direction}" if metric == "fid" else f"fcn/{direction}/{metric}"
            ours = table.loc[variants, column].to_numpy(dtype=float)
            if metric == "fid":
                ax.bar(x, np.nan_to_num(ours), 0.6, color="tab:blue")
                ax.set_title(f"FID {direction} (lower is better)")
                for i, value in enumerate(ours):
                    if math.isnan(value):
                        ax.text(i, 0, "n/a", ha="center", va="bottom")
            else:
                paper = table.loc[variants, f"paper/{column}"].to_numpy(dtype=float)
                ax.bar(x - 0.2, np.nan_to_num(ours), 0.4, label="ours", color="tab:blue")
                ax.bar(x + 0.2, np.nan_to_num(paper), 0.4, label="paper", color="tab:gray")
                ceiling = (
                    table[column].get(GROUND_TRUTH, math.nan) if direction == "label2photo" else math.nan
                )
                if not math.isnan(ceiling):
                    ax.axhline(ceiling, color="tab:red", ls="--", lw=1, label="our judge on real photos")
                ax.set_ylim(0, 1)
                ax.set_title(f"{SCORE_TITLES[metric]} {direction}")
                if r == 0 and c == 0:
                    ax.legend(fontsize=8)
            ax.set_xticks(x, [SHORT_TITLES.get(v, v) for v in variants], rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_per_class_iou(variant_metrics: dict[str, dict], judge_metrics: dict | None, path: Path) -> None:
    """Heat map of per-class IoU: variants x 19 classes, one panel per direction (grey = absent)."""
    plt = _pyplot()
    n_rows = len(variant_metrics) + (judge_metrics is not None)
    fig, axes = plt.subplots(2, 1, figsize=(12, 3.2 + 0.8 * n_rows), squeeze=False, layout="constrained")
    image = None
    for ax, direction in zip(axes[:, 0], DIRECTIONS, strict=True):
        names = list(variant_metrics)
        grid = [per_class(m.get("per_class_iou", {}).get(direction)) for m in variant_metrics.values()]
        if direction == "label2photo" and judge_metrics is not None:
            names.append(GROUND_TRUTH)
            grid.append(per_class(judge_metrics.get("per_class_iou")))
        data = np.ma.masked_invalid(np.array(grid, dtype=float))
        cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
        image = ax.imshow(data, vmin=0, vmax=1, cmap=cmap, aspect="auto")
        ax.set_yticks(range(len(names)), [SHORT_TITLES.get(n, n) for n in names], fontsize=8)
        ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"per-class IoU, {direction}")
        for (i, j), value in np.ndenumerate(data.filled(np.nan)):
            if not math.isnan(value):
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if value < 0.5 else "black",
                )
    fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.8, label="IoU")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _read_loss_csv(train_plots_dir: Path, variant: str) -> pd.DataFrame | None:
    candidates = [train_plots_dir / f"{variant}.csv", *sorted((train_plots_dir / variant).glob("*.csv"))]
    for candidate in candidates:
        if candidate.is_file():
            try:
                return pd.read_csv(candidate)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
                warnings.warn(f"skipping unreadable training log {candidate}: {exc}", stacklevel=2)
    return None


def plot_losses(train_plots_dir: Path | None, variants: list[str], path: Path) -> bool:
    """Loss curves: one panel per loss column, one line per variant. False when there is nothing to draw."""
    if train_plots_dir is None or not train_plots_dir.is_dir():
        return False
    logs = {v: df for v in variants if (df := _read_loss_csv(train_plots_dir, v)) is not None}
    columns = sorted({c for df in logs.values() for c in df.columns if c.startswith("loss")})
    if not columns:
        return False
    plt = _pyplot()
    n_cols = min(3, len(columns))
    n_rows = math.ceil(len(columns) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(5.5 * n_cols, 3.5 * n_rows), squeeze=False)
    for ax, column in zip(axes.flat, columns, strict=False):  # spare panels stay empty
        for variant, df in logs.items():
            if column in df.columns:
                x_name = "step" if "step" in df.columns else "epoch" if "epoch" in df.columns else None
                x = df[x_name] if x_name else np.arange(len(df))
                ax.plot(x, df[column], label=ROW_TITLES.get(variant, variant), lw=1)
        ax.set_title(column)
        ax.set_xlabel(x_name or "row")
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def sample_ids(split_dir: Path, chosen: list[str], n_samples: int) -> list[str]:
    """The val ids on the sample sheet: `chosen`, else the first `n_samples` in id order."""
    if chosen:
        return list(chosen)
    try:
        ids = read_manifest(split_dir, subset="val", kind="photo")["image_id"].tolist()
    except PipelineError:
        ids = [p.stem for p in (split_dir / "val" / "photo").glob("*.png")]
    return sorted(ids, key=image_id_key)[:n_samples]


def _load_rgb(path: Path) -> np.ndarray | None:
    """The image, or None when it is missing or unreadable (the sheet shows a gap)."""
    try:
        return read_rgb(path)
    except PipelineError:
        return None


def plot_samples(
    split_dir: Path, translations_root: Path | None, variants: list[str], ids: list[str], path: Path
) -> bool:
    """The same val images through every variant: photo x, label map y, then G(x) and F(y) per variant."""
    if not ids:
        return False
    plt = _pyplot()
    columns: list[tuple[str, Any]] = [
        ("photo x", lambda i: split_dir / "val" / "photo" / f"{i}.png"),
        ("label map y", lambda i: split_dir / "val" / "label" / f"{i}.png"),
    ]
    for variant in variants:
        for direction, what in (("photo2label", "G(x)"), ("label2photo", "F(y)")):
            folder = (translations_root or Path("/nonexistent")) / variant / direction
            columns.append(
                (f"{ROW_TITLES.get(variant, variant)}\n{what}", lambda i, f=folder: f / f"{i}.png")
            )
    fig, axes = plt.subplots(
        len(ids), len(columns), figsize=(1.5 * len(columns), 1.6 * len(ids) + 0.6), squeeze=False
    )
    for r, image_id in enumerate(ids):
        for c, (title, where) in enumerate(columns):
            ax = axes[r][c]
            pixels = _load_rgb(where(image_id))
            if pixels is None:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes, fontsize=7)
            else:
                ax.imshow(pixels)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
            if c == 0:
                ax.set_ylabel(f"val {image_id}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True
