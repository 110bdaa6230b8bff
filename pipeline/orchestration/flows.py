"""The Prefect flow `cyclegan` (deployments `ablation` and `fan-out`): the DVC pipeline as tasks, one
MLflow parent run.

Every task runs one DVC stage through DVC itself (``dvc repro <stage>``), so whatever the flow makes is
recorded in ``dvc.lock`` and the DVC cache exactly as a hand-typed ``dvc repro`` would record it: after
a flow run ``dvc status`` is clean and ``dvc repro`` has nothing to do. The flow adds what DVC does not
do: the order (shared stages once, then each (variant, seed), then the report), retries with backoff
for the download, carrying on past a failing run, the MLflow parent run that groups the variant runs,
and a record of the parameter overrides.

Overrides are applied to ``params.yaml`` in place with DVC's own machinery (what
``dvc exp run -S key=value`` uses) and stay there, because ``dvc.lock`` records the params each
stage ran with: restoring the file afterwards would make ``dvc status`` report every stage as changed
and the next ``dvc repro`` would silently retrain. So the change is never silent: the file as the run
found it is saved beside it (`BACKUP_NAME`) and in the MLflow parent run, the flow logs a warning at
its start and end, and the run's Prefect artifact says how to restore it. Choosing ``variants`` and
``seeds`` is not an override: it picks which stages run and leaves params.yaml as it is, so the
report (which covers every (variant, seed) of params.yaml) is written only by a run that has them all.

One flow run at a time per workspace (`workspace.workspace_lock`). Parallelism comes from more
workspaces: with ``fan_out`` the run starts one child flow run per (variant, seed) on the work pool
(`fanout`), each in a worker's own clone, then collects their results from the DVC remote's run cache.
The tag concurrency limit `GPU_TAG` caps GPU stages across all of them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from pipeline.core.errors import PipelineError
from pipeline.core.overrides import (
    BACKUP_NAME,
    PARAMS_NAME,
    ParamsChange,
    apply_params_overrides,
    normalize_overrides,
)
from pipeline.core.project import stage_output_md5
from pipeline.core.study import read_study, run_name
from pipeline.core.urls import redact_text, redact_url
from pipeline.orchestration import concurrent, fanout, records, workspace
from pipeline.orchestration.dvc_runner import StageRunner, dvc_command
from pipeline.orchestration.tasks import (
    GPU_TAG,
    REPORT_STAGE,
    SHARED_STAGES,
    check_worker_env,
    ensure_concurrency_limit,
    push_run_cache,
    restore_only_env,
    stage_env,
    stage_task,
    use_shared_remote,
    visible_gpus,
)
from pipeline.tracking import liveness, runs, store
from pipeline.tracking.parent import experiment_of, parent_name

FLOW_NAME = "cyclegan"
DEPLOYMENT_NAME = "ablation"  # the unit of work; on a work pool for the fan-out (prefect.yaml)
FAN_OUT_DEPLOYMENT_NAME = "fan-out"
DATA_HASH_TAG = "dvc.data_hash"
RESTORE_ONLY = (
    "this stage is not in the DVC remote's run cache, and the fan-out's collect restores stages, it "
    "never runs them: its worker did not push it (see that child flow run), or its clone is at another "
    "commit; run the fan-out again"
)


def select_runs(
    params: Mapping[str, Any], variants: Sequence[str] | None, seeds: Sequence[int] | None
) -> tuple[list[tuple[str, int]], bool]:
    """The (variant, seed) pairs a run executes, and whether they are all of params.yaml's.

    None selects every variant (seed) of params.yaml, in its order; a list selects those, in the
    caller's order; an empty list of variants selects none (only the shared stages run).
    """
    study = read_study(params)
    unknown = [name for name in variants or () if name not in study.variants]
    if unknown:
        listed = ", ".join(study.variants) or "none"
        raise PipelineError(f"unknown variant(s) {', '.join(unknown)}; params.yaml `variants:` has {listed}")
    missing_seeds = [seed for seed in seeds or () if seed not in study.seeds]
    if missing_seeds or seeds == []:
        raise PipelineError(
            f"seeds {list(seeds)} must be a non-empty selection of params.yaml `seeds:` {study.seeds}"
        )
    chosen = list(dict.fromkeys(variants)) if variants is not None else list(study.variants)
    chosen_seeds = list(dict.fromkeys(seeds)) if seeds is not None else study.seeds
    pairs = [(variant, seed) for variant in chosen for seed in chosen_seeds]
    return pairs, set(pairs) == set(study.runs)


@dataclasses.dataclass
class Launch:
    """What one flow run works on and with, once prepared (under the workspace lock)."""

    project: Path
    change: ParamsChange
    pairs: list[tuple[str, int]]  # the selected (variant, seed)s
    complete: bool  # they are every (variant, seed) of params.yaml: the report can be written
    store: str
    parent_id: str
    owns_parent: bool  # this run created (or reopened) the parent and ends it
    env: dict[str, str]
    experiment: str
    jobs: int = 1  # runs trained at once (`concurrent`)

    @property
    def names(self) -> list[str]:
        return [run_name(variant, seed) for variant, seed in self.pairs]


def _prepare(
    project: Path,
    overrides: Sequence[str],
    selection: tuple[Sequence[str] | None, Sequence[int] | None],
    runner: StageRunner,
    run_info: Mapping[str, str | None],
    key: str,
    parent_run_id: str | None,
) -> Launch:
    """The shared remote, the overrides, the selection, the store and the parent run."""
    logger = get_run_logger()
    check_worker_env()
    use_shared_remote(project, runner)
    params_path = project / PARAMS_NAME
    change = apply_params_overrides(params_path, overrides, project / BACKUP_NAME)
    if change.changed:
        logger.warning(
            "params.yaml overrides applied (as `dvc exp run -S` does): %s. params.yaml keeps them so that "
            "dvc.lock matches the outputs; the file as found is saved in %s (restore: cp %s %s)",
            redact_text(" ".join(change.overrides)),
            change.backup,
            BACKUP_NAME,
            PARAMS_NAME,
        )
    elif change.overrides:
        logger.info("params.yaml already holds the overrides %s", redact_text(" ".join(change.overrides)))
    pairs, complete = select_runs(change.after, *selection)
    listed = ", ".join(run_name(v, s) for v, s in pairs) or "none (the shared stages only)"
    logger.info("runs: %s%s", listed, "" if complete else " (a part of params.yaml's variants x seeds)")

    experiment = experiment_of(change.after)
    store_uri = store.tracking_uri(project)
    with store.use_store(store_uri):
        for run_id in liveness.end_dead_runs(store.client(), experiment):
            logger.warning("MLflow run %s was left RUNNING by a process that died: ended KILLED", run_id)
        if parent_run_id:
            _check_parent(parent_run_id, store_uri)
            parent_id = parent_run_id
        else:
            parent_id = records.open_flow_parent(experiment, key, run_info, change, params_path)
    logger.info("MLflow parent run %s (experiment %r) in %s", parent_id, experiment, redact_url(store_uri))
    env = stage_env(store_uri, parent_id)
    return Launch(project, change, pairs, complete, store_uri, parent_id, not parent_run_id, env, experiment)


def _all_completed(outcomes: Mapping[str, str]) -> bool:
    return all(outcome == "completed" for outcome in outcomes.values())


def _check_parent(parent_id: str, store_uri: str) -> None:
    """Refuse a parent run id that the store this process records to does not hold (a fan-out child
    under another MLFLOW_TRACKING_URI would record its run where the parent's UI never shows it)."""
    from mlflow.exceptions import MlflowException

    try:
        found = store.client().get_run(parent_id).info.lifecycle_stage == "active"
    except MlflowException:
        found = False
    if not found:
        raise PipelineError(
            f"the MLflow parent run {parent_id} is not in {redact_url(store_uri)}: every worker of a fan-out "
            "needs the same MLFLOW_TRACKING_URI (prefect.yaml's job_variables)"
        )


def _run_stages(
    launch: Launch,
    names: Sequence[str],
    runner: StageRunner,
    outcomes: dict[str, str],
    push: bool,
    pull: bool,
    restore_only: bool = False,
) -> str:
    """Shared stages, then every run (``<variant>-<seed>``; trained side by side, a failure is recorded in
    `outcomes`, not raised), then the report when the launch covers every run and all completed.
    Returns what became of the report. A failing shared stage raises: no variant can run without it.
    `restore_only`: any stage but the report must come from the run cache (`RESTORE_ONLY`).
    """
    env = restore_only_env(launch.env, launch.project, RESTORE_ONLY) if restore_only else launch.env
    for stage in SHARED_STAGES:
        stage_task(stage)(stage, launch.project, env, runner, pull=pull)
    with store.use_store(launch.store):
        runs.set_tags(launch.parent_id, {DATA_HASH_TAG: stage_output_md5(launch.project, "split")})

    concurrent.train_and_score(launch, names, env, runner, outcomes, pull)

    if not launch.complete:
        total = len(read_study(launch.change.after).runs)
        report = (
            f"not written: this run covers {len(launch.pairs)} of the {total} (variant, seed)s of params.yaml"
        )
    elif _all_completed(outcomes):
        stage_task(REPORT_STAGE)(REPORT_STAGE, launch.project, launch.env, runner, pull=pull)
        report = "reports/ (dvc.lock up to date)"
    else:
        # The report covers every (variant, seed) of params.yaml or none: a failed run's old files
        # would otherwise stand in for results that do not exist.
        report = (
            "not written: a run failed or is missing (fix it and run again; completed stages are skipped)"
        )
    if push:
        push_run_cache(launch.project, launch.env, runner)
    return report


def _finish(launch: Launch, outcomes: Mapping[str, str], report: str, status: str) -> None:
    """End the parent (if this run owns it), runs of processes that died, and publish the summary."""
    logger = get_run_logger()
    with store.use_store(launch.store):
        if launch.owns_parent:
            runs.end_run(launch.parent_id, status)
        for run_id in liveness.end_dead_runs(store.client(), launch.experiment):
            logger.warning("MLflow run %s: its stage was killed; ended KILLED", run_id)
    records.publish_summary(
        records.markdown_summary(
            launch.change, outcomes, launch.parent_id, launch.store, report, launch.project
        )
    )
    if launch.change.changed:
        logger.warning(
            "params.yaml still holds this run's overrides; the original is in %s", launch.change.backup
        )


def run_ablation(
    variants: Sequence[str] | None,
    overrides: Mapping[str, Any] | Sequence[str] | str | None,
    project_dir: str | os.PathLike | None,
    ablation_key: str | None = None,
    gpu_slots: int | None = None,
    push: bool = False,
    runner: StageRunner = dvc_command,
    *,
    seeds: Sequence[int] | None = None,
    fan_out: bool = False,
    parent_run_id: str | None = None,
    children: fanout.Children | None = None,
    jobs: int | None = None,
) -> dict[str, Any]:
    """The body of the `cyclegan` flow (separate so tests can run it with a fake `runner` and
    `children`)."""
    project = workspace.resolve_project(project_dir)
    if not (project / "dvc.yaml").is_file() or not (project / PARAMS_NAME).is_file():
        raise PipelineError(f"{project} has no dvc.yaml and params.yaml: pass project_dir=<the project root>")
    run_info = records.flow_run_info()
    key = launch_label(ablation_key, run_info["id"])
    normalized = normalize_overrides(overrides)
    part_of_a_fan_out = fan_out or bool(parent_run_id)
    gpus = visible_gpus()
    per_machine = concurrent.default_jobs(sys.maxsize, None, gpus) if gpus else 1
    slots = ensure_concurrency_limit(
        GPU_TAG, gpu_slots, create=not part_of_a_fan_out, default_slots=per_machine
    )
    get_run_logger().info("tag concurrency limit %r: %s", GPU_TAG, f"{slots} slot(s)" if slots else "none")

    with workspace.workspace_lock(project, run_info):
        launch = _prepare(project, normalized, (variants, seeds), runner, run_info, key, parent_run_id)
        threads = concurrent.project_threads(launch.change.after)
        launch.jobs = concurrent.resolve_jobs(jobs, len(launch.pairs), threads, gpus)
        if not fan_out:
            outcomes, report, status = _in_workspace(launch, runner, push)
    if fan_out:
        label = parent_name(key)
        children = children or fanout.DeploymentChildren(
            f"{FLOW_NAME}/{DEPLOYMENT_NAME}", label, run_info["id"], get_run_logger()
        )
        outcomes, report, status = _fan_out(launch, children, runner, run_info, push, key)
    if status == "FINISHED" and launch.complete:
        records.scores_artifact(project)
    message = records.failure_message(
        outcomes, "missing from the fan-out" if fan_out else "variant(s) failed"
    )
    if message:
        raise PipelineError(message)
    return {
        "variants": outcomes,
        "overrides": launch.change.overrides,
        "params_backup": str(launch.change.backup or ""),
        "mlflow_parent_run_id": launch.parent_id,
        "report": report,
    }


def _in_workspace(launch: Launch, runner: StageRunner, push: bool) -> tuple[dict[str, str], str, str]:
    """Every selected run here, in this workspace (the run holds its lock)."""
    outcomes = dict.fromkeys(launch.names, "not run")
    report, status = "not run", "FAILED"
    try:
        report = _run_stages(launch, launch.names, runner, outcomes, push, pull=push)
        status = "FINISHED" if _all_completed(outcomes) else "FAILED"
    finally:
        _finish(launch, outcomes, report, status)
    return outcomes, report, status


def _fan_out(
    launch: Launch,
    children: fanout.Children,
    runner: StageRunner,
    run_info: Mapping[str, str | None],
    push: bool,
    key: str,
) -> tuple[dict[str, str], str, str]:
    """The shared stages, then every (variant, seed), as child flow runs; then the collect, here."""
    logger = get_run_logger()
    outcomes = dict.fromkeys(launch.names, "not run")
    report, status = "not run", "FAILED"
    try:
        pool = children.check()
        base = {"overrides": launch.change.overrides, "parent_run_id": launch.parent_id, "push": True}
        base["ablation_key"] = key
        logger.info(
            "fan-out on work pool %r: the shared stages first, then %d run(s)", pool, len(launch.pairs)
        )
        shared = children.wait({fanout.SHARED: children.start(fanout.SHARED, fanout.child_parameters(base))})
        if not shared[fanout.SHARED].completed:
            raise PipelineError(
                f"the shared stages did not complete ({shared[fanout.SHARED].why()}): no run can"
            )
        handles = {
            name: children.start(name, fanout.child_parameters(base, variant, seed))
            for name, (variant, seed) in zip(launch.names, launch.pairs, strict=True)
        }
        results = children.wait(handles)
        for name, result in results.items():
            if not result.completed:
                outcomes[name] = result.why()
                logger.error("%s: %s", name, result.why())
        completed = [name for name, result in results.items() if result.completed]
        logger.info("collect: %d run(s) from the DVC remote's run cache", len(completed))
        with workspace.workspace_lock(launch.project, run_info):
            report = _run_stages(launch, completed, runner, outcomes, push, pull=True, restore_only=True)
        status = "FINISHED" if _all_completed(outcomes) else "FAILED"
    finally:
        _finish(launch, outcomes, report, status)
    return outcomes, report, status


def launch_label(ablation_key: str | None, flow_run_id: str | None) -> str:
    """A flow run's ablation key: the one given, else the start of its flow run's id."""
    return ablation_key or (flow_run_id or "local")[:8]


def _flow_run_name() -> str:
    """``ablation-<key>``: the ablation key when given, else the start of the flow run's id; a fan-out's
    child keeps the name the fan-out gave it (``ablation-<key>-<variant>-<seed>``)."""
    from prefect.runtime import flow_run

    parameters = flow_run.parameters or {}
    if parameters.get("parent_run_id") and flow_run.name:
        return flow_run.name
    return parent_name(launch_label(parameters.get("ablation_key"), flow_run.id))


@flow(
    name=FLOW_NAME,
    flow_run_name=_flow_run_name,
    description="CycleGAN loss ablation: DVC stages per (variant, seed), one MLflow parent run",
)
def cyclegan(
    variants: list[str] | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    project_dir: str | None = None,
    ablation_key: str | None = None,
    gpu_slots: int | None = None,
    push: bool = False,
    seeds: list[int] | None = None,
    fan_out: bool = False,
    parent_run_id: str | None = None,
    jobs: int | None = None,
) -> dict[str, Any]:
    """Run the ablation: download, split, judge, bounds once; train every (variant, seed), `jobs` at a
    time; translate and evaluate each; the report.

    Args:
        variants: which `variants:` of params.yaml to run (default: all; [] runs only the shared
            stages). params.yaml is left as it is; the report needs every variant and seed.
        overrides: params overrides as in ``dvc exp run -S``: a list like ``["train.max_steps=5"]``
            or a mapping like ``{"train.max_steps": 5}``; recorded in MLflow and in params.yaml.
        project_dir: another DVC project than the served one (only inside a folder listed in
            CYCLEGAN_ALLOWED_PROJECTS on the worker's machine).
        ablation_key: groups runs under one MLflow parent run ``ablation-<key>`` (default: the start of
            this flow run's id).
        gpu_slots: set the `gpu` tag concurrency limit (default: keep it, or create it with one
            slot per visible GPU; a fan-out never creates it).
        push: ``dvc push --run-cache`` at the end (and restore from the remote first), so another
            clone sharing the DVC remote reproduces without retraining.
        seeds: which `seeds:` of params.yaml to run (default: all).
        fan_out: start the shared stages, then every selected (variant, seed), as child flow runs of
            cyclegan/ablation on its work pool; wait; then collect them here from the DVC remote.
        parent_run_id: the MLflow parent run to nest under (a fan-out passes its own to its children).
        jobs: runs trained at once in this workspace (default: what the machine holds, see
            `pipeline.orchestration.concurrent`; also CYCLEGAN_JOBS).
    """
    return run_ablation(
        variants,
        overrides,
        project_dir,
        ablation_key,
        gpu_slots,
        push,
        seeds=seeds,
        fan_out=fan_out,
        parent_run_id=parent_run_id,
        jobs=jobs,
    )
