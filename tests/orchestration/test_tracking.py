import dataclasses
import os
import signal
import subprocess
import sys
import time

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch

from pipeline.core.config import PROJECT_ROOT
from pipeline.core.signals import Interrupted
from pipeline.core.urls import redact_url
from pipeline.cyclegan.identity import ablation_key, data_fingerprint
from pipeline.cyclegan.loop import train_variant
from pipeline.cyclegan.losses import LossSwitches
from pipeline.data.labels import colorize
from pipeline.orchestration import tracking
from tests.factories import TINY_TRAIN as TINY
from tests.factories import make_split

pytestmark = pytest.mark.usefixtures("private_tracking_store")


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    return make_split(tmp_path_factory.mktemp("data") / "split")


def client():
    return mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def test_tracking_uri_defaults_to_the_sqlite_file_of_the_project_it_runs_in(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # found upwards, as dvc finds its repo
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@mlflow:5000/?token=x")
    assert tracking.tracking_uri() == "http://user:secret@mlflow:5000/?token=x"
    assert redact_url(tracking.tracking_uri()) == "http://***@mlflow:5000/?***"


def test_artifacts_go_beside_the_sqlite_file(tmp_path):
    assert tracking._local_artifact_root(f"sqlite:///{tmp_path}/x.db") == (tmp_path / "mlartifacts").as_uri()
    assert tracking._local_artifact_root("http://server:5000") is None


KEY = "it's a \"key\" ' OR 1=1 -- ünïcode"  # quotes broke the old search-by-tag


def test_a_parent_is_found_again_with_any_characters_in_its_key_or_taken_from_env(monkeypatch):
    first = tracking.parent_run_id("test-parent", KEY, "ablation-a")
    assert tracking.parent_run_id("test-parent", KEY, "ablation-a") == first
    assert tracking.parent_run_id("test-parent", KEY + "!", "ablation-b") != first
    run = client().get_run(first)
    assert run.data.tags[tracking.ROLE_TAG] == "ablation" and run.data.tags[tracking.ABLATION_KEY_TAG] == KEY
    assert run.info.status == "RUNNING"  # a parent spans its launch: the report (or the flow) ends it
    monkeypatch.setenv("CYCLEGAN_PARENT_RUN_ID", "from-the-flow")
    assert tracking.parent_run_id("test-parent", KEY, "ablation-a") == "from-the-flow"


def test_a_parent_deleted_by_hand_is_replaced():
    first = tracking.open_parent("test-parent", "deleted-key", "ablation")
    client().delete_run(first)
    second = tracking.open_parent("test-parent", "deleted-key", "ablation")
    assert second != first and tracking.open_parent("test-parent", "deleted-key", "ablation") == second


OPEN_PARENT = """
import sys, time
from pipeline.core.urls import redact_url
from pipeline.orchestration import tracking
start = float(sys.argv[1])
while time.time() < start:
    pass
print(tracking.open_parent("test-race", sys.argv[2], "ablation-race"))
"""


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
    parents = client().search_runs([experiment.experiment_id], f"tags.`{tracking.ROLE_TAG}` = 'ablation'")
    assert [run.info.run_id for run in parents] == list(ids)


def test_variant_run_describes_itself_and_holds_models_not_the_checkpoint(split_dir, tmp_path):
    cfg = dataclasses.replace(TINY, max_steps=12, experiment="test-tracking")
    result = train_variant(split_dir, tmp_path / "m", "cyclegan", LossSwitches(), cfg)
    run = client().get_run(result.mlflow_run_id)
    assert run.info.run_name == "cyclegan-seed0" and run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["cyclegan.seed"] == "0" and tags["cyclegan.variant"] == "cyclegan"
    assert tags["mlflow.user"] and tags["mlflow.source.name"]  # MLflow's own context tags
    assert tags["machine.cpu_capability"] and tags["cyclegan.protocol"] == "disjoint"
    params = run.data.params
    assert (
        params["train.ngf"] == "4"
        and params["train.lr"] == "0.0002"
        and params["variant.adversarial"] == "True"
    )
    key = ablation_key(
        data_fingerprint(split_dir), cfg, {"cyclegan": dataclasses.asdict(LossSwitches())}, [0]
    )
    assert tags[tracking.ABLATION_KEY_TAG] == key
    assert tags["mlflow.parentRunId"] == tracking.open_parent(cfg.experiment, key, "ablation")
    (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
    assert dataset.name == "cityscapes-split" and dataset.digest == "unknown"  # a hand-made split
    for name in ("loss_G", "loss_D_X", "loss_D_Y", "loss_cycle_forward", "loss_cycle_backward", "lr"):
        history = client().get_metric_history(run.info.run_id, f"train/{name}")
        assert [m.step for m in history] == [5, 10, 12], name
    assert not any(key.startswith("train/loss_idt") for key in run.data.metrics)
    # The per-epoch grids are stepped images (steps 6 and 12), not loose files; no checkpoint copy.
    images = {a.path for a in client().list_artifacts(run.info.run_id, "images")}
    grid_steps = {path.split("+step+")[1].split("+")[0] for path in images if "samples~grid" in path}
    assert grid_steps == {"6", "12"}, images
    assert not client().list_artifacts(run.info.run_id, "checkpoint")

    translator = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/F")
    label_map = colorize(np.random.default_rng(0).integers(0, 19, (24, 24)).astype(np.uint8))
    photo = translator(torch.from_numpy(label_map).permute(2, 0, 1)[None].float() / 127.5 - 1)
    assert photo.shape == (1, 3, 24, 24) and photo.abs().max() <= 1


def test_run_logger_keeps_what_a_lost_store_missed_and_sends_it_later(monkeypatch):
    said, sent, down = [], [], {"now": True}

    def flaky(run_id, metrics, step=None):
        if down["now"]:
            raise ConnectionError("store gone")
        sent.append((metrics, step))

    monkeypatch.setattr(tracking, "log_metrics", flaky)
    monkeypatch.setattr(tracking, "RETRY_OFFLINE_S", 0.0)
    logger = tracking.RunLogger("run", said.append)
    logger.call("log_metrics", {"a": 1.0}, step=1)
    logger.call("log_metrics", {"a": 2.0}, step=2)
    assert sent == [] and len(said) == 1 and "stopped answering" in said[0]
    assert logger.flush() is False and "2 call(s)" in said[-1]
    down["now"] = False
    logger.call("log_metrics", {"a": 3.0}, step=3)
    assert sent == [({"a": 1.0}, 1), ({"a": 2.0}, 2), ({"a": 3.0}, 3)] and "answers again" in said[-1]


def test_cycle_only_logs_no_discriminator_losses(split_dir, tmp_path):
    cfg = dataclasses.replace(TINY, max_steps=5, experiment="test-tracking")
    result = train_variant(split_dir, tmp_path / "m", "cycle_only", LossSwitches(adversarial=False), cfg)
    metrics = client().get_run(result.mlflow_run_id).data.metrics
    assert "train/loss_cycle_forward" in metrics
    assert not [k for k in metrics if "loss_D" in k or "adv" in k]


def test_crash_ends_failed_and_signal_ends_killed_then_resume_reuses_the_run(split_dir, tmp_path):
    cfg = dataclasses.replace(TINY, max_steps=8, experiment="test-tracking")

    def crash(step, losses):
        raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError):
        train_variant(split_dir, tmp_path / "a", "cyclegan", LossSwitches(), cfg, on_step=crash)
    runs = client().search_runs(
        [tracking.experiment_id(cfg.experiment)], "attributes.status = 'FAILED'", max_results=10
    )
    assert runs, "the crashed run must not stay RUNNING"

    def terminate_at_3(step, losses):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by train_variant: checkpoint, then raise

    with pytest.raises(Interrupted) as interrupted:
        train_variant(split_dir, tmp_path / "b", "cyclegan", LossSwitches(), cfg, on_step=terminate_at_3)
    assert interrupted.value.exit_code == 143
    first = client().search_runs([tracking.experiment_id(cfg.experiment)], "attributes.status = 'KILLED'")
    assert len(first) == 1
    resumed = train_variant(split_dir, tmp_path / "b", "cyclegan", LossSwitches(), cfg)
    assert resumed.resumed and resumed.mlflow_run_id == first[0].info.run_id
    assert client().get_run(resumed.mlflow_run_id).info.status == "FINISHED"
