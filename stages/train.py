"""DVC stage `train@<variant>`: data/split -> models/<variant>/checkpoint.pt (`pipeline.cyclegan.loop`)."""

from __future__ import annotations

import argparse

from pipeline.core.config import from_mapping, load_section, read_params, read_variants
from pipeline.core.entry import run_main
from pipeline.core.errors import PipelineError
from pipeline.cyclegan.config import TrainConfig
from pipeline.cyclegan.loop import train_variant
from pipeline.cyclegan.losses import LossSwitches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--variant", required=True, help="a key of the params' `variants:` section")
    parser.add_argument(
        "--split", required=True, help="split folder (train_photo/, train_label/, manifest.csv)"
    )
    parser.add_argument(
        "--out", required=True, help="folder for checkpoint.pt (kept between runs: resumable)"
    )
    parser.add_argument("--plots", default=None, help="per-epoch loss CSV for `dvc plots`")
    args = parser.parse_args(argv)

    def work() -> int:
        cfg = load_section(args.params, "train", TrainConfig)
        variants = read_variants(read_params(args.params), args.params)
        if args.variant not in variants:
            known = ", ".join(variants) or "none"
            raise PipelineError(
                f"variant {args.variant!r} is not in {args.params} `variants:` (known: {known})"
            )
        switches = from_mapping(LossSwitches, variants[args.variant], f"variants.{args.variant}")
        train_variant(args.split, args.out, args.variant, switches, cfg, metrics_path=args.plots)
        # The loop already said where the checkpoint is (once, on rank 0 under torchrun).
        return 0

    return run_main(work)


if __name__ == "__main__":
    raise SystemExit(main())
