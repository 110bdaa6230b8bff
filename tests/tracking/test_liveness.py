"""What a killed training stage leaves in MLflow, with real stage processes and real signals: SIGTERM ends
its run KILLED itself; after SIGKILL the run is ended KILLED by the next process that looks."""

from __future__ import annotations

import dataclasses
import signal

import pytest

from pipeline.cyclegan.checkpoint import load_checkpoint, training_digest
from pipeline.cyclegan.losses import LossSwitches
from pipeline.tracking import liveness, runs
from pipeline.tracking import store as tracking
from stages.train import main as train_main
from tests.factories import TINY_TRAIN as TINY
from tests.factories import make_split, run_child, write_params

pytestmark = [
    pytest.mark.usefixtures("private_tracking_store"),
    pytest.mark.slow,
]  # training stages in real processes, killed

VARIANTS = {"cyclegan": LossSwitches(), "gan_only": LossSwitches(cycle_forward=False, cycle_backward=False)}


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    return make_split(tmp_path_factory.mktemp("data") / "split")


def _stage_args(tmp_path, split_dir, variant: str) -> list[str]:
    params = write_params(tmp_path / "params.yaml", dataclasses.replace(TINY, max_steps=20), VARIANTS)
    out = tmp_path / "models" / variant
    return ["--params", str(params), "--variant", variant, "--split", str(split_dir), "--out", str(out)]


def _run_of(args: list[str]):
    """The stage's MLflow run: named by an unfinished checkpoint's recorder state, or found by the
    finished one's training digest."""
    state = load_checkpoint(f"{args[-1]}/checkpoint.pt")
    if "recorder" in state:
        return tracking.client().get_run(state["recorder"]["mlflow_run_id"])
    return tracking.client().get_run(runs.find_training_run(TINY.experiment, training_digest(state)))


def test_sigterm_ends_the_stages_run_killed(split_dir, tmp_path):
    args = _stage_args(tmp_path, split_dir, "cyclegan")
    child = run_child(12, signal.SIGTERM, args)
    assert child.returncode == 128 + signal.SIGTERM, child.stderr
    assert _run_of(args).info.status == "KILLED"


def test_a_sigkilled_stages_run_is_ended_killed_by_the_next_stage(split_dir, tmp_path):
    args = _stage_args(tmp_path, split_dir, "cyclegan")
    child = run_child(12, signal.SIGKILL, args)  # after the step-10 checkpoint, which names the run
    assert child.returncode == -signal.SIGKILL, child.stderr
    killed = _run_of(args)
    assert killed.info.status == "RUNNING"  # a SIGKILLed process cannot say otherwise
    assert {liveness.HOST_TAG, liveness.PID_TAG, liveness.STARTED_TAG} <= set(killed.data.tags)

    other = _stage_args(tmp_path, split_dir, "gan_only")
    assert train_main(other) == 0  # another stage on this host looks, and ends it
    ended = tracking.client().get_run(killed.info.run_id)
    assert ended.info.status == "KILLED", ended.data.tags
    assert "had died" in ended.data.tags[liveness.ENDED_TAG]
    assert _run_of(other).info.status == "FINISHED"


def test_runs_of_live_processes_are_left_alone():
    live = runs.start_run("test-liveness", "live", None, {}, {})
    foreign = runs.start_run("test-liveness", "elsewhere", None, {}, {liveness.HOST_TAG: "another-host"})
    dead = runs.start_run("test-liveness", "dead", None, {}, {liveness.PID_TAG: "999999999"})
    assert liveness.end_dead_runs(tracking.client(), "test-liveness") == [dead]
    statuses = {run: tracking.client().get_run(run).info.status for run in (live, foreign, dead)}
    assert statuses == {live: "RUNNING", foreign: "RUNNING", dead: "KILLED"}
    assert liveness.end_dead_runs(tracking.client(), "no-such-experiment") == []
