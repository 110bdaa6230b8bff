"""DVC stage `report`: the variants' metrics -> reports/ablation.{md,csv,json}, per-row DVC metrics, plots."""

from __future__ import annotations

import argparse

from pipeline.core.config import load_section
from pipeline.core.entry import run_main
from pipeline.report.build import ReportConfig, build_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--metrics",
        required=True,
        nargs="+",
        help="a folder of <variant>.json metric files, or the files themselves",
    )
    parser.add_argument("--judge-metrics", help="the judge's real-photo scores (the ceiling row)")
    parser.add_argument("--translations", help="folder holding translations/<variant>/ (sample sheet)")
    parser.add_argument("--split", required=True, help="split folder (val images for the sample sheet)")
    parser.add_argument("--train-plots", help="folder of the variants' training loss CSVs")
    parser.add_argument("--out", required=True, help="report folder to (re)create")
    args = parser.parse_args(argv)

    def work() -> int:
        cfg = load_section(args.params, "report", ReportConfig)
        metrics = args.metrics[0] if len(args.metrics) == 1 else args.metrics
        paths = build_report(
            metrics, args.judge_metrics, args.translations, args.split, args.train_plots, args.out, cfg
        )
        parent = paths.mlflow_parent_run_id
        attached = f"; attached to MLflow run {parent}" if parent else ""
        print(f"report: {paths.markdown}, {paths.csv}, {paths.json}, {len(paths.plots)} plots{attached}")
        return 0

    return run_main(work)


if __name__ == "__main__":
    raise SystemExit(main())
