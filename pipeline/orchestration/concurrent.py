"""The runs of an ablation trained at the same time, in one workspace, with DVC still the record.

DVC releases its repo lock while a stage's command runs (``dvc/stage/run.py`` runs the command
``unlocked_repo``) and guards each stage's deps and outputs with its own read/write locks, taking the
repo lock again only to check a stage before and to record it after. So several ``dvc repro
--single-item train@<run>`` processes in one workspace train at the same time, and each records its
stage in ``dvc.lock``, the cache and the run cache exactly as one at a time would: no scheduler of our
own, no copy of the workspace, no ``dvc commit`` afterwards. The scheduling is Prefect's thread-pool
task runner, with `jobs` workers; each worker holds one DVC process (under the guard) for one run.

`jobs` defaults to what the machine holds:

- on CUDA, `RUNS_PER_GPU_ENV` runs (default `DEFAULT_RUNS_PER_GPU`) per visible GPU, each run given
  its GPU round robin (``CUDA_VISIBLE_DEVICES``);
- on CPU, for single-threaded runs (``train.num_threads: 1``, the default profile), every run at once up
  to `CPU_RUNS_PER_CORE` per core: the kernel shares the cores fairly among single-threaded processes,
  so the runs, which differ in cost by variant, finish together instead of leaving a core idle behind
  the last long one (`benchmarks/README.md` has the figures); for runs of several threads, cores
  divided by threads, since OpenMP threads that outnumber the cores spin instead of working.

Only the training stages run side by side: the shared stages before them and translate, evaluate and
the report after them use every core (or the whole GPU) on their own and take a fraction of the time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prefect import get_run_logger

from pipeline.core.errors import PipelineError
from pipeline.core.study import read_study
from pipeline.orchestration.dvc_runner import StageRunner, stop_running
from pipeline.orchestration.tasks import VARIANT_STAGES, stage_task, visible_gpus

JOBS_ENV = "CYCLEGAN_JOBS"  # runs trained at once (default: what the machine holds, as above)
RUNS_PER_GPU_ENV = "CYCLEGAN_RUNS_PER_GPU"
DEFAULT_RUNS_PER_GPU = 5  # one ablation's variants at once on each GPU
CPU_RUNS_PER_CORE = 4


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_jobs(runs: int, threads_per_run: int | None, gpus: int) -> int:
    """How many of `runs` training runs this machine trains at once (see the module docstring)."""
    if gpus > 0:
        per_gpu = _positive_int(os.environ.get(RUNS_PER_GPU_ENV) or DEFAULT_RUNS_PER_GPU, RUNS_PER_GPU_ENV)
        return max(1, min(runs, gpus * per_gpu))
    cores = cpu_cores()
    threads = threads_per_run or cores  # torch's default: a thread per core
    if threads == 1:
        return max(1, min(runs, CPU_RUNS_PER_CORE * cores))
    return max(1, min(runs, cores // threads))


def resolve_jobs(jobs: int | None, runs: int, threads_per_run: int | None, gpus: int) -> int:
    """`jobs` when given, else `JOBS_ENV`, else `default_jobs`."""
    if jobs is None and os.environ.get(JOBS_ENV, "").strip():
        jobs = _positive_int(os.environ[JOBS_ENV], JOBS_ENV)
    if jobs is not None:
        return _positive_int(jobs, "jobs")
    return default_jobs(runs, threads_per_run, gpus)


def _positive_int(value: Any, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(value).strip() != str(number):
        raise PipelineError(f"{what} must be a whole number >= 1 (runs trained at once), got {value!r}")
    return number


def gpu_env(env: Mapping[str, str], index: int, gpus: int) -> dict[str, str]:
    """`env` for the `index`-th run: on several GPUs, one of them (round robin over the visible ones)."""
    if gpus <= 1:
        return dict(env)
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()] or [
        str(i) for i in range(gpus)
    ]
    return {**env, "CUDA_VISIBLE_DEVICES": visible[index % len(visible)]}


def cost_order(names: Sequence[str], variants: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Runs, costliest first (longest processing time first): a variant's step runs the generators once
    per direction, once more per cycle, and the discriminators when it is adversarial."""

    def cost(name: str) -> float:
        switches = variants.get(name.rsplit("-", 1)[0], {})
        terms = 2 + bool(switches.get("cycle_forward", True)) + bool(switches.get("cycle_backward", True))
        return terms + (1.5 if switches.get("adversarial", True) else 0.0)

    return sorted(names, key=cost, reverse=True)


def train_concurrently(
    names: Sequence[str],
    jobs: int,
    submit: Callable[[Any, str, int], Any],
    on_done: Callable[[str, BaseException | None], None],
    stop: Callable[[], None],
) -> None:
    """Train `names` with `jobs` of them at a time on Prefect's thread-pool task runner.

    `submit(runner, name, index)` submits the train task of a run to `runner` and returns its future;
    `on_done(name, error)` hears how each ended (None: completed), in the order they were given; a
    failing run never stops the others. On an interruption (Ctrl-C, a cancelled or stopped flow run)
    `stop()` stops every running stage (each saves its checkpoint: the next launch resumes it) and the
    interruption goes on.
    """
    from prefect.task_runners import ThreadPoolTaskRunner

    with ThreadPoolTaskRunner(max_workers=jobs) as runner:
        futures = {name: submit(runner, name, index) for index, name in enumerate(names)}
        try:
            for name, future in futures.items():
                try:
                    future.result()
                except Exception as exc:  # one run failing must not stop the others
                    on_done(name, exc)
                else:
                    on_done(name, None)
        except BaseException:
            stop()
            raise


def project_threads(params: Mapping[str, Any]) -> int | None:
    """`train.num_threads` of a params mapping (None: torch's default)."""
    value = (params.get("train") or {}).get("num_threads")
    return int(value) if isinstance(value, int) and value >= 1 else None


def train_and_score(
    launch: Any,
    names: Sequence[str],
    env: Mapping[str, str],
    runner: StageRunner,
    outcomes: dict[str, str],
    pull: bool,
) -> None:
    """Train the runs of `launch` (a `pipeline.orchestration.flows.Launch`) `launch.jobs` at a time, then
    translate and evaluate each that trained; each run's outcome goes into `outcomes` (a failing run
    never stops the others)."""
    logger = get_run_logger()
    gpus = visible_gpus()
    order = cost_order(names, read_study(launch.change.after).variants)
    logger.info("training %d run(s), %d at a time: %s", len(order), launch.jobs, ", ".join(order))

    def submit(pool, name: str, index: int):
        stage = f"train@{name}"
        parameters = {
            "stage": stage,
            "project_dir": launch.project,
            "env": gpu_env(env, index, gpus),
            "runner": runner,
            "single_item": True,  # the shared stages are done; each process checks its own stage only
            "pull": pull,
        }
        return pool.submit(stage_task(stage), parameters)

    def trained(name: str, error: BaseException | None) -> None:
        if error is not None:
            outcomes[name] = f"failed: {error}"
            logger.error("%s failed: %s", name, error)

    train_concurrently(order, launch.jobs, submit, trained, stop_running)
    for name in names:
        if name in outcomes and outcomes[name].startswith("failed"):
            continue
        try:
            for kind in VARIANT_STAGES[1:]:
                stage_task(f"{kind}@{name}")(f"{kind}@{name}", launch.project, env, runner, pull=pull)
        except Exception as exc:  # one run failing must not stop the others
            outcomes[name] = f"failed: {exc}"
            logger.error("%s failed: %s", name, exc)
        else:
            outcomes[name] = "completed"
