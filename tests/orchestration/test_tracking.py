import dataclasses
import os
import signal

import mlflow
import pytest

from pipeline.core.config import PROJECT_ROOT
from pipeline.core.signals import Interrupted
from pipeline.cyclegan.loop import train_variant
from pipeline.cyclegan.losses import LossSwitches
from pipeline.cyclegan.resume import ablation_key, data_fingerprint
from pipeline.orchestration import tracking
from tests.factories import TINY_TRAIN as TINY
from tests.factories import make_split

pytestmark = pytest.mark.usefixtures("private_tracking_store")


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    return make_split(tmp_path_factory.mktemp("data") / "split")


def client():
    return mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def test_tracking_uri_defaults_to_project_sqlite(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.tracking_uri() == f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking.tracking_uri() == "http://mlflow:5000"


def test_artifacts_go_beside_the_sqlite_file(tmp_path):
    assert tracking._local_artifact_root(f"sqlite:///{tmp_path}/x.db") == (tmp_path / "mlartifacts").as_uri()
    assert tracking._local_artifact_root("http://server:5000") is None


def test_parent_run_is_found_again_or_taken_from_env(monkeypatch):
    first = tracking.parent_run_id("test-parent", "key-a")
    assert tracking.parent_run_id("test-parent", "key-a") == first
    assert tracking.parent_run_id("test-parent", "key-b") != first
    run = client().get_run(first)
    assert run.data.tags[tracking.ROLE_TAG] == "ablation" and run.info.status == "FINISHED"
    monkeypatch.setenv("CYCLEGAN_PARENT_RUN_ID", "from-the-flow")
    assert tracking.parent_run_id("test-parent", "key-a") == "from-the-flow"


def test_variant_run_holds_params_metrics_grids_and_parent(split_dir, tmp_path):
    cfg = dataclasses.replace(TINY, max_steps=12, experiment="test-tracking")
    result = train_variant(split_dir, tmp_path / "m", "cyclegan", LossSwitches(), cfg)
    run = client().get_run(result.mlflow_run_id)
    assert run.info.run_name == "cyclegan-seed0" and run.info.status == "FINISHED"
    assert run.data.tags["cyclegan.seed"] == "0" and run.data.tags["cyclegan.variant"] == "cyclegan"
    params = run.data.params
    assert (
        params["train.ngf"] == "4"
        and params["train.lr"] == "0.0002"
        and params["variant.adversarial"] == "True"
    )
    assert params["variant.cycle_backward"] == "True" and params["variant.name"] == "cyclegan"
    expected_parent = tracking.parent_run_id(cfg.experiment, ablation_key(data_fingerprint(split_dir), cfg))
    assert run.data.tags["mlflow.parentRunId"] == expected_parent
    assert run.data.tags["data_version"] == "None"  # a hand-made split: no dvc.lock lists it
    for name in (
        "loss_G",
        "loss_D_X",
        "loss_D_Y",
        "loss_cycle_forward",
        "loss_cycle_backward",
        "lr",
        "img_per_s",
    ):
        history = client().get_metric_history(run.info.run_id, f"train/{name}")
        assert [m.step for m in history] == [5, 10, 12], name
    assert not any(key.startswith("train/loss_idt") for key in run.data.metrics)
    artifacts = {a.path for a in client().list_artifacts(run.info.run_id, "samples")}
    assert artifacts == {"samples/epoch_001.png", "samples/epoch_002.png"}
    assert [a.path for a in client().list_artifacts(run.info.run_id, "checkpoint")] == [
        "checkpoint/checkpoint.pt"
    ]


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
