"""The report in MLflow: the launch's parent run shows every (variant, seed) it reports, describes itself
with the ablation table, and holds the report's files.

A run whose training was reused from an earlier launch (DVC skipped its stages) is nested under the
parent it was trained in. So that this launch's parent still shows it, the report adds a *reused* run
under this parent: same name, its params and scores copied, tagged ``cyclegan.trained_in`` with the
run that holds its curves, images and models. Rebuilding the report adds nothing twice.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.urls import redact_text
from pipeline.orchestration import tracking
from pipeline.report.results import Run

REUSED_TAG = "cyclegan.trained_in"


def _children(mlflow_client, experiment_id: str, parent: str) -> dict[tuple[str, str], Any]:
    runs = mlflow_client.search_runs([experiment_id], f"tags.`{tracking.PARENT_TAG}` = '{parent}'")
    return {(r.data.tags.get("cyclegan.variant"), r.data.tags.get("cyclegan.seed")): r for r in runs}


def show_every_run(parent: str, runs: Sequence[Run]) -> list[str]:
    """Make `parent` list every run in `runs`, adding reused runs where needed; returns their ids."""
    mlflow_client = tracking.client()
    experiment_id = mlflow_client.get_run(parent).info.experiment_id
    present = _children(mlflow_client, experiment_id, parent)
    added = []
    for run in runs:
        source = run.metrics.get("mlflow_run_id")
        if (run.variant, str(run.seed)) in present:
            continue
        params: Mapping[str, str] = {}
        tags = {"cyclegan.variant": run.variant, "cyclegan.seed": str(run.seed)}
        if source:
            origin = mlflow_client.get_run(source)
            params = origin.data.params
            tags.update(
                {k: v for k, v in origin.data.tags.items() if k.startswith(("cyclegan.", "machine."))}
            )
        tags[REUSED_TAG] = source or "unknown"
        tags[tracking.NOTE_TAG] = (
            f"Reused: this (variant, seed) was trained and evaluated in run `{source}` with the same code, "
            "params and data, and DVC skipped it in this launch. Its params and scores are copied here so "
            "that this ablation's compare view lines it up; curves, images and models are in that run."
        )
        run_id = tracking.start_run(
            mlflow_client.get_experiment(experiment_id).name,
            f"{run.variant}-seed{run.seed}",
            parent,
            dict(params),
            tags,
        )
        tracking.log_metrics(run_id, tracking.eval_metrics(run.metrics), step=run.metrics.get("steps"))
        tracking.end_run(run_id, "FINISHED")
        added.append(run_id)
    return added


def describe(parent: str, markdown: str, table: pd.DataFrame, out_dir: Path, tags: Mapping[str, str]) -> None:
    """The parent's description is the ablation table, the table is logged (MLflow's table view) and
    the report folder attached."""
    note = markdown.split("## Where these numbers came from")[0]
    tracking.set_tags(parent, {tracking.NOTE_TAG: note[:5000], **tags})
    tracking.client().log_table(parent, data=table.reset_index(), artifact_file="ablation_table.json")
    tracking.log_artifacts(parent, out_dir, artifact_path="report")


def record(
    runs: Sequence[Run],
    markdown: str,
    table: pd.DataFrame,
    out_dir: Path,
    open_parent: Any,
    tags: Mapping[str, str],
) -> str | None:
    """All of the above into this launch's parent (the flow's, or `open_parent()`), which a plain
    `dvc repro` launch ends here; warns, never fails (tracking is a record, the files are the result)."""
    try:
        flow_parent = os.environ.get(tracking.PARENT_ENV)
        parent = flow_parent or open_parent()
        show_every_run(parent, runs)
        describe(parent, markdown, table, out_dir, tags)
        if not flow_parent:
            tracking.end_run(parent, "FINISHED")
        return parent
    except Exception as exc:
        warnings.warn(
            f"report not recorded in MLflow ({type(exc).__name__}: {redact_text(str(exc))})", stacklevel=2
        )
        return None
