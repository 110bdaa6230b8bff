"""DVC stage `train@<variant>-<seed>`: data/split -> models/<variant>-<seed>/checkpoint.pt.

The library side is `pipeline.cyclegan.loop.train_variant`; the MLflow record is
`pipeline.tracking.train.TrainRecorder`, handed to it (recording only: not a code dep of the stage).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pipeline.core.config import from_mapping, read_params, section_of
from pipeline.core.entry import run_main
from pipeline.core.errors import PipelineError
from pipeline.core.study import read_study
from pipeline.cyclegan.config import TrainConfig
from pipeline.cyclegan.loop import TrainingRun, train_variant
from pipeline.cyclegan.losses import LossSwitches
from pipeline.tracking.train import TrainRecorder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--variant", required=True, help="a key of the params' `variants:` section")
    parser.add_argument(
        "--seed", type=int, default=None, help="one of the params' `seeds:` (default: the first of them)"
    )
    parser.add_argument(
        "--split", required=True, help="split folder (train_photo/, train_label/, manifest.csv)"
    )
    parser.add_argument("--out", required=True, help="folder for the finished checkpoint.pt")
    parser.add_argument("--plots", default=None, help="the loss curves' CSV (a row every log_every steps)")
    parser.add_argument(
        "--resume-dir",
        default=None,
        help="folder for the unfinished checkpoints a rerun resumes from (default: --out)",
    )
    args = parser.parse_args(argv)

    def work() -> int:
        params = read_params(args.params)
        if "seed" in (params.get("train") or {}):
            raise PipelineError(
                f"{args.params}: train.seed is gone; list the training seeds in the top-level `seeds:`"
            )
        study = read_study(params, args.params)
        if args.variant not in study.variants:
            known = ", ".join(study.variants) or "none"
            raise PipelineError(
                f"variant {args.variant!r} is not in {args.params} `variants:` (known: {known})"
            )
        seed = study.seeds[0] if args.seed is None else args.seed
        if seed not in study.seeds:
            raise PipelineError(f"seed {seed} is not in {args.params} `seeds:` {study.seeds}")
        cfg = dataclasses.replace(section_of(params, "train", TrainConfig, args.params), seed=seed)
        switches = from_mapping(LossSwitches, study.variants[args.variant], f"variants.{args.variant}")
        run = TrainingRun(
            variant=args.variant,
            switches=switches,
            cfg=cfg,
            split_dir=Path(args.split),
            out_dir=Path(args.out),
            curves=Path(args.plots) if args.plots else None,
            resume_dir=Path(args.resume_dir) if args.resume_dir else None,
        )
        train_variant(run, TrainRecorder(params))
        # The loop already said where the checkpoint is (once, on rank 0 under torchrun).
        return 0

    return run_main(work)


if __name__ == "__main__":
    raise SystemExit(main())
