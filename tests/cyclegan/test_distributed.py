"""Data-parallel training (torchrun, gloo, two CPU processes) equals one process on the same global batch."""

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
import yaml

from pipeline.core.config import PROJECT_ROOT
from pipeline.cyclegan.checkpoint import load_checkpoint, load_generators, training_digest
from pipeline.cyclegan.losses import LossSwitches
from pipeline.tracking.train import TrainRecorder
from tests.factories import TINY_TRAIN as TINY
from tests.factories import make_split, train_run, write_params

pytestmark = pytest.mark.slow  # torchrun with two processes


LOSSES = (
    "loss_G",
    "loss_G_adv",
    "loss_F_adv",
    "loss_cycle_forward",
    "loss_cycle_backward",
    "loss_D_X",
    "loss_D_Y",
)
# Global batch 2 = one image per rank; pools small enough to fill and then swap within the run.
CFG = dataclasses.replace(TINY, batch_size=2, pool_size=3, max_steps=5, log_every=1, checkpoint_every=100)


def loss_history(store_uri: str, run_id: str) -> dict[str, list[float]]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store_uri)
    return {
        name: [
            m.value for m in sorted(client.get_metric_history(run_id, f"train/{name}"), key=lambda m: m.step)
        ]
        for name in LOSSES
    }


def variant_runs(store_uri: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store_uri)
    experiment = client.get_experiment_by_name(CFG.experiment)
    return client.search_runs([experiment.experiment_id], "tags.`cyclegan.variant` = 'cyclegan'")


@pytest.fixture(autouse=True)
def _no_parent_override(monkeypatch):
    monkeypatch.delenv("CYCLEGAN_PARENT_RUN_ID", raising=False)


def test_two_gloo_ranks_match_one_process(tmp_path, monkeypatch):
    split = make_split(tmp_path / "split")
    single_store = f"sqlite:///{tmp_path / 'single.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", single_store)
    params = write_params(tmp_path / "params.yaml", CFG, {"cyclegan": LossSwitches()})
    recorder = TrainRecorder(yaml.safe_load(params.read_text()))
    single = train_run(split, tmp_path / "single", "cyclegan", LossSwitches(), CFG, recorder=recorder)

    ddp_store = f"sqlite:///{tmp_path / 'ddp.db'}"
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "MLFLOW_TRACKING_URI": ddp_store,
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "stages.train",
        "--params",
        str(params),
        "--variant",
        "cyclegan",
        "--seed",
        "0",
        "--split",
        str(split),
        "--out",
        str(tmp_path / "ddp"),
    ]
    child = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]

    runs = variant_runs(ddp_store)
    assert len(runs) == 1  # rank 0 alone tracks
    ddp_state, single_state = (
        load_checkpoint(tmp_path / "ddp" / "checkpoint.pt"),
        load_checkpoint(single.checkpoint),
    )
    assert ddp_state["step"] == single_state["step"] == 5
    assert runs[0].data.tags["cyclegan.training_digest"] == training_digest(ddp_state)

    # The same losses at every step (ranks average their shares when the losses are read back).
    ddp_losses, single_losses = (
        loss_history(ddp_store, runs[0].info.run_id),
        loss_history(single_store, recorder.run_id),
    )
    for name in LOSSES:
        assert len(ddp_losses[name]) == 5
        assert ddp_losses[name] == pytest.approx(single_losses[name], rel=1e-5), name

    # The same networks: identical functions, and every conv weight close. (Biases that feed an
    # instance norm are left out: their true gradient is 0, so Adam turns float noise into +-lr steps
    # that differ between runs; the norm cancels them, as the outputs check shows.)
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ddp_nets, single_nets = (
        load_generators(tmp_path / "ddp" / "checkpoint.pt"),
        load_generators(single.checkpoint),
    )
    with torch.no_grad():
        for name in ("G", "F"):
            assert torch.allclose(
                getattr(ddp_nets, name)(x), getattr(single_nets, name)(x), rtol=1e-4, atol=1e-5
            )
    for net, tensors in single_state["nets"].items():
        for key, value in tensors.items():
            if key.endswith("weight"):
                assert torch.allclose(ddp_state["nets"][net][key], value, rtol=1e-4, atol=1e-6), (net, key)
    # The global pool: rank 0's copy holds what the single process's pool holds.
    for pool in ("X", "Y"):
        assert torch.allclose(
            ddp_state["pools"][pool]["images"], single_state["pools"][pool]["images"], atol=1e-5
        )
