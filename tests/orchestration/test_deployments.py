"""prefect.yaml: the scale-out's two deployments, as `prefect deploy --all` reads them (the e2e fan-out test
deploys it for real)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from pipeline.core.errors import PipelineError
from pipeline.orchestration import flows
from pipeline.orchestration.tasks import check_worker_env

pytestmark = pytest.mark.slow  # real Prefect deployments


ROOT = Path(__file__).resolve().parents[2]


def _deployments() -> dict[str, dict]:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    # No pull step: each worker runs its own clone. An omitted `pull` would make `prefect deploy` add
    # one that changes into the deployer's folder on every worker.
    assert config["pull"] == [] and config["build"] is None and config["push"] is None
    return {entry["name"]: entry for entry in config["deployments"]}


def test_both_deployments_run_the_flow_in_the_workers_clone_with_the_shared_services():
    deployments = _deployments()
    assert set(deployments) == {flows.DEPLOYMENT_NAME, flows.FAN_OUT_DEPLOYMENT_NAME}
    for entry in deployments.values():
        assert load_flow_from_entrypoint(entry["entrypoint"]) is flows.cyclegan
        pool = entry["work_pool"]
        assert pool["name"] == "cyclegan"
        assert pool["job_variables"]["working_dir"] == "."  # the folder the worker was started in
        assert set(pool["job_variables"]["env"]) == {"MLFLOW_TRACKING_URI", "CYCLEGAN_DVC_REMOTE"}
    assert deployments["ablation"]["work_pool"]["work_queue_name"] == "gpu"
    fan_out = deployments["fan-out"]
    assert fan_out["work_pool"]["work_queue_name"] == "collect" and fan_out["parameters"] == {"fan_out": True}
    assert set(fan_out["parameters"]) <= set(inspect.signature(flows.cyclegan.fn).parameters)


def test_a_placeholder_left_unfilled_at_deploy_time_stops_the_run_with_one_line(monkeypatch):
    # `prefect deploy` leaves `{{ $NAME }}` as it is when NAME is unset in its shell.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "{{ $MLFLOW_TRACKING_URI }}")
    with pytest.raises(PipelineError, match=r"MLFLOW_TRACKING_URI is .* not set where `prefect deploy` ran"):
        check_worker_env()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow-host:5000")
    check_worker_env()
