"""MLflow runs: creating and reopening them, logging into them in bounded batches, a logger that
survives a store outage, G and F as MLflow models, and finding the run of a training again.

A run is found again by what it trained, never by an id kept in a stage's output: the train recorder
tags the run with its `training_digest` (`DIGEST_TAG`), which the metrics file of the evaluate stage
carries too (`pipeline.cyclegan.checkpoint.training_digest`).
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.core.urls import redact_url
from pipeline.tracking import liveness
from pipeline.tracking.store import client, context_tags, experiment_id, tracking_uri

PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI (markdown)
DIGEST_TAG = "cyclegan.training_digest"
MAX_PARAMS_PER_BATCH = 100  # MLflow's log-batch limits
MAX_METRICS_PER_BATCH = 1000
RETRY_OFFLINE_S = 30.0  # how often a RunLogger whose store went away tries it again
SYSTEM_METRICS_INTERVAL_S = 10.0  # MLflow's own default sampling interval


def start_run(
    experiment_name: str, run_name: str, parent_id: str | None, params: dict[str, Any], tags: dict[str, str]
) -> str:
    """Create a (nested) run with MLflow's context tags (git commit, source, user) and this process's
    identity (`liveness`: a run whose process dies is ended KILLED later), log `params` once."""

    mlflow_client = client()
    all_tags = {**context_tags(), **liveness.process_tags(), **tags}
    if parent_id:
        all_tags[PARENT_TAG] = parent_id
    run = mlflow_client.create_run(experiment_id(experiment_name), run_name=run_name, tags=all_tags)
    log_params(run.info.run_id, params)
    return run.info.run_id


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(key, str(value)) for key, value in params.items()]
    for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client().log_batch(run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])


def log_dataset(run_id: str, name: str, digest: str | None, source: str, context: str = "training") -> None:
    """Record the data a run used as an MLflow dataset input (the UI's "Datasets used")."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(
        name=name,
        digest=(digest or "unknown")[:36],
        source_type="http" if urlparse(source).scheme in ("http", "https") else "local",
        source=json.dumps({"uri": redact_url(source)}),
    )
    client().log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])


def reopen_run(run_id: str) -> bool:
    """Mark an existing run RUNNING again, now held by this process (a resumed training); False if the
    store no longer has it."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client()
    try:
        run = mlflow_client.get_run(run_id)
    except MlflowException:
        return False
    if run.info.lifecycle_stage != "active":
        return False
    set_tags(run_id, liveness.process_tags())
    mlflow_client.update_run(run_id, status="RUNNING")
    return True


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """Terminate a run with `status` (FINISHED, FAILED or KILLED)."""
    client().set_terminated(run_id, status)


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items() if v is not None])


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    """Log metrics in batches (one round trip per 1000 values); works on finished runs too."""
    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    items = [Metric(key, float(value), timestamp, step or 0) for key, value in metrics.items()]
    mlflow_client = client()
    for start in range(0, len(items), MAX_METRICS_PER_BATCH):
        mlflow_client.log_batch(run_id, metrics=items[start : start + MAX_METRICS_PER_BATCH])


def log_artifacts(run_id: str, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """Log a file or a folder as artifact(s) of `run_id`; works on finished runs too."""
    local_path = Path(local_path)
    mlflow_client = client()
    if local_path.is_dir():
        mlflow_client.log_artifacts(run_id, str(local_path), artifact_path)
    else:
        mlflow_client.log_artifact(run_id, str(local_path), artifact_path)


def log_image(run_id: str, image: Any, key: str, step: int) -> None:
    """An image under `key` at `step`: the UI shows a run's images per step and side by side across runs."""
    client().log_image(run_id, image, key=key, step=step, synchronous=True)


class RunLogger:
    """Logging into one run that a store outage never turns into a stopped or stalled training.

    Each call is bounded (`HTTP_SETTINGS`). When one fails, the run goes offline: one warning says so,
    later calls are kept in order instead of sent, and every `RETRY_OFFLINE_S` the logger tries to send
    what it kept; `flush` makes a last try and warns about what it could not send.
    """

    def __init__(self, run_id: str, say=None):
        self.run_id = run_id
        self.pending: list[tuple[str, tuple, dict]] = []
        self.offline_since: float | None = None
        self.last_try = 0.0
        self.say = say or (lambda message: warnings.warn(message, stacklevel=3))

    def _send(self, name: str, args: tuple, kwargs: dict) -> None:
        globals()[name](self.run_id, *args, **kwargs)

    def call(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Call module function `name(run_id, *args, **kwargs)`, or keep it for later while offline."""
        self.pending.append((name, args, kwargs))
        if self.offline_since is not None and time.monotonic() - self.last_try < RETRY_OFFLINE_S:
            return
        self._drain()

    def _drain(self) -> bool:
        self.last_try = time.monotonic()
        while self.pending:
            name, args, kwargs = self.pending[0]
            try:
                self._send(name, args, kwargs)
            except Exception as exc:  # any store failure: training must go on
                if self.offline_since is None:
                    self.offline_since = time.monotonic()
                    self.say(
                        f"MLflow store {redact_url(tracking_uri())} stopped answering "
                        f"({type(exc).__name__}); training goes on, and what it logs is kept and sent "
                        "when the store is back"
                    )
                return False
            self.pending.pop(0)
        if self.offline_since is not None:
            self.say("MLflow store answers again: everything kept while it was away has been sent")
            self.offline_since = None
        return True

    def flush(self) -> bool:
        """Send what is kept; True when nothing is left. Warns about what could not be sent."""
        if self._drain():
            return True
        kinds = sorted({name for name, _, _ in self.pending})
        self.say(
            f"MLflow store still unreachable: {len(self.pending)} call(s) ({', '.join(kinds)}) were not "
            f"logged to run {self.run_id}; the checkpoint and the stage's files are complete"
        )
        return False


def log_generators(run_id: str, nets: Mapping[str, Any], image_size: int) -> None:
    """G and F of a trained variant as MLflow models (pytorch flavour) named "G" and "F", each with a
    signature and an input example (one image in [-1, 1]), so that
    ``mlflow.pytorch.load_model("runs:/<run id>/F")`` returns a generator that translates label maps.
    The package's own code travels with each model, so loading needs torch and MLflow, not a checkout."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    import pipeline

    mlflow.set_tracking_uri(tracking_uri())
    example = np.zeros((1, 3, image_size, image_size), dtype=np.float32)
    # Any batch and any size that is a multiple of 4: the generators are fully convolutional.
    images = Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))])  # unnamed: one array, not a dict
    signature = ModelSignature(inputs=images, outputs=images)
    requirements = [f"torch=={str(torch.__version__).split('+')[0]}", "numpy"]
    with mlflow.start_run(run_id=run_id):  # the fluent API logs models only into an active run
        for name in ("G", "F"):
            model = copy.deepcopy(nets[name]).float().cpu().eval()  # the trained nets stay as they are
            mlflow.pytorch.log_model(
                model,
                name=name,
                signature=signature,
                input_example=example,
                pip_requirements=requirements,  # not inferred: that would import and run the model again
                code_paths=[str(Path(pipeline.__file__).parent)],
                # Pickled with its code: any batch and image size loads and runs. MLflow's default, a
                # torch.export graph, fixes the example's batch of 1, and tracing it took 6 s a network.
                serialization_format="pickle",
            )


def find_training_run(experiment: str, digest: str) -> str | None:
    """The run that trained the weights with `digest` (the latest, if several launches did): where a
    later stage logs its scores. None when the store has none."""
    mlflow_client = client()
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None or not digest:
        return None
    runs = mlflow_client.search_runs(
        [found.experiment_id],
        f"tags.`{DIGEST_TAG}` = '{digest}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def system_metrics(run_id: str, resumed: bool, say) -> Any:
    """MLflow's system metrics monitor (``system/cpu_utilization_percentage``, memory, disk, network,
    ``system/gpu_*`` through NVML on a GPU), started for `run_id`; None when it cannot start (a record:
    never a reason not to train). A resumed run continues its steps."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id,
            sampling_interval=SYSTEM_METRICS_INTERVAL_S,
            resume_logging=resumed,
            tracking_uri=tracking_uri(),
        )
        monitor.start()
        return monitor
    except Exception as exc:
        say(f"MLflow system metrics are off for this run ({type(exc).__name__}: {exc})")
        return None
