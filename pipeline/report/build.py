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
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.config import check_range
from pipeline.core.fileio import publish_entries, staging_dir
from pipeline.core.urls import redact_text
from pipeline.report import figures
from pipeline.report.paper import PAPER_SOURCE
from pipeline.report.tables import (
    ablation_table,
    dvc_row,
    load_variant_metrics,
    markdown,
    read_json,
    row_records,
)


@dataclass(frozen=True)
class ReportConfig:
    """Params section `report`."""

    n_samples: int = 4  # val images on the sample sheet: the first n in id order...
    sample_ids: list[str] = field(default_factory=list)  # ...unless listed here

    def __post_init__(self) -> None:
        check_range(self, "n_samples", ge=0)
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


def _parent_run_id(variant_metrics: dict[str, dict]) -> str | None:
    """The ablation's parent run: the flow's ``CYCLEGAN_PARENT_RUN_ID``, else the variant runs' parent.

    Never creates one (unlike `tracking.parent_run_id`): a report made outside an ablation has
    nothing to attach to.
    """
    from pipeline.orchestration import tracking

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
        from pipeline.orchestration.tracking import log_artifacts

        log_artifacts(parent, out_dir, artifact_path="report")
        return parent
    except Exception as exc:  # tracking is a record; the report files are the result
        warnings.warn(
            f"report not attached to MLflow ({type(exc).__name__}: {redact_text(str(exc))})", stacklevel=2
        )
        return None


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
    judge_metrics = read_json(judge_path) if judge_path is not None else None
    table = ablation_table(variant_metrics, judge_metrics)
    split_dir = Path(split_dir)

    with staging_dir(out_dir) as tmp:
        (tmp / "plots").mkdir()
        plots = [tmp / "plots" / "scores.png", tmp / "plots" / "per_class_iou.png"]
        figures.plot_scores(table, plots[0])
        figures.plot_per_class_iou(variant_metrics, judge_metrics, plots[1])
        variants = list(variant_metrics)
        if figures.plot_losses(
            Path(train_plots_dir) if train_plots_dir else None, variants, tmp / "plots" / "losses.png"
        ):
            plots.append(tmp / "plots" / "losses.png")
        translations = Path(translations_root) if translations_root else None
        ids = figures.sample_ids(split_dir, cfg.sample_ids, cfg.n_samples)
        if figures.plot_samples(split_dir, translations, variants, ids, tmp / "plots" / "samples.png"):
            plots.append(tmp / "plots" / "samples.png")

        (tmp / "ablation.md").write_text(markdown(table, variant_metrics, plots, tmp))
        table.to_csv(tmp / "ablation.csv", float_format="%.6g")
        document = {"source": PAPER_SOURCE, "rows": row_records(table)}
        (tmp / "ablation.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        (tmp / "metrics").mkdir()
        for position, (name, row) in enumerate(table.iterrows()):
            # The position prefix keeps the paper's row order in `dvc metrics show`, which sorts by path.
            (tmp / "metrics" / f"{position}_{name}.json").write_text(
                json.dumps(dvc_row(row), indent=2) + "\n"
            )
        publish_entries(tmp, out_dir)

    parent = attach_to_parent_run(variant_metrics, out_dir) if track else None
    return ReportPaths(
        markdown=out_dir / "ablation.md",
        csv=out_dir / "ablation.csv",
        json=out_dir / "ablation.json",
        dvc_metrics=out_dir / "metrics",
        plots=[out_dir / p.relative_to(tmp) for p in plots],
        mlflow_parent_run_id=parent,
    )
