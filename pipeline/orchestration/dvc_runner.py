"""Running DVC commands: one `dvc --wait-for-lock` process per command, its output streamed into the
Prefect run's log, its own `error:` line carried into the failure, and nothing of it left running when
the flow run goes away (`pipeline.orchestration.guard`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.orchestration import guard

OUTPUT_TAIL_LINES = 60
STOP_WAIT_S = guard.GRACE_S + 10.0  # how long a stopped flow waits for the guard to stop the stage
# The guards of the DVC commands running now, from any thread (several run at once when runs train
# concurrently): `stop_running` stops them all when the flow is interrupted in another thread.
_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()

# Runs one DVC command (args after `dvc`, e.g. ["repro", "train@cyclegan"]) in a workspace with an
# environment; raises StageFailed. The default is `dvc_command`; tests pass a fake.
StageRunner = Callable[[Sequence[str], Path, Mapping[str, str]], None]


class StageFailed(PipelineError):
    """A DVC command exited non-zero; the message carries the stage's own error line.

    `explained`: the stage said what is wrong in an ``error:`` line (a bad param, a missing input, a
    store it cannot reach: something for the user to fix, which a rerun of the same command meets
    again), rather than dying without a word (killed, lost, out of memory), which a retry can outlive.
    """

    def __init__(self, message: str, explained: bool = False):
        super().__init__(message)
        self.explained = explained


def _stage_errors(lines: Sequence[str]) -> list[str]:
    """The stage's own ``error: ...`` lines (`pipeline.core.entry`'s convention)."""
    return [line for line in lines if line.startswith("error:")]


def _error_detail(lines: Sequence[str]) -> str:
    """The stage's own ``error: ...`` line (pipeline.core.errors convention), then DVC's ``ERROR: ...``."""
    ours = _stage_errors(lines)
    dvc = [line for line in lines if line.startswith("ERROR:")]
    picked = ours[-1:] + dvc[-1:]
    return "; ".join(picked) if picked else (lines[-1] if lines else "no output")


def _logger():
    """The Prefect run logger inside a flow or task, a plain logger elsewhere (e.g. a Python shell)."""
    from prefect import get_run_logger

    try:
        return get_run_logger()
    except Exception:  # prefect raises MissingContextError outside a run
        import logging

        return logging.getLogger(__name__)


def dvc_command(args: Sequence[str], project_dir: Path, env: Mapping[str, str]) -> None:
    """Run ``dvc --wait-for-lock <args>`` in `project_dir`, streaming its output into the run's log.

    ``--wait-for-lock`` makes a second DVC process (a user's ``dvc status``) queue on DVC's repo lock
    instead of failing. DVC runs under `pipeline.orchestration.guard`, in a process group of its own
    that the guard stops (the stage included) when this process stops it, is stopped, or dies.
    ``push --run-cache`` also pushes what DVC leaves behind of the run cache (`push_run_cache_objects`).
    """
    _logger().info("$ dvc %s", " ".join(args))
    _guarded(
        [sys.executable, "-m", "dvc", "--wait-for-lock", *args], project_dir, env, f"dvc {' '.join(args)}"
    )
    if list(args[:1]) == ["push"] and "--run-cache" in args:
        # A process of its own, as DVC's own commands: DVC's API works in the repo's folder.
        script = "import pipeline.orchestration.dvc_runner as d; print(d.push_run_cache_objects(), 'pushed')"
        _guarded([sys.executable, "-c", script], project_dir, env, "the run cache's objects' push")


def _guarded(command: list[str], project_dir: Path, env: Mapping[str, str], what: str) -> None:
    """`command` under the guard, its output streamed into the log; `StageFailed` when it fails."""
    logger = _logger()
    argv = [sys.executable, guard.__file__, str(os.getpid()), *command]
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
    with _RUNNING_LOCK:
        _RUNNING.add(process)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line:
                logger.info(line)
                tail.append(line)
        returncode = process.wait()
    except BaseException:  # a cancelled flow run (Prefect's SIGTERM), Ctrl-C, a task timeout
        _stop(process)
        raise
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(process)
    if returncode != 0:
        lines = list(tail)
        explained = bool(_stage_errors(lines))
        raise StageFailed(f"`{what}` exited with {returncode}: {_error_detail(lines)}", explained)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to a guard (which stops its command's group: a training stage saves its checkpoint and
    ends its MLflow run KILLED), and wait for it."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_WAIT_S)


def stop_running() -> int:
    """Stop every DVC command this process runs now, in any thread; returns how many were running.

    A worker thread does not hear of the main thread's interruption (Ctrl-C, a cancelled flow run): this
    is how the runs trained side by side all stop with it, each saving its checkpoint.
    """
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    for process in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_WAIT_S)
    return len(running)


def push_run_cache_objects() -> int:
    """Push every object the run cache of the DVC repo here (the working directory) refers to;
    returns how many were sent.

    DVC 3's ``dvc push --run-cache`` sends the run cache's entries but, of their outputs, only those
    that ``dvc.lock`` tracks in the cache: a stage's ``cache: false`` metrics and plots (which DVC keeps
    in the local cache for the run cache) stay behind, and no other clone can restore that stage from
    the run cache, since DVC restores a stage only with all of its outputs. DVC's own API sends them.
    """
    from dvc.repo import Repo

    with Repo() as repo:
        runs = Path(repo.stage_cache.cache_dir)
        entries = [(entry.parent.name, entry.name) for entry in runs.glob("*/*/*") if entry.is_file()]
        return sum(
            len(repo.cloud.push(objects).transferred)
            for objects in repo.stage_cache.get_used_objs(entries).values()
        )
