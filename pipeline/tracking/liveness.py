"""MLflow runs left RUNNING by a process that died: found by the process that made them, ended KILLED.

A stage stopped by SIGTERM/SIGINT ends its own run KILLED. A SIGKILLed one (the OOM killer, a lost
guard, ``kill -9``) cannot, so every run this pipeline creates carries the identity of its process:
host, pid and the process's start time (a pid alone is reused). The next flow run on that host, and
the next training stage, end the runs whose process is gone.
"""

from __future__ import annotations

import os
import socket

import psutil

HOST_TAG = "cyclegan.host"
PID_TAG = "cyclegan.pid"
STARTED_TAG = "cyclegan.pid_started"
ENDED_TAG = "cyclegan.ended_by"


def process_tags() -> dict[str, str]:
    """This process's identity, as run tags."""
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
        STARTED_TAG: repr(psutil.Process().create_time()),
    }


def process_alive(tags: dict[str, str]) -> bool:
    """Whether the process named by `tags` (see `process_tags`) still runs on this host."""
    try:
        process = psutil.Process(int(tags[PID_TAG]))
        return (
            process.status() != psutil.STATUS_ZOMBIE
            and abs(process.create_time() - float(tags[STARTED_TAG])) < 0.01
        )
    except (KeyError, ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def end_dead_runs(mlflow_client, experiment: str) -> list[str]:
    """End KILLED every RUNNING run of the experiment named `experiment` made on this host by a process
    that is gone; returns their ids."""
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        return []
    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"
    ended = []
    for run in mlflow_client.search_runs([found.experiment_id], query, max_results=1000):
        tags = run.data.tags
        if process_alive(tags):
            continue
        why = f"its process (pid {tags.get(PID_TAG)} on {host}) had died; ended KILLED by pid {os.getpid()}"
        mlflow_client.set_tag(run.info.run_id, ENDED_TAG, why)
        mlflow_client.set_terminated(run.info.run_id, "KILLED")
        ended.append(run.info.run_id)
    return ended
