"""DVC stage `evaluate@<variant>-<seed>`: FCN scores (both directions) and FID -> metrics/<run>.json."""

from __future__ import annotations

import argparse
import time

from pipeline.core.config import read_params, section_of
from pipeline.core.entry import run_main
from pipeline.judge.metrics import SCORES
from pipeline.scoring.evaluate import EvaluateConfig, run_evaluation
from pipeline.tracking.evaluate import EvaluateRecorder
from pipeline.tracking.parent import experiment_of


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _shown(metrics: dict, direction: str) -> str:
    """One direction's scores, those the dataset has: FCN (pixel/class acc, class IoU), SSIM, PSNR, FID."""
    parts = [direction]
    if f"fcn/{direction}/pixel_acc" in metrics:
        parts.append("/".join(_fmt(metrics[f"fcn/{direction}/{s}"]) for s in SCORES))
    for name in ("ssim", "psnr"):
        if f"{name}/{direction}" in metrics:
            parts.append(f"{name.upper()} {_fmt(metrics[f'{name}/{direction}'])}")
    parts.append(f"FID {_fmt(metrics[f'fid/{direction}'])} KID {_fmt(metrics[f'kid/{direction}/mean'])}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--variant", required=True)
    parser.add_argument("--translations", required=True, help="translations/<variant> folder")
    parser.add_argument("--split", required=True, help="split folder (val/ and manifest.csv)")
    parser.add_argument("--judge", required=True, help="the FCN judge's checkpoint.pt")
    parser.add_argument(
        "--checkpoint", help="the run's training checkpoint (which training the scores are of)"
    )
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    parser.add_argument("--confusion", help="per-image confusion matrices (.npz) to write, for the report")
    args = parser.parse_args(argv)

    def work() -> int:
        params = read_params(args.params)
        cfg = section_of(params, "evaluate", EvaluateConfig, args.params)
        recorder = EvaluateRecorder(experiment_of(params), cfg.log_samples)
        start = time.perf_counter()
        metrics = run_evaluation(
            args.variant,
            args.translations,
            args.split,
            args.judge,
            args.out,
            cfg,
            checkpoint=args.checkpoint,
            confusion_npz=args.confusion,
            recorder=recorder,
        )
        scores = "; ".join(_shown(metrics, direction) for direction in metrics["test_images"])
        print(
            f"evaluate {args.variant}-{metrics.get('seed')}: {scores} ({metrics['n_images']} images, "
            f"{time.perf_counter() - start:.1f} s) -> {args.out}"
        )
        return 0

    return run_main(work)


if __name__ == "__main__":
    raise SystemExit(main())
