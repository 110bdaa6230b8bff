"""MLflow tracking, in one place: the store, the ablation's parent run, the variant runs, logging.

Everything goes through `mlflow.MlflowClient` with explicit run ids (no global "active run"), so a
stage can log into a run it did not start (evaluate into a finished train run, a resumed train run
into the run its checkpoint names) without changing that run's status.

Store: `MLFLOW_TRACKING_URI` if set, else the SQLite file `mlflow.db` in the project root (an absolute
URI, so stages and workers in any directory share one store). For a local SQLite store the artifacts
go to `mlartifacts/` beside the database file, never into the current directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pipeline.core.config import PROJECT_ROOT

PARENT_ENV = "CYCLEGAN_PARENT_RUN_ID"
ROLE_TAG = "cyclegan.role"
ABLATION_KEY_TAG = "cyclegan.ablation_key"
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAMS_PER_BATCH = 100  # MLflow's log-batch limits
MAX_METRICS_PER_BATCH = 1000


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else `sqlite:///<project root>/mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def client():
    """An `MlflowClient` on `tracking_uri()` (mlflow imported here: it takes seconds to import)."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri())


def _local_artifact_root(uri: str) -> str | None:
    """`file://.../mlartifacts` beside a SQLite database; None for a server (it chooses)."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or not parsed.path or parsed.path in ("/", "/:memory:"):
        return None
    # sqlite:////abs/path.db parses to path "//abs/path.db"; sqlite:///rel.db to "/rel.db".
    db_path = Path(unquote(parsed.path[1:]))
    return (db_path.resolve().parent / "mlartifacts").as_uri()


def experiment_id(name: str) -> str:
    """Id of experiment `name`, created if missing."""
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.create_experiment(name, artifact_location=_local_artifact_root(tracking_uri()))
    except MlflowException:  # created meanwhile by a parallel worker
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def parent_run_id(experiment_name: str, ablation_key: str) -> str:
    """The ablation's parent run: `CYCLEGAN_PARENT_RUN_ID` if set (the Prefect flow sets it), else the
    run tagged with this ablation key, created (and marked finished: it only groups) if none exists."""
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    mlflow_client = client()
    exp_id = experiment_id(experiment_name)
    found = mlflow_client.search_runs(
        [exp_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'ablation' and tags.`{ABLATION_KEY_TAG}` = '{ablation_key}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = mlflow_client.create_run(
        exp_id,
        run_name=f"ablation-{ablation_key[:8]}",
        tags={ROLE_TAG: "ablation", ABLATION_KEY_TAG: ablation_key},
    )
    mlflow_client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def start_run(
    experiment_name: str, run_name: str, parent_id: str | None, params: dict[str, Any], tags: dict[str, str]
) -> str:
    """Create a (nested) run, log `params` once; returns its id."""
    from mlflow.entities import Param

    mlflow_client = client()
    all_tags = dict(tags)
    if parent_id:
        all_tags[PARENT_TAG] = parent_id
    run = mlflow_client.create_run(experiment_id(experiment_name), run_name=run_name, tags=all_tags)
    items = [Param(key, str(value)) for key, value in params.items()]
    for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
        mlflow_client.log_batch(run.info.run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])
    return run.info.run_id


def reopen_run(run_id: str) -> bool:
    """Mark an existing run RUNNING again (a resumed training); False if the store no longer has it."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client()
    try:
        run = mlflow_client.get_run(run_id)
    except MlflowException:
        return False
    if run.info.lifecycle_stage != "active":
        return False
    mlflow_client.update_run(run_id, status="RUNNING")
    return True


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """Terminate a run with `status` (FINISHED, FAILED or KILLED)."""
    client().set_terminated(run_id, status)


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


# --- the ablation's parent run, as the flow keeps it -------------------------------------------------


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the block (the tracking module reads its store from the env)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def store_uri(project_dir: Path) -> str:
    """`MLFLOW_TRACKING_URI`, else the SQLite store at the root of `project_dir` (as `tracking` does)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_dir / 'mlflow.db'}"


def git_state(project_dir: Path) -> dict[str, str]:
    """HEAD's commit, and whether tracked files differ from it (overrides make params.yaml differ)."""

    def git(*args: str) -> str | None:
        result = subprocess.run(["git", *args], cwd=project_dir, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    return {"mlflow.source.git.commit": commit, "git.dirty": str(bool(git("status", "--porcelain", "-uno")))}


@dataclasses.dataclass
class ParentRun:
    """The MLflow run that groups one ablation's variant runs."""

    run_id: str
    uri: str

    def client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.uri)

    def tag(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client().log_batch(
            self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        )

    def params(self, params: Mapping[str, Any]) -> None:
        """Log params; a key already logged with another value (a reused ablation key) becomes a tag."""
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        client = self.client()
        for key, value in params.items():
            try:
                client.log_batch(self.run_id, params=[Param(key, str(value))])
            except MlflowException:
                client.set_tag(self.run_id, f"{key}.latest", str(value))

    def artifact(self, path: Path, artifact_path: str) -> None:
        self.client().log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str) -> None:
        self.client().set_terminated(self.run_id, status)


def open_parent_run(project_dir: Path, experiment: str, ablation_key: str, run_name: str | None) -> ParentRun:
    """Find or create the ablation's parent run (`pipeline.orchestration.tracking`) and mark it running."""
    uri = store_uri(project_dir)
    with _environ(MLFLOW_TRACKING_URI=uri):
        run_id = parent_run_id(experiment, ablation_key)
    parent = ParentRun(run_id, uri)
    parent.client().update_run(run_id, status="RUNNING", name=run_name)
    return parent
