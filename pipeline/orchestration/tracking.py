"""MLflow tracking, in one place: the store, the ablation's parent run, the variant runs, logging.

Everything goes through `mlflow.MlflowClient` with explicit run ids (no global "active run"), so a
stage can log into a run it did not start (evaluate into a finished train run, a resumed train run
into the run its checkpoint names) without changing that run's status.

Store: `MLFLOW_TRACKING_URI` if set, else the SQLite file `mlflow.db` at the root of the DVC project
the command runs in (found from the working directory upwards, as `dvc` finds it). For a local SQLite
store the artifacts go to `mlartifacts/` beside the database; a tracking server chooses its own
(run it with ``--serve-artifacts`` so every machine reads them through it).

Tracking is a record, not the result: `check_store` fails a stage within seconds when the store cannot
be reached at its start, and `RunLogger` keeps a store that goes away later from stopping or stalling
training (HTTP retries are bounded; what could not be sent is kept and sent when the store is back).

One parent run per launched ablation, created race-free: the first process to create the experiment
``<experiment>/.parent-<hash of key>`` (experiment names are unique in every MLflow store, so exactly one
succeeds) creates the parent and records its id on that marker experiment, which it then deletes (a
deleted experiment keeps its name, so the marker stays taken but hidden); every other process reads
the id from it. No key ever goes into a search filter, so any characters are safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pipeline.core.errors import PipelineError
from pipeline.core.project import dvc_root
from pipeline.core.urls import redact_url
from pipeline.orchestration import liveness

PARENT_ENV = "CYCLEGAN_PARENT_RUN_ID"
ROLE_TAG = "cyclegan.role"
ABLATION_KEY_TAG = "cyclegan.ablation_key"
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI (markdown)
MARKER_TAG = "cyclegan.parent_run_id"
MAX_PARAMS_PER_BATCH = 100  # MLflow's log-batch limits
MAX_METRICS_PER_BATCH = 1000
# Bounded HTTP behaviour for tracking servers (MLflow's defaults retry for minutes and wait 120 s).
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
PARENT_WAIT_S = 60.0  # how long a process waits for another one to create the shared parent
RETRY_OFFLINE_S = 30.0  # how often a RunLogger whose store went away tries it again


def _bounded_http() -> None:
    for key, value in HTTP_SETTINGS.items():
        os.environ.setdefault(key, value)


def tracking_uri(project: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else `sqlite:///<project root>/mlflow.db` (an absolute URI, so the
    stages and workers of one project share one store whatever their directory); the project is
    `project`, else the DVC repo of the working directory."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = project or dvc_root(Path.cwd()) or Path.cwd()
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


@contextlib.contextmanager
def use_store(uri: str) -> Iterator[None]:
    """Every call in the block (and every process started from it) logs to `uri`."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def client():
    """An `MlflowClient` on `tracking_uri()` (mlflow imported here: it takes seconds to import)."""
    import mlflow

    _bounded_http()
    return mlflow.MlflowClient(tracking_uri=tracking_uri())


def check_store(timeout_s: float = 5.0) -> None:
    """Fail fast, with one line, when the store cannot be reached (a server that is down, a SQLite
    file that cannot be created); call it before any work that would otherwise be lost."""
    uri = tracking_uri()
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        import requests

        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s).raise_for_status()
        except requests.RequestException as exc:
            raise PipelineError(
                f"the MLflow tracking server at {redact_url(uri)} does not answer ({type(exc).__name__}): "
                "start it, fix MLFLOW_TRACKING_URI, or unset it to use the project's mlflow.db"
            ) from None
        return
    if scheme == "sqlite":
        folder = Path(unquote(urlparse(uri).path[1:])).parent
        if not os.access(folder if folder.exists() else folder.parent, os.W_OK):
            raise PipelineError(f"cannot write the MLflow store {uri}: the folder is not writable")


def _local_artifact_root(uri: str) -> str | None:
    """`file://.../mlartifacts` beside a SQLite database; None for a server (it chooses)."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or not parsed.path or parsed.path in ("/", "/:memory:"):
        return None
    # sqlite:////abs/path.db parses to path "//abs/path.db"; sqlite:///rel.db to "/rel.db".
    db_path = Path(unquote(parsed.path[1:]))
    return (db_path.resolve().parent / "mlartifacts").as_uri()


def experiment_id(name: str) -> str:
    """Id of experiment `name`, created if missing (race-free: names are unique in the store)."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=_local_artifact_root(tracking_uri()))
    except MlflowException:  # created meanwhile by a parallel worker
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def context_tags() -> dict[str, str]:
    """MLflow's own provenance tags for this process: user, source (entry point), git commit."""
    from mlflow.tracking.context import registry

    return {k: str(v) for k, v in registry.resolve_tags().items()}


def _marker_name(experiment: str, key: str, generation: int) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return f"{experiment}/.parent-{digest}" + (f"~{generation}" if generation else "")


def open_parent(experiment: str, key: str, run_name: str, tags: Mapping[str, str] | None = None) -> str:
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
        run = mlflow_client.create_run(exp_id, run_name=run_name, tags=all_tags)
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


def parent_run_id(experiment: str, key: str, run_name: str) -> str:
    """`CYCLEGAN_PARENT_RUN_ID` if set (the Prefect flow opens the parent and passes it down), else the
    parent of ablation `key`, opened here."""
    return os.environ.get(PARENT_ENV) or open_parent(experiment, key, run_name)


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


def eval_metrics(metrics: dict) -> dict[str, float]:
    """The scores under their MLflow names: ``eval/fcn/...``, ``eval/fid/...`` and the per-class IoU as
    ``eval/fcn/<direction>/iou/<class>`` (absent classes and null FIDs left out)."""
    tracked = {
        f"eval/{key}": float(value)
        for key, value in metrics.items()
        if key.startswith(("fcn/", "fid/")) and value is not None
    }
    for direction, per_class in (metrics.get("per_class_iou") or {}).items():
        for name, value in per_class.items():
            if value is not None:
                tracked[f"eval/fcn/{direction}/iou/{name.replace(' ', '_')}"] = float(value)
    return tracked


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


def log_generators(run_id: str, nets: Any, image_size: int) -> None:
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
        for name, net in (("G", nets.G), ("F", nets.F)):
            model = net.float().cpu().eval()
            mlflow.pytorch.log_model(
                model,
                name=name,
                signature=signature,
                input_example=example,
                pip_requirements=requirements,  # not inferred: that would import and run the model again
                code_paths=[str(Path(pipeline.__file__).parent)],
            )
