"""One parent run per launch: found again by its key (any characters), created once by racing
processes, replaced when deleted by hand, named `ablation-<key>`."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import mlflow
import pytest

from pipeline.core.config import PROJECT_ROOT
from pipeline.tracking import parent as parents

pytestmark = pytest.mark.usefixtures("private_tracking_store")

KEY = "it's a \"key\" ' OR 1=1 -- ünïcode"  # quotes broke the old search-by-tag


def client():
    return mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def test_a_parent_is_found_again_with_any_characters_in_its_key_or_taken_from_env(monkeypatch):
    first = parents.parent_run_id("test-parent", KEY)
    assert parents.parent_run_id("test-parent", KEY) == first
    assert parents.parent_run_id("test-parent", KEY + "!") != first
    run = client().get_run(first)
    assert run.data.tags[parents.ROLE_TAG] == "ablation" and run.data.tags[parents.ABLATION_KEY_TAG] == KEY
    assert run.info.run_name == parents.parent_name(KEY) == f"ablation-{KEY}"
    assert run.info.status == "RUNNING"  # a parent spans its launch: the report (or the flow) ends it
    monkeypatch.setenv(parents.PARENT_ENV, "from-the-flow")
    assert parents.parent_run_id("test-parent", KEY) == "from-the-flow"


def test_a_parent_deleted_by_hand_is_replaced():
    first = parents.open_parent("test-parent", "deleted-key")
    client().delete_run(first)
    second = parents.open_parent("test-parent", "deleted-key")
    assert second != first and parents.open_parent("test-parent", "deleted-key") == second


def test_the_launch_key_names_what_a_launch_trains_and_nothing_else():
    train = {"lr": 2e-4, "ngf": 16}
    variants = {"cyclegan": {"adversarial": True}, "gan_only": {"adversarial": True}}
    key = parents.launch_key("data", train, variants, [0, 1])
    assert key == parents.launch_key("data", {**train, "seed": 5}, dict(reversed(variants.items())), [1, 0])
    assert len({key, parents.launch_key("other", train, variants, [0, 1])}) == 2
    assert key != parents.launch_key("data", train, {"cyclegan": variants["cyclegan"]}, [0, 1])
    params = {
        "train": {"ngf": 16, "experiment": "a", "checkpoint_every": 3},
        "variants": variants,
        "seeds": [0],
    }
    renamed = {**params, "train": {**params["train"], "experiment": "b", "checkpoint_every": 9}}
    assert parents.params_launch_key(params, "data") == parents.params_launch_key(renamed, "data")


OPEN_PARENT = """
import sys, time
from pipeline.tracking.parent import open_parent
start = float(sys.argv[1])
while time.time() < start:
    pass
print(open_parent("test-race", sys.argv[2]))
"""


@pytest.mark.slow
def test_concurrent_processes_opening_one_key_end_with_exactly_one_parent(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    client().search_experiments()  # the store's tables exist before the race
    start = time.time() + 8  # every process imports MLflow first, then they all go at once
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_PARENT, str(start), KEY], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    ids = {process.communicate(timeout=120)[0].strip() for process in processes}
    assert all(process.returncode == 0 for process in processes)
    assert len(ids) == 1
    experiment = client().get_experiment_by_name("test-race")
    found = client().search_runs([experiment.experiment_id], f"tags.`{parents.ROLE_TAG}` = 'ablation'")
    assert [run.info.run_id for run in found] == list(ids)
