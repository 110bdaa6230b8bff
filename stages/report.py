"""DVC stage `report`: every (variant, seed) of params.yaml -> reports/ (tables with intervals, floor and
ceiling, pairwise differences, per-row DVC metrics, loss curves, plots)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.core.config import from_mapping, load_section, read_params
from pipeline.core.entry import run_main
from pipeline.core.errors import PipelineError
from pipeline.cyclegan.config import TrainConfig
from pipeline.cyclegan.identity import ablation_key, data_fingerprint
from pipeline.orchestration import tracking
from pipeline.report.build import ReportConfig, build_report


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
        cfg = load_section(args.params, "report", ReportConfig)
        params = read_params(args.params)
        variants, seeds = list(params.get("variants") or {}), params.get("seeds")
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise PipelineError(
                f"{args.params}: `seeds:` must be a non-empty list of integers, got {seeds!r}"
            )
        train = from_mapping(TrainConfig, params.get("train") or {}, "train")

        def open_parent() -> str:
            # The launch's parent, as its train stages opened it (or would have, had any run trained).
            key = ablation_key(data_fingerprint(Path(args.split)), train, params["variants"], seeds)
            return tracking.open_parent(train.experiment, key, f"ablation-{key[:8]}")

        paths = build_report(
            variants,
            seeds,
            args.metrics,
            args.confusion,
            args.bounds,
            args.translations,
            args.split,
            args.train_plots,
            args.out,
            cfg,
            open_parent=open_parent,
        )
        parent = paths.mlflow_parent_run_id
        attached = f"; attached to MLflow run {parent}" if parent else ""
        seconds = paths.summary.bootstrap["seconds"]
        print(
            f"report: {len(variants)} variants x {len(seeds)} seeds -> {paths.markdown}, {paths.csv}, "
            f"{paths.json}, {len(paths.plots)} plots; bootstrap {seconds:.2f} s{attached}"
        )
        return 0

    return run_main(work)


if __name__ == "__main__":
    raise SystemExit(main())
