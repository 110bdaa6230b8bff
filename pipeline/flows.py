"""The Prefect flow `cyclegan` (deployment `ablation`): the DVC pipeline as tasks, one MLflow parent run.

Every task runs one DVC stage through DVC itself (``dvc repro <stage>``), so whatever the flow makes is
recorded in ``dvc.lock`` and the DVC cache exactly as a hand-typed ``dvc repro`` would record it: after
a flow run ``dvc status`` is clean and ``dvc repro`` has nothing to do. The flow adds what DVC does not
do: the order (shared stages once, then each variant, then the report), retries with backoff for the
download, carrying on past a failing variant, the MLflow parent run that groups the variant runs, and
a record of the parameter overrides.

Overrides are applied to ``params.yaml`` in place with DVC's own machinery (what
``dvc exp run -S key=value`` uses) and stay there, because ``dvc.lock`` records the params each
stage ran with: restoring the file afterwards would make ``dvc status`` report every stage as changed
and the next ``dvc repro`` would silently retrain. So the change is never silent: the file as the run
found it is saved beside it (`BACKUP_NAME`) and in the MLflow parent run, the flow logs a warning at
its start and end, and the run's Prefect artifact says how to restore it. Choosing variants is an
override too (``~variants.<name>`` for the others), so the variant stages DVC expands, the report and
``dvc.lock`` all agree on which variants exist.

DVC commands in one workspace never race: each waits for DVC's repo lock (``dvc --wait-for-lock``)
and the flow runs them one after another. Parallelism comes from more workspaces (work-pool workers,
each with its own clone), and the tag concurrency limit `GPU_TAG` caps GPU stages across all of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from pipeline.config import PROJECT_ROOT, read_params
from pipeline.errors import PipelineError
from pipeline.fileio import atomic_write_text
from pipeline.overrides import normalize_overrides

FLOW_NAME = "cyclegan"
DEPLOYMENT_NAME = "ablation"
PARAMS_NAME = "params.yaml"
BACKUP_NAME = "params.before-overrides.yaml"  # params.yaml as the last run with overrides found it
SHARED_STAGES = ("download", "split", "evaluator")
VARIANT_STAGES = ("train", "translate", "evaluate")
REPORT_STAGE = "report"
GPU_STAGES = frozenset({"evaluator", "train", "translate", "evaluate"})
GPU_TAG = "gpu"  # tag concurrency limit: GPU stages running at once, over every flow run on the server
DVC_TAG = "dvc"
DOWNLOAD_RETRIES = 3
DOWNLOAD_BACKOFF_S = 10.0  # 10 s, 20 s, 40 s (+ jitter) between whole-stage retries
ARTIFACT_KEY = "cyclegan-ablation"
PREFECT_RUN_TAG = "prefect.flow_run_id"
DATA_HASH_TAG = "dvc.data_hash"
OUTPUT_TAIL_LINES = 60

# Runs one DVC command (args after `dvc`, e.g. ["repro", "train@cyclegan"]) in a workspace with an
# environment; raises StageFailed. The default is `dvc_command`; tests pass a fake.
StageRunner = Callable[[Sequence[str], Path, Mapping[str, str]], None]


class StageFailed(PipelineError):
    """A DVC command exited non-zero; the message carries the stage's own error line."""


# --- overrides -----------------------------------------------------------------------------------------


def variant_overrides(known: Sequence[str], selected: Sequence[str] | None) -> list[str]:
    """``~variants.<name>`` for each known variant not selected (None selects all of them)."""
    if selected is None:
        return []
    if not selected:
        raise PipelineError("variants is empty: name at least one, or leave it out to run all of them")
    unknown = [name for name in selected if name not in known]
    if unknown:
        raise PipelineError(
            f"unknown variant(s) {', '.join(unknown)}; params.yaml `variants:` has "
            f"{', '.join(known) or 'none'} "
            f"(restore the full list from {BACKUP_NAME} or git if an earlier run removed some)"
        )
    return [f"~variants.{name}" for name in known if name not in selected]


@dataclasses.dataclass(frozen=True)
class ParamsChange:
    """What `apply_params_overrides` did to params.yaml."""

    overrides: list[str]  # everything applied, in order (user overrides, then variant deselection)
    variants: list[str]  # the variants the run will execute, in order
    changed: bool  # params.yaml was rewritten
    backup: Path | None  # the file as found, when changed
    before: dict[str, Any]
    after: dict[str, Any]


def apply_params_overrides(
    params_path: str | os.PathLike,
    overrides: Sequence[str] = (),
    variants: Sequence[str] | None = None,
    backup_path: str | os.PathLike | None = None,
) -> ParamsChange:
    """Apply Hydra `overrides` and the variant selection to `params_path` the way ``dvc exp run -S`` does.

    The overrides are applied to a scratch copy first, so a bad key or value fails before the real
    file is touched. When the result differs from the file (compared as data: DVC's YAML writer
    re-wraps lines), the file as found is written to `backup_path` (default: `BACKUP_NAME` beside it)
    and the new one moved into place atomically. Applying the same overrides again changes nothing
    and keeps the earlier backup.
    """
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    params_path = Path(params_path)
    backup_path = Path(backup_path) if backup_path is not None else params_path.with_name(BACKUP_NAME)
    original_text = params_path.read_text()
    before = read_params(params_path)
    known = list(before.get("variants") or {})
    applied = list(overrides) + variant_overrides(known, variants)
    if not applied:
        return ParamsChange([], known, False, None, before, before)

    scratch = params_path.with_name(f".{params_path.name}.{os.getpid()}.overrides.yaml")
    try:
        scratch.write_text(original_text)
        try:
            apply_overrides(scratch, applied)
        except InvalidArgumentError as exc:
            cause = exc.__cause__ or exc
            raise PipelineError(
                f"invalid override(s) {applied}: {str(cause).splitlines()[0]} "
                "(syntax as in `dvc exp run -S`: key=value, ++key=value to add a key, ~key to delete one)"
            ) from None
        after = read_params(scratch)
        left = list(after.get("variants") or {})
        if not left:
            raise PipelineError(f"overrides {applied} leave no variant in `variants:`: keep at least one")
        if after == before:
            return ParamsChange(applied, _ordered(left, variants), False, None, before, after)
        atomic_write_text(backup_path, original_text)
        os.replace(scratch, params_path)
    finally:
        scratch.unlink(missing_ok=True)
    return ParamsChange(applied, _ordered(left, variants), True, backup_path, before, after)


def _ordered(available: list[str], selected: Sequence[str] | None) -> list[str]:
    """The user's order when they named variants, else params.yaml's."""
    if selected is None:
        return available
    return [name for name in dict.fromkeys(selected) if name in available]


# --- running DVC ---------------------------------------------------------------------------------------


def _error_detail(lines: Sequence[str]) -> str:
    """The stage's own ``error: ...`` line (pipeline.errors convention), then DVC's ``ERROR: ...``."""
    ours = [line for line in lines if line.startswith("error:")]
    dvc = [line for line in lines if line.startswith("ERROR:")]
    picked = ours[-1:] + dvc[-1:]
    return "; ".join(picked) if picked else (lines[-1] if lines else "no output")


def _logger():
    """The Prefect run logger inside a flow or task, a plain logger elsewhere (e.g. a Python shell)."""
    try:
        return get_run_logger()
    except Exception:  # prefect raises MissingContextError outside a run
        import logging

        return logging.getLogger(__name__)


def dvc_command(args: Sequence[str], project_dir: Path, env: Mapping[str, str]) -> None:
    """Run ``dvc --wait-for-lock <args>`` in `project_dir`, streaming its output into the run's log.

    ``--wait-for-lock`` makes a second DVC process (a user's ``dvc status``, another flow run in the
    same workspace) queue on DVC's repo lock instead of failing. DVC runs in its own process group so
    that a cancelled flow run stops the stage's training process too, not only DVC.
    """
    logger = _logger()
    argv = [sys.executable, "-m", "dvc", "--wait-for-lock", *args]
    logger.info("$ dvc %s", " ".join(args))
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
    process = subprocess.Popen(
        argv,
        cwd=project_dir,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line:
                logger.info(line)
                tail.append(line)
        returncode = process.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        raise
    if returncode != 0:
        raise StageFailed(f"`dvc {' '.join(args)}` exited with {returncode}: {_error_detail(list(tail))}")


@task(name="dvc-stage", task_run_name="{stage}", cache_policy=NO_CACHE, tags=[DVC_TAG])
def run_stage(
    stage: str, project_dir: Path, env: Mapping[str, str], runner: StageRunner, single_item: bool = False
) -> str:
    """One DVC stage (and whatever upstream of it is out of date) via ``dvc repro``."""
    runner(["repro", *(["--single-item"] if single_item else []), stage], project_dir, env)
    return stage


@task(name="dvc-push", task_run_name="dvc push --run-cache", cache_policy=NO_CACHE, tags=[DVC_TAG])
def push_run_cache(project_dir: Path, env: Mapping[str, str], runner: StageRunner) -> None:
    """Outputs and DVC's run cache to the default remote: another clone then reproduces by checkout."""
    runner(["push", "--run-cache"], project_dir, env)


def stage_task(stage: str):
    """`run_stage` named and tagged for `stage` (``train@cyclegan`` -> task ``train``, tags dvc, gpu)."""
    kind = stage.split("@", 1)[0]
    tags = {DVC_TAG, GPU_TAG} if kind in GPU_STAGES else {DVC_TAG}
    options: dict[str, Any] = {"name": kind, "tags": tags}
    if kind == "download":
        # The stage retries transient HTTP errors itself; this covers a longer outage of the mirror.
        options.update(
            retries=DOWNLOAD_RETRIES,
            retry_delay_seconds=exponential_backoff(DOWNLOAD_BACKOFF_S),
            retry_jitter_factor=0.2,
        )
    return run_stage.with_options(**options)


# --- Prefect and MLflow bookkeeping --------------------------------------------------------------------


def visible_gpus() -> int:
    """CUDA devices this process sees (0 without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def ensure_concurrency_limit(tag: str, slots: int | None) -> int:
    """Make sure a tag concurrency limit exists for `tag`; returns the limit in force.

    With `slots` None an existing limit is left as the team set it and a missing one is created with
    one slot per visible GPU (at least 1). An explicit `slots` sets the limit.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        if slots is None:
            try:
                return client.read_concurrency_limit_by_tag(tag).concurrency_limit
            except ObjectNotFound:
                slots = max(1, visible_gpus())
        if slots < 1:
            raise PipelineError(f"gpu_slots must be >= 1, got {slots}")
        client.create_concurrency_limit(tag=tag, concurrency_limit=slots)  # an upsert on the server
        return slots


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


def split_hash(project_dir: Path) -> str | None:
    """The md5 dvc.lock records for the split stage's output (the data version every variant saw)."""
    lock_path = project_dir / "dvc.lock"
    if not lock_path.is_file():
        return None
    lock = yaml.safe_load(lock_path.read_text()) or {}
    outs = ((lock.get("stages") or {}).get("split") or {}).get("outs") or []
    return outs[0].get("md5") if outs else None


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
    """Find or create the ablation's parent run (`pipeline.tracking`) and mark it running."""
    from pipeline import tracking

    uri = store_uri(project_dir)
    with _environ(MLFLOW_TRACKING_URI=uri):
        run_id = tracking.parent_run_id(experiment, ablation_key)
    parent = ParentRun(run_id, uri)
    parent.client().update_run(run_id, status="RUNNING", name=run_name)
    return parent


def stage_env(parent: ParentRun) -> dict[str, str]:
    """The environment DVC and the stages run in: the flow's, plus the store and the parent run."""
    from pipeline import tracking

    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = parent.uri
    env[tracking.PARENT_ENV] = parent.run_id
    # `python -m stages.x` in dvc.yaml must be this environment's Python, whatever PATH the
    # serving process was started with.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TQDM_MININTERVAL", "15")  # progress bars become log lines: one every 15 s
    return env


def _flow_run_info() -> dict[str, str | None]:
    from prefect.runtime import deployment, flow_run

    return {"id": flow_run.id, "name": flow_run.name, "deployment": deployment.name, "url": flow_run.ui_url}


def _markdown_summary(
    change: ParamsChange, outcomes: Mapping[str, str], parent: ParentRun, report: str, project_dir: Path
) -> str:
    lines = ["# CycleGAN ablation", "", "| variant | result |", "|---|---|"]
    lines += [f"| `{name}` | {outcome} |" for name, outcome in outcomes.items()]
    lines += ["", f"Report: {report}", "", f"MLflow parent run `{parent.run_id}` in `{parent.uri}`.", ""]
    if change.overrides:
        lines += ["## Parameter overrides", ""]
        lines += [f"- `{item}`" for item in change.overrides]
        if change.changed:
            lines += [
                "",
                f"`{project_dir / PARAMS_NAME}` now holds these values, so `dvc.lock` and `dvc status`",
                f"agree with the outputs. The file as this run found it is `{change.backup}` (also logged",
                f"to the parent run under `params/`). Restore it with `cp {BACKUP_NAME} {PARAMS_NAME}` or",
                f"`git checkout {PARAMS_NAME}`, then `dvc repro` (or `dvc checkout` with dvc.lock restored).",
            ]
        else:
            lines += ["", f"`{PARAMS_NAME}` already held these values: nothing changed."]
    else:
        lines += ["No parameter overrides: params.yaml as it is in the workspace."]
    return "\n".join(lines)


# --- the flow ------------------------------------------------------------------------------------------


def _run_stages(
    variants: Sequence[str],
    project: Path,
    env: Mapping[str, str],
    runner: StageRunner,
    outcomes: dict[str, str],
    parent: ParentRun,
    push: bool,
) -> str:
    """Shared stages, each variant's chain (a failure is recorded in `outcomes`, not raised), the report.

    Returns what became of the report. A failing shared stage raises: no variant can run without it.
    """
    logger = get_run_logger()
    for stage in SHARED_STAGES:
        stage_task(stage)(stage, project, env, runner)
    parent.tag({DATA_HASH_TAG: split_hash(project)})

    for name in variants:
        try:
            for kind in VARIANT_STAGES:
                stage_task(f"{kind}@{name}")(f"{kind}@{name}", project, env, runner)
        except Exception as exc:  # one variant failing must not stop the others
            outcomes[name] = f"failed: {exc}"
            logger.error("variant %s failed: %s", name, exc)
        else:
            outcomes[name] = "completed"

    if all(outcome == "completed" for outcome in outcomes.values()):
        stage_task(REPORT_STAGE)(REPORT_STAGE, project, env, runner)
        report = "reports/ (dvc.lock up to date)"
    else:
        # A plain `dvc repro report` would rerun the failed variants first; report on the others only.
        try:
            stage_task(REPORT_STAGE)(REPORT_STAGE, project, env, runner, single_item=True)
            report = "reports/ covers the completed variants only (dvc status lists the failed ones)"
        except Exception as exc:  # the variant failures are what the run reports
            report = f"not written: {exc}"
    if push:
        push_run_cache(project, env, runner)
    return report


def run_ablation(
    variants: Sequence[str] | None,
    overrides: Mapping[str, Any] | Sequence[str] | str | None,
    project_dir: str | os.PathLike | None,
    ablation_key: str | None = None,
    gpu_slots: int | None = None,
    push: bool = False,
    runner: StageRunner = dvc_command,
) -> dict[str, Any]:
    """The body of the `cyclegan` flow (separate so tests can run it with a fake `runner`)."""
    from prefect.artifacts import create_markdown_artifact

    logger = get_run_logger()
    project = Path(project_dir or PROJECT_ROOT).resolve()
    params_path = project / PARAMS_NAME
    if not (project / "dvc.yaml").is_file() or not params_path.is_file():
        raise PipelineError(f"{project} has no dvc.yaml and params.yaml: pass project_dir=<the project root>")

    change = apply_params_overrides(
        params_path, normalize_overrides(overrides), variants, project / BACKUP_NAME
    )
    if change.changed:
        logger.warning(
            "params.yaml overrides applied (as `dvc exp run -S` does): %s. params.yaml keeps them so that "
            "dvc.lock matches the outputs; the file as found is saved in %s (restore: cp %s %s)",
            " ".join(change.overrides),
            change.backup,
            BACKUP_NAME,
            PARAMS_NAME,
        )
    elif change.overrides:
        logger.info("params.yaml already holds the overrides %s", " ".join(change.overrides))
    logger.info("variants: %s", ", ".join(change.variants))

    slots = ensure_concurrency_limit(GPU_TAG, gpu_slots)
    logger.info("tag concurrency limit %r: %d slot(s)", GPU_TAG, slots)

    run_info = _flow_run_info()
    experiment = (change.after.get("train") or {}).get("experiment") or "cyclegan-ablation"
    key = ablation_key or run_info["id"] or "local"
    parent = open_parent_run(project, experiment, key, f"ablation-{run_info['name'] or key[:8]}")
    logger.info("MLflow parent run %s (experiment %r) in %s", parent.run_id, experiment, parent.uri)
    parent.tag(
        {
            PREFECT_RUN_TAG: run_info["id"],
            "prefect.flow_run_name": run_info["name"],
            "prefect.deployment": run_info["deployment"],
            "prefect.flow_run_url": run_info["url"],
            "cyclegan.params_changed": change.changed,
            **git_state(project),
        }
    )
    parent.params({"overrides": json.dumps(change.overrides), "variants": ",".join(change.variants)})
    parent.artifact(params_path, "params")
    if change.backup is not None:
        parent.artifact(change.backup, "params")

    env = stage_env(parent)
    outcomes: dict[str, str] = {name: "not run" for name in change.variants}
    report = "not run"
    status = "FAILED"
    try:
        report = _run_stages(change.variants, project, env, runner, outcomes, parent, push)
        status = "FINISHED" if all(o == "completed" for o in outcomes.values()) else "FAILED"
    finally:
        parent.finish(status)
        create_markdown_artifact(
            _markdown_summary(change, outcomes, parent, report, project),
            key=ARTIFACT_KEY,
            description="variants, overrides and the MLflow parent run of this ablation",
        )
        if change.changed:
            logger.warning(
                "params.yaml still holds this run's overrides; the original is in %s", change.backup
            )

    failures = {name: why.removeprefix("failed: ") for name, why in outcomes.items() if why != "completed"}
    if failures:
        completed = [name for name, outcome in outcomes.items() if outcome == "completed"]
        raise PipelineError(
            f"variant(s) failed: {'; '.join(f'{name} ({why})' for name, why in failures.items())}. "
            f"Completed: {', '.join(completed) or 'none'}. Fix the cause and run again: completed stages are "
            "up to date in dvc.lock and are skipped."
        )
    return {
        "variants": outcomes,
        "overrides": change.overrides,
        "params_backup": str(change.backup or ""),
        "mlflow_parent_run_id": parent.run_id,
        "report": report,
    }


@flow(name=FLOW_NAME, description="CycleGAN loss ablation: DVC stages per variant, one MLflow parent run")
def cyclegan(
    variants: list[str] | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    project_dir: str | None = None,
    ablation_key: str | None = None,
    gpu_slots: int | None = None,
    push: bool = False,
) -> dict[str, Any]:
    """Run the ablation: download, split, evaluator once; train, translate, evaluate per variant; report.

    Args:
        variants: which `variants:` of params.yaml to run (default: all); the others are removed
            from params.yaml for this and later runs (an override, see the module docstring).
        overrides: params overrides as in ``dvc exp run -S``: a list like ``["train.max_steps=5"]``
            or a mapping like ``{"train.max_steps": 5}``; recorded in MLflow and in params.yaml.
        project_dir: the DVC project (default: where this package lives).
        ablation_key: groups runs under one MLflow parent run (default: this flow run's id); give
            several flow runs the same key to collect their variants in one parent.
        gpu_slots: set the `gpu` tag concurrency limit (default: keep it, or create it with one
            slot per visible GPU).
        push: ``dvc push --run-cache`` at the end, so a machine sharing the DVC remote can
            ``dvc pull --run-cache`` and reproduce without retraining (scale-out).
    """
    return run_ablation(variants, overrides, project_dir, ablation_key, gpu_slots, push)
