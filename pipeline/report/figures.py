"""The report's figures: one per metric family the dataset has (FCN scores beside the paper's and their
per-class IoU, SSIM and PSNR, FID and KID), the loss curves, the sample sheet."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import PipelineError
from pipeline.core.images import read_rgb
from pipeline.data.labels import CLASS_NAMES
from pipeline.data.manifest import image_id_key, read_manifest
from pipeline.judge.metrics import SCORES
from pipeline.report.curves import loss_terms
from pipeline.report.dataset import DISTRIBUTION, FIDELITY, DatasetInfo
from pipeline.report.paper import (
    GROUND_TRUTH,
    METRIC_TITLES,
    ROW_TITLES,
    SCORE_TITLES,
    SHORT_TITLES,
    paper_value,
)
from pipeline.report.results import Summary


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a build machine
    import matplotlib.pyplot as plt

    return plt


def _bars(ax, variants: list[str], values: list[float | None], errors=None, **style) -> None:
    """One bar per variant, "n/a" where a value is missing (never drawn as a number)."""
    x = np.arange(len(variants))
    ax.bar(x, [0.0 if v is None else v for v in values], 0.6, yerr=errors, capsize=3, **style)
    for i, value in enumerate(values):
        if value is None:
            ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [SHORT_TITLES.get(v, v) for v in variants], rotation=30, ha="right", fontsize=8)


def _floor_line(ax, value: float | None) -> None:
    if value is not None:
        ax.axhline(value, color="tab:red", ls=":", lw=1, label="floor: content-free")


def _error_bars(entries: list[dict[str, Any]]) -> np.ndarray:
    """Distances from each mean to its interval (across seeds, else the val-image bootstrap)."""
    means = np.array([e["mean"] for e in entries])
    intervals = np.array([e.get("ci95") or e["bootstrap_ci95"] for e in entries])
    return np.abs(intervals.T - means)


def _grid(plt, summary: Summary, n_columns: int):
    """One row of panels per direction."""
    rows = len(summary.dataset.directions)
    return plt.subplots(rows, n_columns, figsize=(4.5 * n_columns, 3.75 * rows), squeeze=False)


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_fcn_scores(summary: Summary, path: Path) -> None:
    """Per direction and FCN score: bars across variants with their 95% interval, the paper's value
    beside, the floor and the ceiling as lines."""
    plt = _pyplot()
    variants = list(summary.variants)
    x = np.arange(len(variants))
    fig, axes = _grid(plt, summary, len(SCORES))
    for r, direction in enumerate(summary.dataset.directions):
        for c, score in enumerate(SCORES):
            ax, key = axes[r][c], f"fcn/{direction}/{score}"
            entries = [summary.variants[v][key] for v in variants]
            means = [e["mean"] for e in entries]
            ax.bar(x - 0.2, means, 0.4, yerr=_error_bars(entries), capsize=3, label="ours (95% interval)")
            paper = [paper_value(v, key) for v in variants]
            ax.bar(x + 0.2, [v or 0.0 for v in paper], 0.4, label="paper", color="tab:gray")
            ax.axhline(summary.ceiling[key], color="tab:green", ls="--", lw=1, label="ceiling: real images")
            _floor_line(ax, summary.floor[key])
            ax.set_ylim(0, 1)
            ax.set_title(f"{SCORE_TITLES[score]} {direction}")
            ax.set_xticks(x, [SHORT_TITLES.get(v, v) for v in variants], rotation=30, ha="right", fontsize=8)
            if r == 0 and c == 0:
                ax.legend(fontsize=7)
    _save(plt, fig, path)


def plot_fidelity(summary: Summary, path: Path) -> None:
    """Per direction, SSIM and PSNR across variants with their 95% interval and the floor."""
    plt = _pyplot()
    variants = list(summary.variants)
    fig, axes = _grid(plt, summary, len(FIDELITY))
    for r, direction in enumerate(summary.dataset.directions):
        for c, name in enumerate(FIDELITY):
            ax, key = axes[r][c], f"{name}/{direction}"
            entries = [summary.variants[v][key] for v in variants]
            _bars(
                ax, variants, [e["mean"] for e in entries], _error_bars(entries), label="ours (95% interval)"
            )
            _floor_line(ax, summary.floor[key])
            ax.set_title(f"{METRIC_TITLES[name]} {direction} (higher is better)")
            if r == 0 and c == 0:
                ax.legend(fontsize=7)
    _save(plt, fig, path)


def plot_distribution(summary: Summary, path: Path) -> None:
    """Per direction, FID and KID across variants (n/a where missing) and the floor."""
    plt = _pyplot()
    variants = list(summary.variants)
    fig, axes = _grid(plt, summary, len(DISTRIBUTION))
    for r, direction in enumerate(summary.dataset.directions):
        for c, name in enumerate(DISTRIBUTION):
            ax, key = axes[r][c], f"{name}/{direction}"
            _bars(ax, variants, [summary.variants[v][key]["mean"] for v in variants], color="tab:blue")
            _floor_line(ax, summary.floor[key])
            ax.set_title(f"{METRIC_TITLES[name]} {direction} (lower is better)")
    _save(plt, fig, path)


def plot_per_class_iou(summary: Summary, path: Path) -> None:
    """Heat map of per-class IoU (mean over seeds): variants and the ceiling x 19 classes, per direction."""
    plt = _pyplot()
    names = [*summary.variants, GROUND_TRUTH]
    directions = summary.dataset.directions
    fig, axes = plt.subplots(
        len(directions), 1, figsize=(12, 3.2 + 0.8 * len(names)), squeeze=False, layout="constrained"
    )
    image = None
    for ax, direction in zip(axes[:, 0], directions, strict=True):
        grid = [entry["per_class_iou"][direction] for entry in summary.variants.values()]
        grid.append(summary.ceiling_per_class_iou[direction])
        data = np.ma.masked_invalid(np.array([[np.nan if v is None else v for v in row] for row in grid]))
        cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
        image = ax.imshow(data, vmin=0, vmax=1, cmap=cmap, aspect="auto")
        ax.set_yticks(range(len(names)), [SHORT_TITLES.get(n, n) for n in names], fontsize=8)
        ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"per-class IoU, {direction}")
        for (i, j), value in np.ndenumerate(data.filled(np.nan)):
            if not math.isnan(value):
                color = "white" if value < 0.5 else "black"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color=color)
    fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.8, label="IoU")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_losses(curves: dict[str, pd.DataFrame], path: Path) -> bool:
    """One panel per loss term, one line per run that has it. False when there is nothing to draw."""
    terms = loss_terms(curves)
    if not terms:
        return False
    plt = _pyplot()
    n_cols = min(3, len(terms))
    n_rows = math.ceil(len(terms) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(5.5 * n_cols, 3.5 * n_rows), squeeze=False)
    for ax, term in zip(axes.flat, terms, strict=False):  # spare panels stay empty
        for name, df in curves.items():
            if term in df.columns:
                ax.plot(df["step"], df[term], label=name, lw=1)
        ax.set_title(term)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(terms) :]:
        ax.axis("off")
    # The legend where every run has a line (loss_G: every variant has it).
    fullest = max(range(len(terms)), key=lambda i: sum(terms[i] in df.columns for df in curves.values()))
    axes.flat[fullest].legend(fontsize=7)
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
    dataset: DatasetInfo,
    split_dir: Path,
    translations_root: Path | None,
    runs: list[str],
    ids: list[str],
    path: Path,
) -> bool:
    """The same val images through every run (one seed per variant): x from domain A, y from domain B
    (the split's ``val/photo`` and ``val/label``), then G(x) and F(y) per run."""
    if not ids:
        return False
    plt = _pyplot()
    backward, forward = dataset.directions  # F: B -> A, G: A -> B
    columns: list[tuple[str, Any]] = [
        (f"{dataset.domain_a} x", lambda i: split_dir / "val" / "photo" / f"{i}.png"),
        (f"{dataset.domain_b} y", lambda i: split_dir / "val" / "label" / f"{i}.png"),
    ]
    for run in runs:
        variant = run.rsplit("-", 1)[0]
        for direction, what in ((forward, "G(x)"), (backward, "F(y)")):
            folder = (translations_root or Path("/nonexistent")) / run / direction
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
