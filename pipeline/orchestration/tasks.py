"""The flow's tasks: one DVC stage each (named and tagged for the Prefect UI and the GPU limit), the
push to the shared remote; the environment the stages run in; the GPU concurrency limit."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from pipeline.core.errors import PipelineError
from pipeline.core.progress import INTERVAL_ENV
from pipeline.orchestration.dvc_runner import StageFailed, StageRunner
from pipeline.tracking.parent import PARENT_ENV

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
REMOTE_ENV = "CYCLEGAN_DVC_REMOTE"  # the shared DVC remote's URL (prefect.yaml sets it for every worker)
REMOTE_NAME = "cyclegan"


@task(name="dvc-stage", task_run_name="{stage}", cache_policy=NO_CACHE, tags=[DVC_TAG])
def run_stage(
    stage: str,
    project_dir: Path,
    env: Mapping[str, str],
    runner: StageRunner,
    single_item: bool = False,
    pull: bool = False,
) -> str:
    """One DVC stage (and whatever upstream of it is out of date) via ``dvc repro``; with `pull`, a stage
    in the default remote's run cache is restored from it instead of run (``dvc repro --pull``)."""
    options = [*(["--single-item"] if single_item else []), *(["--pull"] if pull else [])]
    runner(["repro", *options, stage], project_dir, env)
    return stage


@task(name="dvc-push", task_run_name="dvc push --run-cache", cache_policy=NO_CACHE, tags=[DVC_TAG])
def push_run_cache(project_dir: Path, env: Mapping[str, str], runner: StageRunner) -> None:
    """Outputs and DVC's run cache to the default remote: another clone then reproduces by checkout."""
    runner(["push", "--run-cache"], project_dir, env)


def stage_task(stage: str):
    """`run_stage` named and tagged for `stage` (``train@cyclegan-0`` -> task ``train``, tags dvc, and gpu
    on a machine with one: the GPU limit counts GPU stages, and a CPU machine's have nothing to share)."""
    kind = stage.split("@", 1)[0]
    tags = {DVC_TAG, GPU_TAG} if kind in GPU_STAGES and visible_gpus() else {DVC_TAG}
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
        # since the last checkpoint. A stage that said what is wrong fails at once: a bad param would
        # only be refused again, minutes later.
        options.update(
            retries=TRAINING_RETRIES,
            retry_delay_seconds=TRAINING_RETRY_DELAY_S,
            retry_condition_fn=unexplained_failure,
        )
    return run_stage.with_options(**options)


def unexplained_failure(task, task_run, state) -> bool:
    """Prefect's `retry_condition_fn`: retry a stage that died without saying why, not one whose own
    ``error:`` line says what the user must fix (a `StageFailed` that is `explained`)."""
    failure = state.result(raise_on_failure=False)
    return not (isinstance(failure, StageFailed) and failure.explained)


def visible_gpus() -> int:
    """CUDA devices this process sees (0 without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def ensure_concurrency_limit(tag: str, slots: int | None, create: bool = True, default_slots: int = 1) -> int:
    """Make sure a tag concurrency limit exists for `tag`; returns the limit in force (0: none).

    With `slots` None an existing limit is left as the team set it and a missing one is created with
    `default_slots` (the runs this machine trains at once on its GPUs), unless `create` is False: a run
    that is part of a fan-out sees only its own machine's GPUs, not the team's. An explicit `slots` sets
    the limit.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        if slots is None:
            try:
                return client.read_concurrency_limit_by_tag(tag).concurrency_limit
            except ObjectNotFound:
                if not create:
                    return 0
                slots = max(1, default_slots)
        if slots < 1:
            raise PipelineError(f"gpu_slots must be >= 1, got {slots}")
        client.create_concurrency_limit(tag=tag, concurrency_limit=slots)  # an upsert on the server
        return slots


def stage_env(store: str, parent_id: str) -> dict[str, str]:
    """The environment DVC and the stages run in: the flow's, plus the store and the parent run."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = store
    env[PARENT_ENV] = parent_id
    # `python -m stages.<name>` in dvc.yaml must be this environment's Python, whatever PATH the
    # serving process was started with.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault(INTERVAL_ENV, "15")  # progress bars become log lines: one every 15 s
    return env


def restore_only_env(env: Mapping[str, str], project: Path, reason: str) -> dict[str, str]:
    """`env` in which DVC can restore stages but run none: the fan-out's collect restores every stage
    from the remote's run cache, and a stage that DVC would run instead is an error saying `reason`.

    Every stage command in dvc.yaml is ``python -m stages.<name>``, which the shell DVC runs it in finds
    on PATH; a ``python`` placed first on PATH that prints ``error: <reason>`` and exits 1 is what a
    stage DVC tries to run then meets (DVC itself runs as ``<interpreter> -m dvc``, unaffected). The
    stages know nothing of it.
    """
    shim = project / ".dvc" / "tmp" / "cyclegan-restore-only"
    shim.mkdir(parents=True, exist_ok=True)
    script = shim / "python"
    script.write_text(f"#!/bin/sh\necho {shlex.quote('error: ' + reason)} >&2\nexit 1\n")
    script.chmod(0o755)
    return {**env, "PATH": os.pathsep.join([str(shim), env.get("PATH", "")])}


def check_worker_env() -> None:
    """One line when a ``{{ $VAR }}`` of prefect.yaml reached the worker unfilled (unset at deploy time)."""
    for name in ("MLFLOW_TRACKING_URI", REMOTE_ENV):
        value = os.environ.get(name, "")
        if "{{" in value:
            raise PipelineError(
                f"{name} is {value!r} on this worker: it was not set where `prefect deploy` ran; export "
                "it there and deploy again (prefect.yaml)"
            )


def use_shared_remote(project: Path, runner: StageRunner) -> None:
    """`REMOTE_ENV`, when set, becomes the clone's default DVC remote (in ``.dvc/config.local``, which
    git ignores), so ``dvc push``/``dvc repro --pull`` by the flow and by hand use the same one."""
    if os.environ.get(REMOTE_ENV):
        remote = ["remote", "add", "--local", "--force", "--default", REMOTE_NAME, os.environ[REMOTE_ENV]]
        runner(remote, project, dict(os.environ))
