"""DVC stage `judge`: train the FCN judge on real photos and score it on the real val photos.

    python -m stages.judge --params params.yaml --split data/split --out models/fcn \\
        --metrics metrics/fcn.json
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pipeline.core.config import load_section
from pipeline.core.entry import run_main
from pipeline.core.fileio import write_json
from pipeline.judge.train import JudgeConfig, train_judge


def main(argv: list[str] | None = None) -> int:
    """Train/resume the judge into --out, write its real-val scores to --metrics."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params file (section judge)"
    )
    parser.add_argument("--split", type=Path, required=True, help="split folder, e.g. data/split")
    parser.add_argument("--out", type=Path, required=True, help="judge folder, e.g. models/fcn")
    parser.add_argument("--metrics", type=Path, required=True, help="scores JSON, e.g. metrics/fcn.json")
    parser.add_argument(
        "--resume-dir", type=Path, default=None, help="folder for unfinished checkpoints (default: --out)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def work() -> int:
        started = time.perf_counter()
        cfg = load_section(args.params, "judge", JudgeConfig)
        scores = train_judge(args.split, args.out, cfg, args.resume_dir)
        write_json(args.metrics, scores)  # what the inputs decide, nothing else (no wall time)
        if scores.get("available") is False:
            print(f"judge: none ({scores['reason']}) -> {args.metrics}")
            return 0
        print(
            f"judge: on {scores['n_images']} real val photos: "
            f"pixel acc {scores['fcn/real/pixel_acc']:.3f}, "
            f"class acc {scores['fcn/real/class_acc']:.3f}, class IoU {scores['fcn/real/class_iou']:.3f} "
            f"-> {args.metrics} in {time.perf_counter() - started:.1f} s"
        )
        return 0

    return run_main(work)


if __name__ == "__main__":
    raise SystemExit(main())
