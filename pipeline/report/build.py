"""The `report` stage: every metric the dataset has, with its intervals, a floor (and for the FCN scores
a ceiling and the paper's Tables 4 and 5) beside it, every variant against CycleGAN, and where the
numbers came from. Which metrics the dataset has, the split's summary says (`pipeline.report.dataset`).

It reads exactly the runs of params.yaml's `variants` x `seeds` (`pipeline.report.inputs`), so a
variant removed from params.yaml leaves the report on the next `dvc repro`. Outputs under `out_dir`,
built in a staging folder and published together: ``ablation.md``, ``ablation.csv``, ``ablation.json``
(everything, per seed), ``metrics/<row>.json`` (one small file per row, what `dvc metrics show`
lists), ``losses/<term>.csv`` (the loss curves `dvc plots` overlays) and ``plots/*.png``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.config import check_range
from pipeline.core.fileio import publish_entries, staging_dir
from pipeline.core.recording import NOTHING, Recorder
from pipeline.core.study import run_name
from pipeline.report import curves, figures, markdown, tables
from pipeline.report.dataset import read_split_info
from pipeline.report.inputs import load_inputs
from pipeline.report.results import Summary, summarize


@dataclass(frozen=True)
class ReportConfig:
    """Params section `report`."""

    n_samples: int = 4  # val images on the sample sheet: the first n in id order...
    sample_ids: list[str] = field(default_factory=list)  # ...unless listed here
    bootstrap_resamples: int = 1000  # val-image resamples behind every evaluation-variance interval
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        check_range(self, "n_samples", ge=0)
        if self.n_samples < 1 and not self.sample_ids:
            raise ValueError(f"n_samples must be >= 1 (or list sample_ids), got {self.n_samples}")
        if self.bootstrap_resamples < 100:
            raise ValueError(f"bootstrap_resamples must be >= 100, got {self.bootstrap_resamples}")
        if self.bootstrap_seed < 0:
            raise ValueError(f"bootstrap_seed must be >= 0, got {self.bootstrap_seed}")


@dataclass(frozen=True)
class ReportPaths:
    """What `build_report` wrote."""

    markdown: Path
    csv: Path
    json: Path
    dvc_metrics: Path  # folder of per-row JSON files
    losses: Path  # folder of per-term loss curves
    plots: list[Path]
    summary: Summary


def _plot_metric_families(summary: Summary, folder: Path) -> list[Path]:
    """The figure of every metric family the dataset has."""
    plots = []
    if summary.dataset.has_judge:
        plots += [folder / "fcn_scores.png", folder / "per_class_iou.png"]
        figures.plot_fcn_scores(summary, plots[-2])
        figures.plot_per_class_iou(summary, plots[-1])
    if summary.dataset.fidelity_metrics:
        plots.append(folder / "fidelity.png")
        figures.plot_fidelity(summary, plots[-1])
    plots.append(folder / "distribution.png")
    figures.plot_distribution(summary, plots[-1])
    return plots


def build_report(
    variants: Sequence[str],
    seeds: Sequence[int],
    metrics_dir: str | os.PathLike,
    confusion_dir: str | os.PathLike,
    bounds_json: str | os.PathLike,
    translations_root: str | os.PathLike | None,
    split_dir: str | os.PathLike,
    train_plots_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    cfg: ReportConfig = ReportConfig(),
    recorder: Recorder = NOTHING,
) -> ReportPaths:
    """Write the report of `variants` x `seeds` (see the module docstring), then hand it to `recorder`
    (MLflow: the launch's parent run)."""
    out_dir, split_dir = Path(out_dir), Path(split_dir)
    dataset = read_split_info(split_dir)
    inputs = load_inputs(variants, seeds, Path(metrics_dir), Path(confusion_dir), Path(bounds_json), dataset)
    summary = summarize(inputs, cfg.bootstrap_resamples, cfg.bootstrap_seed)
    runs = [(run.variant, run.seed) for rs in inputs.runs.values() for run in rs]
    prov = tables.provenance(summary, {v: [r.metrics for r in rs] for v, rs in inputs.runs.items()})
    loss_curves = curves.read_curves(Path(train_plots_dir) if train_plots_dir else None, runs)

    with staging_dir(out_dir) as tmp:
        (tmp / "plots").mkdir()
        plots = _plot_metric_families(summary, tmp / "plots")
        if figures.plot_losses(loss_curves, tmp / "plots" / "losses.png"):
            plots.append(tmp / "plots" / "losses.png")
        first_seed = [run_name(v, rs[0].seed) for v, rs in inputs.runs.items()]
        ids = figures.sample_ids(split_dir, cfg.sample_ids, cfg.n_samples)
        translations = Path(translations_root) if translations_root else None
        sheet = tmp / "plots" / "samples.png"
        if figures.plot_samples(dataset, split_dir, translations, first_seed, ids, sheet):
            plots.append(sheet)
        curves.write_long_format(loss_curves, tmp / "losses")

        text = markdown.render(summary, prov, plots, tmp)
        (tmp / "ablation.md").write_text(text)
        table = tables.csv_table(summary)
        table.to_csv(tmp / "ablation.csv", float_format="%.6g")
        document = tables.json_document(summary, prov)
        (tmp / "ablation.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        (tmp / "metrics").mkdir()
        for position, (name, row) in enumerate(tables.dvc_rows(summary)):
            # The position prefix keeps the table's row order in `dvc metrics show`, which sorts by path.
            (tmp / "metrics" / f"{position}_{name}.json").write_text(json.dumps(row, indent=2) + "\n")
        publish_entries(tmp, out_dir)
        written = [out_dir / p.relative_to(tmp) for p in plots]

    runs = [
        {"variant": run.variant, "seed": run.seed, **run.metrics} for rs in inputs.runs.values() for run in rs
    ]
    recorder.report(runs, text, table, out_dir)
    return ReportPaths(
        markdown=out_dir / "ablation.md",
        csv=out_dir / "ablation.csv",
        json=out_dir / "ablation.json",
        dvc_metrics=out_dir / "metrics",
        losses=out_dir / "losses",
        plots=written,
        summary=summary,
    )
