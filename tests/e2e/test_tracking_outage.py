"""A real MLflow server that goes away: before a stage starts, and in the middle of training."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from pipeline.cyclegan.checkpoint import load_checkpoint
from pipeline.cyclegan.losses import LossSwitches
from tests.e2e.harness import VENV_BIN, Service, free_port, http_ok
from tests.factories import ROOT, TINY_TRAIN, make_split, write_params

pytestmark = pytest.mark.e2e


def train_stage(params: Path, split: Path, out: Path, uri: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    env.pop("CYCLEGAN_PARENT_RUN_ID", None)
    argv = [
        sys.executable,
        "-m",
        "stages.train",
        "--params",
        str(params),
        "--variant",
        "cyclegan",
        "--seed",
        "0",
    ]
    argv += ["--split", str(split), "--out", str(out / "model"), "--plots", str(out / "curves.csv")]
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_a_store_down_at_the_start_fails_the_stage_before_any_training(tmp_path):
    split = make_split(tmp_path / "split")
    params = write_params(tmp_path / "params.yaml", TINY_TRAIN, {"cyclegan": LossSwitches()})
    start = time.monotonic()
    child = train_stage(params, split, tmp_path, f"http://127.0.0.1:{free_port()}")
    _out, err = child.communicate(timeout=120)
    seconds = time.monotonic() - start
    print(f"unreachable store: exit {child.returncode} after {seconds:.1f} s: {err.strip()}")  # a figure
    assert child.returncode == 1
    assert err.strip().count("\n") == 0 and err.startswith("error: the MLflow tracking server")
    assert not (tmp_path / "model").exists()  # nothing trained, nothing written


def test_a_store_killed_mid_run_neither_stops_nor_stalls_training(tmp_path):
    port = free_port()
    store = f"sqlite:///{tmp_path / 'server.db'}"
    argv = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", store, "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", "1", "--serve-artifacts"]
    argv += ["--artifacts-destination", str(tmp_path / "artifacts")]
    server = Service.start("mlflow server", argv, dict(os.environ), tmp_path, tmp_path / "mlflow.log")
    uri = f"http://127.0.0.1:{port}"
    server.wait_until(lambda: http_ok(f"{uri}/health"), 120, "/health")

    cfg = dataclasses.replace(
        TINY_TRAIN, epochs_constant=50, epochs_decay=50, log_every=5, checkpoint_every=50
    )
    split = make_split(tmp_path / "split")
    params = write_params(tmp_path / "params.yaml", cfg, {"cyclegan": LossSwitches()})
    child = train_stage(params, split, tmp_path, uri)
    try:
        # Kill the server once training logs into it.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            body = {"experiment_ids": [], "max_results": 10}
            try:
                experiments = requests.post(
                    f"{uri}/api/2.0/mlflow/experiments/search", json=body, timeout=5
                ).json()
                ids = [e["experiment_id"] for e in experiments.get("experiments", [])]
                runs = requests.post(
                    f"{uri}/api/2.0/mlflow/runs/search", json={"experiment_ids": ids}, timeout=5
                ).json()
                if any(
                    r["data"].get("metrics") for r in runs.get("runs", []) if "metrics" in r.get("data", {})
                ):
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        killed_at = time.monotonic()
        server.stop(grace_s=0)
        _out, err = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
        server.stop()
    after_kill = time.monotonic() - killed_at
    print(f"training went on for {after_kill:.1f} s after the store died; stderr tail:\n{err[-1500:]}")
    assert child.returncode == 0, err[-3000:]
    assert err.count("stopped answering") == 1  # one warning, not one per log call
    assert "were not logged" in err
    state = load_checkpoint(tmp_path / "model" / "checkpoint.pt")
    steps = 100 * 6  # 100 epochs of 6 steps (6 photos, batch 1)
    assert state["finished"] and state["step"] == steps
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert curves["step"].iloc[-1] == steps and len(curves) == steps // 5
    # Bounded: each failed call waits seconds, and a store found down is retried every 30 s only.
    assert after_kill < 240
