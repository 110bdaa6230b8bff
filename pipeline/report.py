"""The ablation report: the paper's Tables 4 and 5 with our numbers beside the published ones.

Rows are the loss variants in the paper's order plus the judge's score on real photos (the "ground
truth" ceiling of the FCN score); columns are the three FCN scores per direction and FID. Because our
judge is not the paper's FCN-8s, absolute labels->photo scores are not comparable with the paper's;
each one is also given divided by our judge's ceiling, which is (the paper's 0.80/0.26/0.21 being its
own ceiling).

Outputs under `out_dir`: ``ablation.md``, ``ablation.csv``, ``ablation.json`` (the full table, one
object per row), ``metrics/<row>.json`` (one small file per row: what `dvc metrics show` lists, as a
readable table, because DVC prints one line per metrics file) and ``plots/*.png``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.labels import CLASS_NAMES
from pipeline.split import read_manifest

DIRECTIONS = ("label2photo", "photo2label")
SCORES = ("pixel_acc", "class_acc", "class_iou")
GROUND_TRUTH = "ground_truth"

# The paper's order of Tables 4 and 5; variants not listed here follow in name order.
PAPER_ORDER = ("cycle_only", "gan_only", "gan_forward", "gan_backward", "cyclegan")
ROW_TITLES = {
    "cycle_only": "Cycle alone",
    "gan_only": "GAN alone",
    "gan_forward": "GAN + forward cycle",
    "gan_backward": "GAN + backward cycle",
    "cyclegan": "CycleGAN",
    GROUND_TRUTH: "Ground truth (judge on real photos)",
}

# Published FCN scores (per-pixel acc., per-class acc., class IoU), Zhu et al., "Unpaired Image-to-Image
# Translation using Cycle-Consistent Adversarial Networks", arXiv:1703.10593 (v7), Table 4 (Cityscapes
# labels->photo) and Table 5 (photo->labels). The ground-truth row is the same FCN-8s scoring real photos,
# from pix2pix (Isola et al., arXiv:1611.07004, Table 1). Table 5 has no ground-truth row: real label
# maps decode to their own classes exactly. Cross-checked against public write-ups of the papers (GAN alone
# and CycleGAN rows of both tables, pix2pix Table 1 with its caption); the other rows as quoted in issue 4.
PAPER_SOURCE = (
    "Zhu et al. 2017 (arXiv:1703.10593) Tables 4 and 5; "
    "ground truth: Isola et al. 2017 (arXiv:1611.07004) Table 1"
)
PAPER_SCORES: dict[str, dict[str, tuple[float, float, float]]] = {
    "label2photo": {
        "cycle_only": (0.22, 0.07, 0.02),
        "gan_only": (0.51, 0.11, 0.08),
        "gan_forward": (0.55, 0.18, 0.12),
        "gan_backward": (0.39, 0.14, 0.06),
        "cyclegan": (0.52, 0.17, 0.11),
        GROUND_TRUTH: (0.80, 0.26, 0.21),
    },
    "photo2label": {
        "cycle_only": (0.10, 0.05, 0.02),
        "gan_only": (0.53, 0.11, 0.07),
        "gan_forward": (0.49, 0.11, 0.07),
        "gan_backward": (0.01, 0.06, 0.01),
        "cyclegan": (0.58, 0.22, 0.16),
    },
}
PAPER_TITLES = {"pixel_acc": "per-pixel", "class_acc": "per-class", "class_iou": "IOU"}
SHORT_TITLES = {**ROW_TITLES, GROUND_TRUTH: "Real photos"}  # plot labels
SCORE_TITLES = {"pixel_acc": "Per-pixel acc.", "class_acc": "Per-class acc.", "class_iou": "Class IOU"}
DIRECTION_TITLES = {
    "label2photo": "labels → photo (paper Table 4): the judge segments F(y)",
    "photo2label": "photo → labels (paper Table 5): G(x) decoded to classes",
}


@dataclass(frozen=True)
class ReportConfig:
    """Params section `report`."""

    n_samples: int = 4  # val images on the sample sheet: the first n in id order...
    sample_ids: list[str] = field(default_factory=list)  # ...unless listed here

    def __post_init__(self) -> None:
        if self.n_samples < 1 and not self.sample_ids:
            raise ValueError(f"n_samples must be >= 1 (or list sample_ids), got {self.n_samples}")


@dataclass(frozen=True)
class ReportPaths:
    """What `build_report` wrote."""

    markdown: Path
    csv: Path
    json: Path
    dvc_metrics: Path  # folder of per-row JSON files
    plots: list[Path]
    mlflow_parent_run_id: str | None = None


def _natural(value: str) -> tuple:
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def _variant_order(name: str) -> tuple:
    return (PAPER_ORDER.index(name), "") if name in PAPER_ORDER else (len(PAPER_ORDER), name)


def _read_json(path: Path) -> dict:
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
        data = _read_json(path)
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
    return {name: by_variant[name] for name in sorted(by_variant, key=_variant_order)}


def _number(value: Any) -> float:
    """A metric value as float, NaN for missing / null."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _per_class(values: Any) -> list[float]:
    """Per-class IoU as 19 floats (NaN for absent) from a ``{class: iou}`` mapping or a list."""
    if isinstance(values, dict):
        return [_number(values.get(name)) for name in CLASS_NAMES]
    if isinstance(values, list) and len(values) == len(CLASS_NAMES):
        return [_number(v) for v in values]
    return [math.nan] * len(CLASS_NAMES)


def ablation_table(variant_metrics: dict[str, dict], judge_metrics: dict | None) -> pd.DataFrame:
    """One row per variant (paper order) plus the judge's ceiling row; index = row name.

    Columns: our FCN scores per direction and FID (the metric names of ``metrics/<variant>.json``),
    the paper's scores as ``paper/<metric>``, our labels->photo scores over our judge's as
    ``vs_ceiling/<metric>`` and the paper's over its FCN-8s's as ``paper_vs_ceiling/<metric>``, and
    ``fid_unavailable``.
    """
    ceiling = {s: _number((judge_metrics or {}).get(f"fcn/real/{s}")) for s in SCORES}
    rows: dict[str, dict[str, Any]] = {}
    for variant, metrics in variant_metrics.items():
        row: dict[str, Any] = {}
        for direction in DIRECTIONS:
            for score in SCORES:
                row[f"fcn/{direction}/{score}"] = _number(metrics.get(f"fcn/{direction}/{score}"))
        for direction in DIRECTIONS:
            row[f"fid/{direction}"] = _number(metrics.get(f"fid/{direction}"))
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
    number = _number(value)
    return "n/a" if math.isnan(number) else f"{number:.{digits}f}"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _markdown(table: pd.DataFrame, variant_metrics: dict[str, dict], plots: list[Path], out_dir: Path) -> str:
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


def _row_records(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return {
        name: {
            column: _json_ready(value)
            for column, value in row.items()
            if column != "fid_unavailable" or value
        }
        for name, row in table.iterrows()
    }


def _dvc_row(row: pd.Series) -> dict[str, dict[str, float]]:
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


# --- plots ---------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a build machine
    import matplotlib.pyplot as plt

    return plt


def _plot_scores(table: pd.DataFrame, path: Path) -> None:
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


def _plot_per_class_iou(variant_metrics: dict[str, dict], judge_metrics: dict | None, path: Path) -> None:
    """Heat map of per-class IoU: variants x 19 classes, one panel per direction (grey = absent)."""
    plt = _pyplot()
    n_rows = len(variant_metrics) + (judge_metrics is not None)
    fig, axes = plt.subplots(2, 1, figsize=(12, 3.2 + 0.8 * n_rows), squeeze=False, layout="constrained")
    image = None
    for ax, direction in zip(axes[:, 0], DIRECTIONS, strict=True):
        names = list(variant_metrics)
        grid = [_per_class(m.get("per_class_iou", {}).get(direction)) for m in variant_metrics.values()]
        if direction == "label2photo" and judge_metrics is not None:
            names.append(GROUND_TRUTH)
            grid.append(_per_class(judge_metrics.get("per_class_iou")))
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


def _plot_losses(train_plots_dir: Path | None, variants: list[str], path: Path) -> bool:
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


def _sample_ids(split_dir: Path, cfg: ReportConfig) -> list[str]:
    if cfg.sample_ids:
        return list(cfg.sample_ids)
    try:
        ids = read_manifest(split_dir, subset="val", kind="photo")["image_id"].tolist()
    except PipelineError:
        ids = [p.stem for p in (split_dir / "val" / "photo").glob("*.png")]
    return sorted(ids, key=_natural)[: cfg.n_samples]


def _load_rgb(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError):
        return None


def _plot_samples(
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


# --- MLflow --------------------------------------------------------------------------------------------


def _parent_run_id(variant_metrics: dict[str, dict]) -> str | None:
    """The ablation's parent run: the flow's ``CYCLEGAN_PARENT_RUN_ID``, else the variant runs' parent.

    Never creates one (unlike `tracking.parent_run_id`): a report made outside an ablation has
    nothing to attach to.
    """
    from pipeline import tracking

    if os.environ.get(tracking.PARENT_ENV):
        return os.environ[tracking.PARENT_ENV]
    run_ids = [m["mlflow_run_id"] for m in variant_metrics.values() if m.get("mlflow_run_id")]
    if not run_ids:
        return None
    client = tracking.client()
    parents = {client.get_run(run_id).data.tags.get(tracking.PARENT_TAG) for run_id in run_ids}
    parents.discard(None)
    if len(parents) > 1:
        warnings.warn(
            f"variant runs have different parents {sorted(parents)}; report not attached", stacklevel=2
        )
        return None
    return parents.pop() if parents else None


def attach_to_parent_run(variant_metrics: dict[str, dict], out_dir: Path) -> str | None:
    """Log the report folder as artifacts of the MLflow parent run; warn, never fail, when impossible."""
    try:
        parent = _parent_run_id(variant_metrics)
        if parent is None:
            return None
        from pipeline.tracking import log_artifacts

        log_artifacts(parent, out_dir, artifact_path="report")
        return parent
    except Exception as exc:  # tracking is a record; the report files are the result
        warnings.warn(f"report not attached to MLflow ({type(exc).__name__}: {exc})", stacklevel=2)
        return None


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move each finished report entry into `out_dir`, replacing the old one.

    Entry by entry rather than the whole folder, so whatever else lives in `out_dir` (DVC's
    .gitignore, for one) survives.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for entry in sorted(tmp.iterdir()):
        target = out_dir / entry.name
        if target.is_dir():
            trash = Path(tempfile.mkdtemp(prefix=f".{entry.name}-old-", dir=out_dir))
            os.replace(target, trash / entry.name)
            os.replace(entry, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(entry, target)


# --- entry point ---------------------------------------------------------------------------------------


def build_report(
    metrics: str | os.PathLike | Sequence[str | os.PathLike],
    judge_metrics_json: str | os.PathLike | None,
    translations_root: str | os.PathLike | None,
    split_dir: str | os.PathLike,
    train_plots_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    cfg: ReportConfig = ReportConfig(),
    track: bool = True,
) -> ReportPaths:
    """Write the ablation report for whichever variants have metric files; see the module docstring.

    `metrics` is a folder of ``<variant>.json`` files or a list of them. Without a judge file (None)
    there is no ceiling row and no ratios; missing FID shows as n/a; missing translations or training
    logs leave a gap on the sample sheet or no loss plot. Everything is written into a temporary
    folder beside `out_dir` first and moved into place entry by entry, so a killed run leaves no
    half-written file.
    """
    out_dir = Path(out_dir)
    judge_path = Path(judge_metrics_json) if judge_metrics_json is not None else None
    variant_metrics = load_variant_metrics(metrics, exclude=[judge_path] if judge_path else [])
    judge_metrics = _read_json(judge_path) if judge_path is not None else None
    table = ablation_table(variant_metrics, judge_metrics)
    split_dir = Path(split_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        (tmp / "plots").mkdir()
        plots = [tmp / "plots" / "scores.png", tmp / "plots" / "per_class_iou.png"]
        _plot_scores(table, plots[0])
        _plot_per_class_iou(variant_metrics, judge_metrics, plots[1])
        variants = list(variant_metrics)
        if _plot_losses(
            Path(train_plots_dir) if train_plots_dir else None, variants, tmp / "plots" / "losses.png"
        ):
            plots.append(tmp / "plots" / "losses.png")
        translations = Path(translations_root) if translations_root else None
        ids = _sample_ids(split_dir, cfg)
        if _plot_samples(split_dir, translations, variants, ids, tmp / "plots" / "samples.png"):
            plots.append(tmp / "plots" / "samples.png")

        (tmp / "ablation.md").write_text(_markdown(table, variant_metrics, plots, tmp))
        table.to_csv(tmp / "ablation.csv", float_format="%.6g")
        document = {"source": PAPER_SOURCE, "rows": _row_records(table)}
        (tmp / "ablation.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        (tmp / "metrics").mkdir()
        for position, (name, row) in enumerate(table.iterrows()):
            # The position prefix keeps the paper's row order in `dvc metrics show`, which sorts by path.
            (tmp / "metrics" / f"{position}_{name}.json").write_text(
                json.dumps(_dvc_row(row), indent=2) + "\n"
            )
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    parent = attach_to_parent_run(variant_metrics, out_dir) if track else None
    return ReportPaths(
        markdown=out_dir / "ablation.md",
        csv=out_dir / "ablation.csv",
        json=out_dir / "ablation.json",
        dvc_metrics=out_dir / "metrics",
        plots=[out_dir / p.relative_to(tmp) for p in plots],
        mlflow_parent_run_id=parent,
    )
