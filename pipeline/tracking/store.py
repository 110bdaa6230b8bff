"""The MLflow store: where it is, reaching it, its experiments.

Everything in `pipeline.tracking` goes through `mlflow.MlflowClient` with explicit run ids (no global
"active run"), so a stage can log into a run it did not start (evaluate into a finished train run, a
resumed train run into the run its checkpoint's recorder state names) without changing that run's
status.

Store: `MLFLOW_TRACKING_URI` if set, else the SQLite file `mlflow.db` at the root of the DVC project
the command runs in (found from the working directory upwards, as `dvc` finds it). For a local SQLite
store the artifacts go to `mlartifacts/` beside the database; a tracking server chooses its own
(run it with ``--serve-artifacts`` so every machine reads them through it).

Tracking is a record, not the result: `check_store` fails a stage within seconds when the store cannot
be reached at its start, and `pipeline.tracking.runs.RunLogger` keeps a store that goes away later
from stopping or stalling training (HTTP retries are bounded: `HTTP_SETTINGS`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from pipeline.core.errors import PipelineError
from pipeline.core.project import dvc_root
from pipeline.core.urls import redact_url

# Bounded HTTP behaviour for tracking servers (MLflow's defaults retry for minutes and wait 120 s).
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


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
        database = Path(unquote(urlparse(uri).path[1:]))
        folder = database.parent
        if not os.access(folder if folder.exists() else folder.parent, os.W_OK):
            raise PipelineError(f"cannot write the MLflow store {uri}: the folder is not writable")
        _create_tables_once(database)


def _create_tables_once(database: Path) -> None:
    """Create (or migrate) a SQLite store's tables, one process at a time: runs started together on a
    fresh `mlflow.db` would otherwise each run MLflow's schema migration, and all but one fail on it
    (``duplicate column name``)."""
    import fcntl

    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(f".{database.name}.init.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, however this process ends
        client().search_experiments(max_results=1)


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
