"""One parent run per launched ablation: its key, its one name, and its race-free creation.

A launch is one `dvc repro` (or one flow run) of an ablation: every (variant, seed) it trains nests
under its parent, and its report describes the parent. The launch's `ablation_key` names it:

- given by the user (the flow's `ablation_key` parameter), any string;
- else, for a flow run, the start of the flow run's id;
- else, for a plain `dvc repro`, `launch_key`: a digest of what the launch trains (the data, the train
  settings, the variants and seeds), so that every stage of it computes the same key on its own.

The parent's name is always `parent_name(key)`: ``ablation-<key>``.

Race-free creation: the first process to create the experiment ``<experiment>/.parent-<hash of key>``
(experiment names are unique in every MLflow store, so exactly one succeeds) creates the parent and
records its id on that marker experiment, which it then deletes (a deleted experiment keeps its name,
so the marker stays taken but hidden); every other process reads the id from it. No key ever goes
into a search filter, so any characters are safe. A flow passes its parent down to its stages in
`PARENT_ENV`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.tracking.store import _local_artifact_root, client, context_tags, experiment_id, tracking_uri

PARENT_ENV = "CYCLEGAN_PARENT_RUN_ID"
ROLE_TAG = "cyclegan.role"
ABLATION_KEY_TAG = "cyclegan.ablation_key"
MARKER_TAG = "cyclegan.parent_run_id"
DEFAULT_EXPERIMENT = "cyclegan-ablation"
PARENT_WAIT_S = 60.0  # how long a process waits for another one to create the shared parent


def parent_name(key: str) -> str:
    """The parent run's name for ablation `key`."""
    return f"ablation-{key}"


def launch_key(
    train_sha256: str,
    train: Mapping[str, Any],
    variants: Mapping[str, Mapping[str, Any]],
    seeds: Sequence[int],
) -> str:
    """The key of a plain `dvc repro` launch: a digest of its training data, its train settings (the
    seed aside: a launch runs several), and which variants (with their switches) and seeds it runs.
    Changing any of them is another launch: removing a variant gives a parent that no longer lists it."""
    payload = {
        "data": train_sha256,
        "train": {k: v for k, v in train.items() if k != "seed"},
        "variants": {name: dict(switches) for name, switches in sorted(variants.items())},
        "seeds": sorted(seeds),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _marker_name(experiment: str, key: str, generation: int) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return f"{experiment}/.parent-{digest}" + (f"~{generation}" if generation else "")


def open_parent(experiment: str, key: str, tags: Mapping[str, str] | None = None) -> str:
    """The parent run of the ablation `key`: created by exactly one of any number of concurrent callers,
    found by all others (see the module docstring). It is left RUNNING; `end_run` finishes it."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client()
    exp_id = experiment_id(experiment)
    for generation in range(100):  # a parent deleted by hand is replaced by the next generation
        name = _marker_name(experiment, key, generation)
        try:
            marker = mlflow_client.create_experiment(
                name, artifact_location=_local_artifact_root(tracking_uri())
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            run_id = _await_marker(mlflow_client, name)
            if _active(mlflow_client, run_id):
                mlflow_client.update_run(run_id, status="RUNNING")
                return run_id
            continue
        all_tags = {ROLE_TAG: "ablation", ABLATION_KEY_TAG: key, **context_tags(), **(tags or {})}
        run = mlflow_client.create_run(exp_id, run_name=parent_name(key), tags=all_tags)
        mlflow_client.set_experiment_tag(marker, MARKER_TAG, run.info.run_id)
        mlflow_client.delete_experiment(marker)  # hidden from the UI; the name stays taken
        return run.info.run_id
    raise PipelineError(f"100 parent runs of ablation {key!r} were deleted: use another ablation key")


def _await_marker(mlflow_client, name: str) -> str:
    deadline = time.monotonic() + PARENT_WAIT_S
    while True:
        marker = mlflow_client.get_experiment_by_name(name)
        run_id = marker.tags.get(MARKER_TAG) if marker is not None else None
        if run_id:
            return run_id
        if time.monotonic() > deadline:
            raise PipelineError(
                f"another process started creating the parent run for this ablation ({name}) but never "
                f"finished: delete that experiment in MLflow (`mlflow gc`) and run again"
            )
        time.sleep(0.2)


def _active(mlflow_client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def parent_run_id(experiment: str, key: str) -> str:
    """`PARENT_ENV` if set (the Prefect flow opens the parent and passes it down), else the parent of
    ablation `key`, opened here."""
    return os.environ.get(PARENT_ENV) or open_parent(experiment, key)


def params_launch_key(params: Mapping[str, Any], train_sha256: str) -> str:
    """`launch_key` of the launch a params file describes: what the train stages and the report of one
    plain `dvc repro` compute alike, each on its own."""
    from pipeline.core.config import section_of
    from pipeline.core.study import read_study
    from pipeline.cyclegan.config import TrainConfig

    study = read_study(params)
    train = section_of(dict(params), "train", TrainConfig)
    return launch_key(train_sha256, train.fingerprint(), study.variants, study.seeds)


def experiment_of(params: Mapping[str, Any]) -> str:
    """The MLflow experiment a params file names (`train.experiment`)."""
    return str((params.get("train") or {}).get("experiment") or DEFAULT_EXPERIMENT)
