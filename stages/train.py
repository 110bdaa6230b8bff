"""DVC stage `train@<variant>-<seed>`: data/split -> models/<variant>-<seed>/checkpoint.pt.

The library side is `pipeline.cyclegan.loop.train_variant`.
"""

from __future__ import annotations

import argparse
import dataclasses

from pipeline.core.config import from_mapping, load_section, read_params, read_variants
from pipeline.core.entry import run_main
from pipeline.core.errors import PipelineError
from pipeline.cyclegan.config import TrainConfig
from pipeline.cyclegan.loop import train_variant
from pipeline.cyclegan.losses import LossSwitches
from pipeline.orchestration.profiles import matching_profile


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
        seed = args.seed if args.seed is not None else (params.get("seeds") or [0])[0]
        cfg = dataclasses.replace(load_section(args.params, "train", TrainConfig), seed=seed)
        variants = read_variants(params, args.params)
        if args.variant not in variants:
            known = ", ".join(variants) or "none"
            raise PipelineError(
                f"variant {args.variant!r} is not in {args.params} `variants:` (known: {known})"
            )
        switches = from_mapping(LossSwitches, variants[args.variant], f"variants.{args.variant}")
        # The launch this run belongs to: every variant and seed of params.yaml (its MLflow parent).
        ablation = {
            "variants": variants,
            "seeds": params.get("seeds") or [cfg.seed],
            "profile": matching_profile(params),
        }
        train_variant(
            args.split,
            args.out,
            args.variant,
            switches,
            cfg,
            metrics_path=args.plots,
            ablation=ablation,
            resume_dir=args.resume_dir,
        )
        # The loop already said where the checkpoint is (once, on rank 0 under torchrun).
        return 0

    return run_main(work)


if __name__ == "__main__":
    raise SystemExit(main())
