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

import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from pipeline.core.errors import PipelineError
from pipeline.core.project import dvc_root, stage_output_md5
from pipeline.core.urls import redact_text, redact_url
from pipeline.orchestration import tracking
from pipeline.orchestration.dvc import StageRunner, dvc_command
from pipeline.orchestration.overrides import (
    BACKUP_NAME,
    PARAMS_NAME,
    ParamsChange,
    apply_params_overrides,
    normalize_overrides,
)

FLOW_NAME = "cyclegan"
DEPLOYMENT_NAME = "ablation"
SHARED_STAGES = ("download", "split", "judge", "bounds")
VARIANT_STAGES = ("train", "translate", "evaluate")
REPORT_STAGE = "report"
GPU_STAGES = frozenset({"judge", "bounds", "train", "translate", "evaluate"})
GPU_TAG = "gpu"  # tag concurrency limit: GPU stages running at once, over every flow run on the server
DVC_TAG = "dvc"
DOWNLOAD_RETRIES = 3
DOWNLOAD_BACKOFF_S = 10.0  # 10 s, 20 s, 40 s (+ jitter) between whole-stage retries
TRAINING_STAGES = frozenset({"judge", "train"})
TRAINING_RETRIES = 2
TRAINING_RETRY_DELAY_S = 30.0
SCORES_ARTIFACT_KEY = "cyclegan-scores"
ARTIFACT_KEY = "cyclegan-ablation"
PREFECT_RUN_TAG = "prefect.flow_run_id"
DATA_HASH_TAG = "dvc.data_hash"


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
    elif kind in TRAINING_STAGES:
        # Resume is exact, so a retry after a lost worker or a killed process costs only the steps
        # since the last checkpoint.
        options.update(retries=TRAINING_RETRIES, retry_delay_seconds=TRAINING_RETRY_DELAY_S)
    return run_stage.with_options(**options)


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


def stage_env(store: str, parent_id: str) -> dict[str, str]:
    """The environment DVC and the stages run in: the flow's, plus the store and the parent run."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = store
    env[tracking.PARENT_ENV] = parent_id
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
    change: ParamsChange,
    outcomes: Mapping[str, str],
    parent_id: str,
    store: str,
    report: str,
    project_dir: Path,
) -> str:
    lines = ["# CycleGAN ablation", "", "| variant-seed | result |", "|---|---|"]
    lines += [f"| `{name}` | {outcome} |" for name, outcome in outcomes.items()]
    lines += [
        "",
        f"Report: {report}",
        "",
        f"MLflow parent run `{parent_id}` in `{redact_url(store)}`.",
        "",
    ]
    if change.overrides:
        lines += ["## Parameter overrides", ""]
        lines += [f"- `{redact_text(item)}`" for item in change.overrides]
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


def served_project() -> Path:
    """The DVC project the serving (or worker) process was started in, found from its working
    directory upwards as `dvc` finds its repo; never the folder the package is installed in."""
    root = dvc_root(Path.cwd())
    if root is None:
        raise PipelineError(
            f"{Path.cwd()} is not inside a DVC project: start `cyclegan serve` (or the worker) in the "
            "project's folder, or pass project_dir"
        )
    return root


def _open_parent(
    experiment: str, key: str, run_info: Mapping[str, str | None], change: ParamsChange, params_path: Path
) -> str:
    """The parent of this launch (race-free by key), tagged with what launched it."""
    parent_id = tracking.open_parent(
        experiment, key, f"ablation-{key}", tags={PREFECT_RUN_TAG: run_info["id"] or ""}
    )
    tracking.set_tags(
        parent_id,
        {
            "prefect.flow_run_name": run_info["name"],
            "prefect.deployment": run_info["deployment"],
            "prefect.flow_run_url": run_info["url"],
            "cyclegan.params_changed": change.changed,
            "cyclegan.overrides": redact_text(json.dumps(change.overrides))[:5000],
            "cyclegan.variants": ",".join(change.variants),
        },
    )
    with tempfile.TemporaryDirectory() as tmp:  # the params files as MLflow may keep them: URLs redacted
        for path in filter(None, (params_path, change.backup)):
            (Path(tmp) / path.name).write_text(redact_text(path.read_text()))
            tracking.log_artifacts(parent_id, Path(tmp) / path.name, "params")
    return parent_id


def _scores_artifact(project: Path) -> None:
    """The report's scores with their intervals as a Prefect table artifact."""
    from prefect.artifacts import create_table_artifact

    path = project / "reports" / "ablation.json"
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    rows = []
    for name, entry in document.get("variants", {}).items():
        row: dict[str, Any] = {"variant": name, "seeds": ",".join(map(str, entry.get("seeds", [])))}
        for metric, value in entry.items():
            if isinstance(value, dict) and metric.startswith("fcn/") and value.get("mean") is not None:
                interval = value.get("ci95") or value.get("bootstrap_ci95") or [None, None]
                row[metric] = f"{value['mean']:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
        rows.append(row)
    create_table_artifact(rows, key=SCORES_ARTIFACT_KEY, description="FCN scores, mean [95% interval]")


# --- the flow ------------------------------------------------------------------------------------------


def _run_stages(
    runs: Sequence[str],
    project: Path,
    env: Mapping[str, str],
    runner: StageRunner,
    outcomes: dict[str, str],
    push: bool,
) -> str:
    """Shared stages, each run's chain (``<variant>-<seed>``; a failure is recorded in `outcomes`, not
    raised), then the report. Returns what became of the report. A failing shared stage raises: no
    variant can run without it.
    """
    logger = get_run_logger()
    for stage in SHARED_STAGES:
        stage_task(stage)(stage, project, env, runner)
    tracking.set_tags(env[tracking.PARENT_ENV], {DATA_HASH_TAG: stage_output_md5(project, "split")})

    for name in runs:
        try:
            for kind in VARIANT_STAGES:
                stage_task(f"{kind}@{name}")(f"{kind}@{name}", project, env, runner)
        except Exception as exc:  # one variant failing must not stop the others
            outcomes[name] = f"failed: {exc}"
            logger.error("%s failed: %s", name, exc)
        else:
            outcomes[name] = "completed"

    if all(outcome == "completed" for outcome in outcomes.values()):
        stage_task(REPORT_STAGE)(REPORT_STAGE, project, env, runner)
        report = "reports/ (dvc.lock up to date)"
    else:
        # The report covers every (variant, seed) of params.yaml or none: a failed run's old files
        # would otherwise stand in for results that do not exist.
        report = "not written: a run failed (fix it and run again; completed stages are skipped)"
    if push:
        push_run_cache(project, env, runner)
    return report


def run_names(variants: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """``<variant>-<seed>`` for every variant and seed: the suffix of its DVC stages."""
    return [f"{variant}-{seed}" for variant in variants for seed in seeds]


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
    project = Path(project_dir).resolve() if project_dir else served_project()
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
            redact_text(" ".join(change.overrides)),
            change.backup,
            BACKUP_NAME,
            PARAMS_NAME,
        )
    elif change.overrides:
        logger.info("params.yaml already holds the overrides %s", redact_text(" ".join(change.overrides)))
    logger.info("variants: %s; seeds: %s", ", ".join(change.variants), change.after.get("seeds"))

    slots = ensure_concurrency_limit(GPU_TAG, gpu_slots)
    logger.info("tag concurrency limit %r: %d slot(s)", GPU_TAG, slots)

    run_info = _flow_run_info()
    experiment = (change.after.get("train") or {}).get("experiment") or "cyclegan-ablation"
    key = ablation_key or run_info["id"] or "local"
    store = tracking.tracking_uri(project)
    with tracking.use_store(store):
        parent_id = _open_parent(experiment, key, run_info, change, params_path)
    logger.info("MLflow parent run %s (experiment %r) in %s", parent_id, experiment, redact_url(store))

    env = stage_env(store, parent_id)
    seeds = change.after.get("seeds") or [0]
    outcomes: dict[str, str] = {name: "not run" for name in run_names(change.variants, seeds)}
    report = "not run"
    status = "FAILED"
    try:
        with tracking.use_store(store):
            report = _run_stages(list(outcomes), project, env, runner, outcomes, push)
        status = "FINISHED" if all(o == "completed" for o in outcomes.values()) else "FAILED"
        if status == "FINISHED":
            _scores_artifact(project)
    finally:
        with tracking.use_store(store):
            tracking.end_run(parent_id, status)
        create_markdown_artifact(
            _markdown_summary(change, outcomes, parent_id, store, report, project),
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
        "mlflow_parent_run_id": parent_id,
        "report": report,
    }


def _flow_run_name() -> str:
    """``ablation-<key>``: the ablation key when given, else the start of the flow run's id."""
    from prefect.runtime import flow_run

    key = (flow_run.parameters or {}).get("ablation_key") or (flow_run.id or "local")[:8]
    return f"ablation-{key}"


@flow(
    name=FLOW_NAME,
    flow_run_name=_flow_run_name,
    description="CycleGAN loss ablation: DVC stages per variant, one MLflow parent run",
)
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
        project_dir: the DVC project (default: the one the serving process was started in).
        ablation_key: groups runs under one MLflow parent run (default: this flow run's id); give
            several flow runs the same key to collect their variants in one parent.
        gpu_slots: set the `gpu` tag concurrency limit (default: keep it, or create it with one
            slot per visible GPU).
        push: ``dvc push --run-cache`` at the end, so a machine sharing the DVC remote can
            ``dvc pull --run-cache`` and reproduce without retraining (scale-out).
    """
    return run_ablation(variants, overrides, project_dir, ablation_key, gpu_slots, push)
