"""DVC stage `report`: every (variant, seed) of params.yaml -> reports/ (tables with intervals, floor and
ceiling, pairwise differences, per-row DVC metrics, loss curves, plots)."""

from __future__ import annotations

import argparse

from pipeline.core.config import read_params, section_of
from pipeline.core.entry import run_main
from pipeline.core.study import read_study
from pipeline.report.build import ReportConfig, build_report
from pipeline.tracking.report import ReportRecorder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics", required=True, help="folder of <variant>-<seed>.json metric files")
    parser.add_argument("--confusion", required=True, help="folder of <variant>-<seed>.npz and bounds.npz")
    parser.add_argument("--bounds", required=True, help="the bounds stage's JSON (floor and ceiling)")
    parser.add_argument("--translations", help="folder holding translations/<variant>-<seed>/ (sample sheet)")
    parser.add_argument("--split", required=True, help="split folder (val images for the sample sheet)")
    parser.add_argument("--train-plots", help="folder of the runs' loss curves (<variant>-<seed>.csv)")
    parser.add_argument("--out", required=True, help="report folder to (re)create")
    args = parser.parse_args(argv)

    def work() -> int:
        params = read_params(args.params)
        cfg = section_of(params, "report", ReportConfig, args.params)
        study = read_study(params, args.params)
        recorder = ReportRecorder(params, args.split)
        paths = build_report(
            list(study.variants),
            study.seeds,
            args.metrics,
            args.confusion,
            args.bounds,
            args.translations,
            args.split,
            args.train_plots,
            args.out,
            cfg,
            recorder=recorder,
        )
        attached = f"; attached to MLflow run {recorder.parent_id}" if recorder.parent_id else ""
        print(
            f"report: {len(study.variants)} variants x {len(study.seeds)} seeds -> {paths.markdown}, "
            f"{paths.csv}, {paths.json}, {len(paths.plots)} plots{attached}"
        )
        return 0

    return run_main(work)


if __name__ == "__main__":
    raise SystemExit(main())
