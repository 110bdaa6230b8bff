"""The report in MLflow (`ReportRecorder`): the launch's parent run shows every (variant, seed) it
reports, describes itself with the ablation table, and holds the report's files.

A run whose training was reused from an earlier launch (DVC skipped its stages) is nested under the
parent it was trained in. So that this launch's parent still shows it, the report adds a *reused* run
under this parent: same name, its params and scores copied, tagged ``cyclegan.trained_in`` with the
run that holds its curves, images and models (found by its `training_digest`). Rebuilding the report
adds nothing twice.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.recording import Recorder
from pipeline.core.study import read_study, run_name
from pipeline.core.urls import redact_text
from pipeline.cyclegan.fingerprint import data_fingerprint
from pipeline.tracking import runs as mlflow_runs
from pipeline.tracking.evaluate import eval_metrics
from pipeline.tracking.parent import PARENT_ENV, experiment_of, open_parent, params_launch_key
from pipeline.tracking.store import client

REUSED_TAG = "cyclegan.trained_in"


def _children(mlflow_client, experiment_id: str, parent: str) -> dict[tuple[str, str], Any]:
    runs = mlflow_client.search_runs([experiment_id], f"tags.`{mlflow_runs.PARENT_TAG}` = '{parent}'")
    return {(r.data.tags.get("cyclegan.variant"), r.data.tags.get("cyclegan.seed")): r for r in runs}


def show_every_run(parent: str, runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Make `parent` list every run in `runs` (metrics dicts with their variant and seed), adding reused
    runs where needed; returns their ids."""
    mlflow_client = client()
    experiment_id = mlflow_client.get_run(parent).info.experiment_id
    experiment = mlflow_client.get_experiment(experiment_id).name
    present = _children(mlflow_client, experiment_id, parent)
    added = []
    for run in runs:
        variant, seed = run["variant"], run["seed"]
        if (variant, str(seed)) in present:
            continue
        source = mlflow_runs.find_training_run(experiment, run.get("training_digest") or "")
        params: Mapping[str, str] = {}
        tags = {"cyclegan.variant": variant, "cyclegan.seed": str(seed)}
        if source:
            origin = mlflow_client.get_run(source)
            params = origin.data.params
            tags.update(
                {k: v for k, v in origin.data.tags.items() if k.startswith(("cyclegan.", "machine."))}
            )
        tags[REUSED_TAG] = source or "unknown"
        tags[mlflow_runs.NOTE_TAG] = (
            f"Reused: this (variant, seed) was trained and evaluated in run `{source}` with the same code, "
            "params and data, and DVC skipped it in this launch. Its params and scores are copied here so "
            "that this ablation's compare view lines it up; curves, images and models are in that run."
        )
        run_id = mlflow_runs.start_run(experiment, run_name(variant, seed), parent, dict(params), tags)
        mlflow_runs.log_metrics(run_id, eval_metrics(run), step=run.get("steps"))
        mlflow_runs.end_run(run_id, "FINISHED")
        added.append(run_id)
    return added


def describe(parent: str, markdown: str, table: Any, out_dir: Path, tags: Mapping[str, str]) -> None:
    """The parent's description is the ablation table, the table is logged (MLflow's table view) and
    the report folder attached."""
    note = markdown.split("## Where these numbers came from")[0]
    mlflow_runs.set_tags(parent, {mlflow_runs.NOTE_TAG: note[:5000], **tags})
    client().log_table(parent, data=table.reset_index(), artifact_file="ablation_table.json")
    mlflow_runs.log_artifacts(parent, out_dir, artifact_path="report")


class ReportRecorder(Recorder):
    """Records the report in its launch's parent: the flow's (`PARENT_ENV`), else the parent of the plain
    `dvc repro` launch that `params` and the split describe, which this ends. Warns, never fails."""

    def __init__(self, params: Mapping[str, Any], split_dir: str | os.PathLike):
        self.params = params
        self.split_dir = Path(split_dir)
        self.parent_id: str | None = None

    def launch_parent(self) -> tuple[str, bool]:
        """The parent to record into, and whether this launch (a plain `dvc repro`) owns it."""
        if os.environ.get(PARENT_ENV):
            return os.environ[PARENT_ENV], False
        # The launch's parent, as its train stages opened it (or would have, had any run trained).
        key = params_launch_key(self.params, data_fingerprint(self.split_dir)["train_sha256"])
        return open_parent(experiment_of(self.params), key), True

    def report(self, runs: Sequence[Mapping[str, Any]], markdown: str, table: Any, out_dir: Path) -> None:
        try:
            study = read_study(self.params)
            parent, owned = self.launch_parent()
            show_every_run(parent, runs)
            tags = {
                "cyclegan.variants": ",".join(study.variants),
                "cyclegan.seeds": ",".join(map(str, study.seeds)),
            }
            describe(parent, markdown, table, out_dir, tags)
            if owned:
                mlflow_runs.end_run(parent, "FINISHED")
            self.parent_id = parent
        except Exception as exc:
            warnings.warn(
                f"report not recorded in MLflow ({type(exc).__name__}: {redact_text(str(exc))})", stacklevel=2
            )
