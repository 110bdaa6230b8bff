"""A run's scores in MLflow (`EvaluateRecorder`): logged into the run that trained the weights scored.

That run is found by the `training_digest` the metrics file carries (`pipeline.tracking.runs.
find_training_run`), not by an id kept in an output: the metrics file holds only what its inputs
decide. The scores, the metrics file, why FID is missing (a tag), and the first `log_samples`
translated val images per direction (stepped images, which the UI shows side by side across runs).
Without a store, or without the training's run, a warning says so: the file is the result.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.core.images import read_rgb
from pipeline.core.recording import Recorder
from pipeline.core.urls import redact_text
from pipeline.data.manifest import image_id_key
from pipeline.tracking import runs

SCORE_FAMILIES = ("fcn/", "fid/", "kid/", "ssim/", "psnr/")


def eval_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scores under their MLflow names: ``eval/fcn/...``, ``eval/fid/...``, ``eval/kid/...``,
    ``eval/ssim/...``, ``eval/psnr/...`` and the per-class IoU as ``eval/fcn/<direction>/iou/<class>``
    (absent classes and null scores left out)."""
    tracked = {
        f"eval/{key}": float(value)
        for key, value in metrics.items()
        if key.startswith(SCORE_FAMILIES) and value is not None
    }
    for direction, per_class in (metrics.get("per_class_iou") or {}).items():
        for name, value in per_class.items():
            if value is not None:
                tracked[f"eval/fcn/{direction}/iou/{name.replace(' ', '_')}"] = float(value)
    return tracked


class EvaluateRecorder(Recorder):
    """Logs one run's scores into its training's MLflow run of `experiment`."""

    def __init__(self, experiment: str, log_samples: int = 4):
        self.experiment = experiment
        self.log_samples = log_samples
        self.run_id: str | None = None

    def evaluation(self, metrics: Mapping[str, Any], files: Mapping[str, Path], step: int | None) -> None:
        where = files["metrics"]
        if not metrics.get("training_digest"):
            return  # scores of no known training (no checkpoint given): nothing to log them into
        try:
            self.run_id = runs.find_training_run(self.experiment, metrics.get("training_digest") or "")
            if self.run_id is None:
                warnings.warn(
                    f"no MLflow run trained these weights (training digest {metrics.get('training_digest')}, "
                    f"experiment {self.experiment!r}); scores only in {where}",
                    stacklevel=2,
                )
                return
            self._log(self.run_id, metrics, files, step)
        except Exception as exc:  # an unreachable store must not lose the scores
            warnings.warn(
                f"scores not logged to MLflow ({type(exc).__name__}: {redact_text(str(exc))}); "
                f"they are in {where}",
                stacklevel=2,
            )

    def _log(
        self, run_id: str, metrics: Mapping[str, Any], files: Mapping[str, Path], step: int | None
    ) -> None:
        runs.log_metrics(run_id, eval_metrics(metrics), step=step)
        runs.log_artifacts(run_id, files["metrics"], artifact_path="eval")
        if metrics.get("fid_unavailable"):
            runs.set_tags(run_id, {"cyclegan.fid_unavailable": str(metrics["fid_unavailable"])[:5000]})
        translations = files.get("translations")
        if translations is None:
            return
        for folder in sorted(p for p in translations.iterdir() if p.is_dir()):  # one per direction
            direction = folder.name
            images = sorted(folder.glob("*.png"), key=lambda p: image_id_key(p.stem))
            for path in images[: self.log_samples]:
                runs.log_image(run_id, read_rgb(path), key=f"eval/{direction}/{path.stem}", step=step or 0)
