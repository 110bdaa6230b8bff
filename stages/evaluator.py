"""DVC stage `evaluator`: train the FCN judge on real photos and score it on the real val photos.

    python -m stages.evaluator --params params.yaml --split data/split --out models/fcn \\
        --metrics metrics/fcn.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from pipeline.config import load_section
from pipeline.errors import PipelineError
from pipeline.evaluator import EvaluatorConfig, train_judge
from pipeline.fileio import write_json


def main(argv: list[str] | None = None) -> int:
    """Train/resume the judge into --out, write its real-val scores to --metrics; 1 on a `PipelineError`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params file (section evaluator)"
    )
    parser.add_argument("--split", type=Path, required=True, help="split folder, e.g. data/split")
    parser.add_argument("--out", type=Path, required=True, help="judge folder, e.g. models/fcn")
    parser.add_argument("--metrics", type=Path, required=True, help="scores JSON, e.g. metrics/fcn.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    try:
        cfg = load_section(args.params, "evaluator", EvaluatorConfig)
        scores = train_judge(args.split, args.out, cfg)
        scores["seconds"] = round(time.perf_counter() - started, 1)
        write_json(args.metrics, scores)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"evaluator: judge on {scores['n_images']} real val photos: "
        f"pixel acc {scores['fcn/real/pixel_acc']:.3f}, "
        f"class acc {scores['fcn/real/class_acc']:.3f}, class IoU {scores['fcn/real/class_iou']:.3f} "
        f"-> {args.metrics} in {scores['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
