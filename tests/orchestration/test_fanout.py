"""The fan-out's logic: children per (variant, seed) with one MLflow parent, a failing child that does not
stop the others, and the collect that restores (never runs) what completed and names what is missing.

The flow runs for real against a temporary Prefect server; DVC is the recording fake of test_flows and
the child flow runs are a fake that says how each ended (the real ones: tests/e2e/test_fan_out.py).
"""

from __future__ import annotations

import pytest
from prefect import flow

from pipeline.core.errors import PipelineError
from pipeline.orchestration.fanout import SHARED, ChildResult, DeploymentChildren
from pipeline.orchestration.flows import run_ablation
from tests.orchestration.fakes import RecordingDvc, parent_run

pytestmark = pytest.mark.slow  # real Prefect flows against a Prefect test server


SEEDS = ["++seeds=[0,1]", "~variants.c"]  # the study: variants a and b, seeds 0 and 1
RUNS = [f"{v}-{s}" for v in "ab" for s in (0, 1)]
VARIANT_KINDS = ("train", "translate", "evaluate")


class FakeChildren:
    """Child flow runs that end as told (COMPLETED unless named in `fail`)."""

    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.fail = fail
        self.started: list[tuple[str, dict]] = []

    def check(self) -> str:
        return "pool-under-test"

    def start(self, name: str, parameters: dict) -> str:
        self.started.append((name, parameters))
        return f"id-{name}"

    def wait(self, handles):
        return {
            name: ChildResult(name, f"ablation-k-{name}", "FAILED", "boom")
            if name in self.fail
            else ChildResult(name, f"ablation-k-{name}", "COMPLETED")
            for name in handles
        }


HELPERS: dict = {}


@flow(name="fan-out-under-test")
def fan_out_with_fakes(overrides: list[str] | None, project_dir: str, key: str):
    return run_ablation(
        None,
        overrides,
        project_dir,
        ablation_key=key,
        gpu_slots=8,
        runner=HELPERS["dvc"],
        fan_out=True,
        children=HELPERS["children"],
    )


@pytest.fixture
def fakes(monkeypatch):
    monkeypatch.delenv("CYCLEGAN_PARENT_RUN_ID", raising=False)
    HELPERS.update(dvc=RecordingDvc(), children=FakeChildren())
    return HELPERS


def test_every_run_is_a_child_under_one_parent_then_the_collect_restores_them(
    project, prefect_api, mlflow_store, fakes
):
    state = fan_out_with_fakes(SEEDS, str(project), "all-complete", return_state=True)
    assert state.is_completed(), state.message
    parent_id = state.result()["mlflow_parent_run_id"]
    parent = parent_run(mlflow_store, state.state_details.flow_run_id)
    assert parent.info.run_id == parent_id and parent.info.status == "FINISHED"

    started = fakes["children"].started
    assert [name for name, _ in started] == [SHARED, *RUNS]  # the shared stages first, alone
    for name, parameters in started:
        assert parameters["parent_run_id"] == parent_id and parameters["push"] is True
        assert parameters["overrides"] == SEEDS and "project_dir" not in parameters
        if name == SHARED:
            assert parameters["variants"] == []
        else:
            variant, seed = name.split("-")
            assert (parameters["variants"], parameters["seeds"]) == ([variant], [int(seed)])

    # The collect: every stage from the remote's run cache (restore only), then the report, here.
    calls, envs = fakes["dvc"].calls, fakes["dvc"].envs
    expected = [["repro", "--pull", stage] for stage in ("download", "split", "judge", "bounds")]
    assert calls[:4] == expected
    # The runs' training stages side by side (in any order), each checking its own stage only...
    trains = sorted(calls[4 : 4 + len(RUNS)])
    assert trains == [["repro", "--single-item", "--pull", f"train@{name}"] for name in sorted(RUNS)]
    # ...then each run's translate and evaluate, then the report.
    scored = [["repro", "--pull", f"{kind}@{name}"] for name in RUNS for kind in VARIANT_KINDS[1:]]
    assert calls[4 + len(RUNS) :] == [*scored, ["repro", "--pull", "report"]]
    # Restore only: every stage but the report runs with a `python` first on PATH that refuses to run.
    assert all("cyclegan-restore-only" in env["PATH"].split(":")[0] for env in envs[:-1])
    assert "cyclegan-restore-only" not in envs[-1]["PATH"]
    assert all(env["CYCLEGAN_PARENT_RUN_ID"] == parent_id for env in envs)


def test_a_failing_child_does_not_stop_the_others_and_the_collect_names_it(
    project, prefect_api, mlflow_store, fakes
):
    fakes["children"].fail = {"b-1"}
    state = fan_out_with_fakes(SEEDS, str(project), "one-fails", return_state=True)
    assert state.is_failed()
    assert "missing from the fan-out: b-1 (child flow run ablation-k-b-1 ended FAILED: boom)" in state.message
    assert "Completed: a-0, a-1, b-0" in state.message
    assert [name for name, _ in fakes["children"].started] == [SHARED, *RUNS]  # all of them started
    stages = [call[-1] for call in fakes["dvc"].calls]
    assert "train@b-0" in stages and "train@b-1" not in stages  # the rest restored, the missing one not
    assert "report" not in stages  # the report covers every run or none
    assert parent_run(mlflow_store, state.state_details.flow_run_id).info.status == "FAILED"


def test_failed_shared_stages_start_no_run(project, prefect_api, mlflow_store, fakes):
    fakes["children"].fail = {SHARED}
    state = fan_out_with_fakes(None, str(project), "shared-fails", return_state=True)
    assert state.is_failed() and "the shared stages did not complete" in state.message
    assert [name for name, _ in fakes["children"].started] == [SHARED]
    assert fakes["dvc"].calls == []


def test_the_children_need_the_deployment_on_a_work_pool(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    children = DeploymentChildren("fan-out-under-test/children", "ablation-k", None, None)
    with pytest.raises(PipelineError, match=r"on a work pool \(there is none\).*prefect deploy --all"):
        children.check()
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="fan-out-pool", type="process"), overwrite=True)
        flow_id = client.create_flow_from_name("fan-out-under-test")
        client.create_deployment(flow_id, "served", entrypoint="x.py:f")
    served = DeploymentChildren("fan-out-under-test/served", "ablation-k", None, None)
    with pytest.raises(PipelineError, match="it is served, not deployed"):
        served.check()
    with get_client(sync_client=True) as client:
        client.create_deployment(flow_id, "pooled", entrypoint="x.py:f", work_pool_name="fan-out-pool")
    assert DeploymentChildren("fan-out-under-test/pooled", "ablation-k", None, None).check() == "fan-out-pool"
