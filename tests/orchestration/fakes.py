"""Test doubles for the flow tests: a params.yaml, a recording stand-in for DVC, the parent run query."""

from __future__ import annotations

import threading
from pathlib import Path

import yaml

from pipeline.orchestration.dvc_runner import StageFailed

PARAMS = """\
# the comment stays
data:
  source: http://example.invalid/cityscapes.tar.gz
train:
  max_steps: 100
  experiment: flow-tests
variants:
  a: {adversarial: true}
  b: {adversarial: false}
  c: {adversarial: true}
seeds: [0]
"""


class RecordingDvc:
    """Stands in for DVC: records each command, writes a dvc.lock entry for split, fails on request."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail: set[str] = set()  # fail saying why (the stage's own `error:` line)
        self.die: dict[str, int] = {}  # stage -> how many times it dies without a word (killed, lost)
        self.envs: list[dict[str, str]] = []
        self.hold: dict[str, threading.Event] = {}  # stage -> released when set
        self.reached: dict[str, threading.Event] = {}

    def __call__(self, args, project_dir: Path, env) -> None:
        self.calls.append(list(args))
        self.envs.append(dict(env))
        stage = args[-1]
        if stage in self.hold:
            self.reached.setdefault(stage, threading.Event()).set()
            assert self.hold[stage].wait(60), f"{stage} was never released"
        if stage == "split":
            lock = {
                "schema": "2.0",
                "stages": {"split": {"outs": [{"path": "data/split", "md5": "abc.dir"}]}},
            }
            (project_dir / "dvc.lock").write_text(yaml.safe_dump(lock))
        if stage in self.fail:
            message = f"`dvc {' '.join(args)}` exited with 1: error: {stage} is broken"
            raise StageFailed(message, explained=True)
        if self.die.get(stage, 0) > 0:
            self.die[stage] -= 1
            raise StageFailed(f"`dvc {' '.join(args)}` exited with 137: Killed")


def parent_run(uri: str, flow_run_id) -> object:
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("flow-tests")
    runs = client.search_runs([experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    assert len(runs) == 1
    return runs[0]
