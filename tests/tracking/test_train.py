"""A training run's MLflow record (`TrainRecorder`): what it holds, how it ends, how a resumed run
continues it, and how a store outage is lived through."""

from __future__ import annotations

import dataclasses
import os
import signal

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch

from pipeline.core.signals import Interrupted
from pipeline.cyclegan.checkpoint import load_checkpoint, training_digest
from pipeline.cyclegan.fingerprint import data_fingerprint
from pipeline.cyclegan.losses import LossSwitches
from pipeline.data.labels import colorize
from pipeline.tracking import parent as parents
from pipeline.tracking import runs, store
from pipeline.tracking.train import TrainRecorder
from tests.factories import TINY_TRAIN as TINY
from tests.factories import make_split, train_run

pytestmark = pytest.mark.usefixtures("private_tracking_store")


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    return make_split(tmp_path_factory.mktemp("data") / "split")


def client():
    return mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def recorder_for(cfg, variants=("cyclegan",)) -> TrainRecorder:
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "seed"}
    params = {"train": train, "variants": {v: {} for v in variants}, "seeds": [cfg.seed]}
    return TrainRecorder(params, say=print)


@pytest.mark.slow
def test_variant_run_describes_itself_and_holds_models_not_the_checkpoint(split_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # a tiny run lasts seconds
    cfg = dataclasses.replace(TINY, max_steps=12, experiment="test-tracking")
    recorder = recorder_for(cfg)
    train_run(split_dir, tmp_path / "m", "cyclegan", LossSwitches(), cfg, recorder=recorder)
    run = client().get_run(recorder.run_id)
    assert run.info.run_name == "cyclegan-0" and run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["cyclegan.seed"] == "0" and tags["cyclegan.variant"] == "cyclegan"
    assert tags["mlflow.user"] and tags["mlflow.source.name"]  # MLflow's own context tags
    assert tags["machine.cpu_capability"] and tags["cyclegan.protocol"] == "disjoint"
    # Found again by what it trained: the digest of its finished checkpoint.
    assert tags[runs.DIGEST_TAG] == training_digest(load_checkpoint(tmp_path / "m" / "checkpoint.pt"))
    assert runs.find_training_run(cfg.experiment, tags[runs.DIGEST_TAG]) == recorder.run_id
    params = run.data.params
    assert (
        params["train.ngf"] == "4"
        and params["train.lr"] == "0.0002"
        and params["variant.adversarial"] == "True"
    )
    key = parents.params_launch_key(recorder.params, data_fingerprint(split_dir)["train_sha256"])
    assert tags[parents.ABLATION_KEY_TAG] == key
    assert tags["mlflow.parentRunId"] == parents.open_parent(cfg.experiment, key)
    (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
    assert dataset.name == "dataset-split" and dataset.digest == "unknown"  # a hand-made split: no download
    for name in ("loss_G", "loss_D_X", "loss_D_Y", "loss_cycle_forward", "loss_cycle_backward", "lr"):
        history = client().get_metric_history(run.info.run_id, f"train/{name}")
        assert [m.step for m in history] == [5, 10, 12], name
    assert not any(key.startswith("train/loss_idt") for key in run.data.metrics)
    # MLflow's system metrics: how busy the run kept the machine (GPU use too, where there is one).
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_percentage"} <= set(
        run.data.metrics
    )
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

    monkeypatch.setattr(runs, "log_metrics", flaky)
    monkeypatch.setattr(runs, "RETRY_OFFLINE_S", 0.0)
    logger = runs.RunLogger("run", said.append)
    logger.call("log_metrics", {"a": 1.0}, step=1)
    logger.call("log_metrics", {"a": 2.0}, step=2)
    assert sent == [] and len(said) == 1 and "stopped answering" in said[0]
    assert logger.flush() is False and "2 call(s)" in said[-1]
    down["now"] = False
    logger.call("log_metrics", {"a": 3.0}, step=3)
    assert sent == [({"a": 1.0}, 1), ({"a": 2.0}, 2), ({"a": 3.0}, 3)] and "answers again" in said[-1]


def test_cycle_only_logs_no_discriminator_losses(split_dir, tmp_path):
    cfg = dataclasses.replace(TINY, max_steps=5, experiment="test-tracking")
    recorder = recorder_for(cfg, ("cycle_only",))
    train_run(
        split_dir, tmp_path / "m", "cycle_only", LossSwitches(adversarial=False), cfg, recorder=recorder
    )
    metrics = client().get_run(recorder.run_id).data.metrics
    assert "train/loss_cycle_forward" in metrics
    assert not [k for k in metrics if "loss_D" in k or "adv" in k]


@pytest.mark.slow
def test_crash_ends_failed_and_signal_ends_killed_then_resume_reuses_the_run(split_dir, tmp_path):
    cfg = dataclasses.replace(TINY, max_steps=8, experiment="test-tracking")

    def crash(step, losses):
        raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError):
        train_run(
            split_dir,
            tmp_path / "a",
            "cyclegan",
            LossSwitches(),
            cfg,
            recorder=recorder_for(cfg),
            on_step=crash,
        )
    failed = client().search_runs(
        [store.experiment_id(cfg.experiment)], "attributes.status = 'FAILED'", max_results=10
    )
    assert failed, "the crashed run must not stay RUNNING"

    def terminate_at_3(step, losses):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by train_variant: checkpoint, then raise

    with pytest.raises(Interrupted) as interrupted:
        train_run(
            split_dir,
            tmp_path / "b",
            "cyclegan",
            LossSwitches(),
            cfg,
            recorder=recorder_for(cfg),
            on_step=terminate_at_3,
        )
    assert interrupted.value.exit_code == 143
    first = client().search_runs([store.experiment_id(cfg.experiment)], "attributes.status = 'KILLED'")
    assert len(first) == 1
    recorder = recorder_for(cfg)
    resumed = train_run(split_dir, tmp_path / "b", "cyclegan", LossSwitches(), cfg, recorder=recorder)
    assert resumed.resumed and recorder.run_id == first[0].info.run_id
    assert client().get_run(recorder.run_id).info.status == "FINISHED"
