"""The `report` stage: the paper's Tables 4 and 5 with our numbers, their intervals, a floor and a
ceiling beside them, every variant against CycleGAN, and where the numbers came from.

It reads exactly the runs of params.yaml's `variants` x `seeds` (`pipeline.report.results`), so a
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
from pipeline.report import curves, figures, tables
from pipeline.report.results import Summary, load_inputs, summarize


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


def _fid_reasons(summary: Summary) -> dict[str, str]:
    """Why FID is missing -> which variants (usually one reason for all: no Inception weights)."""
    by_reason: dict[str, list[str]] = {}
    for name, entry in summary.variants.items():
        if entry.get("fid_unavailable"):
            by_reason.setdefault(entry["fid_unavailable"], []).append(name)
    everyone = len(summary.variants)
    return {r: ("every variant" if len(n) == everyone else ", ".join(n)) for r, n in by_reason.items()}


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
    inputs = load_inputs(variants, seeds, Path(metrics_dir), Path(confusion_dir), Path(bounds_json))
    summary = summarize(inputs, cfg.bootstrap_resamples, cfg.bootstrap_seed)
    runs = [(run.variant, run.seed) for rs in inputs.runs.values() for run in rs]
    prov = tables.provenance(summary, {v: [r.metrics for r in rs] for v, rs in inputs.runs.items()})
    reasons = _fid_reasons(summary)
    loss_curves = curves.read_curves(Path(train_plots_dir) if train_plots_dir else None, runs)

    with staging_dir(out_dir) as tmp:
        (tmp / "plots").mkdir()
        plots = [tmp / "plots" / "scores.png", tmp / "plots" / "per_class_iou.png"]
        figures.plot_scores(summary, plots[0])
        figures.plot_per_class_iou(summary, plots[1])
        if figures.plot_losses(loss_curves, tmp / "plots" / "losses.png"):
            plots.append(tmp / "plots" / "losses.png")
        first_seed = [run_name(v, rs[0].seed) for v, rs in inputs.runs.items()]
        ids = figures.sample_ids(split_dir, cfg.sample_ids, cfg.n_samples)
        translations = Path(translations_root) if translations_root else None
        if figures.plot_samples(split_dir, translations, first_seed, ids, tmp / "plots" / "samples.png"):
            plots.append(tmp / "plots" / "samples.png")
        curves.write_long_format(loss_curves, tmp / "losses")

        text = tables.markdown(summary, prov, reasons, plots, tmp)
        (tmp / "ablation.md").write_text(text)
        table = tables.csv_table(summary)
        table.to_csv(tmp / "ablation.csv", float_format="%.6g")
        document = tables.json_document(summary, prov, reasons)
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
