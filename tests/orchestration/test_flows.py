"""The `cyclegan` flow's logic: overrides on params.yaml, the stage order, failure handling, MLflow parent.

The flow runs for real against a temporary Prefect server (`prefect_test_harness`) and a temporary
MLflow store; only DVC is replaced, by a recorder passed as the flow's stage runner. `dvc_command`
itself is tested on a two-stage DVC project.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from prefect import flow

from pipeline.core.errors import PipelineError
from pipeline.orchestration import flows
from pipeline.orchestration.dvc import StageFailed, dvc_command
from pipeline.orchestration.flows import ensure_concurrency_limit, run_ablation, stage_task, visible_gpus
from pipeline.orchestration.overrides import BACKUP_NAME, apply_params_overrides, normalize_overrides

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
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text(PARAMS)
    (root / "dvc.yaml").write_text("stages: {}\n")
    return root


# --- overrides -----------------------------------------------------------------------------------------


def test_normalize_overrides_accepts_list_and_mapping():
    assert normalize_overrides(None) == []
    assert normalize_overrides(" train.max_steps=5 ") == ["train.max_steps=5"]
    assert normalize_overrides(["train.max_steps=5", "~variants.a"]) == ["train.max_steps=5", "~variants.a"]
    assert normalize_overrides(
        {"train.max_steps": 5, "train.flag": True, "data.source": "8", "~variants.b": None, "x.y": [1, 2]}
    ) == ["train.max_steps=5", "train.flag=true", "data.source='8'", "~variants.b", "x.y=[1,2]"]
    with pytest.raises(PipelineError, match="must be a string"):
        normalize_overrides(["ok=1", 3])


def test_overrides_change_params_like_dvc_exp_run_and_keep_a_backup(project: Path):
    params = project / "params.yaml"
    change = apply_params_overrides(
        params, normalize_overrides({"train.max_steps": 3, "data.source": "/tmp/it's here.tar.gz"})
    )
    assert change.changed and change.backup == project / BACKUP_NAME
    assert change.backup.read_text() == PARAMS
    after = yaml.safe_load(params.read_text())
    assert after["train"]["max_steps"] == 3
    assert after["data"]["source"] == "/tmp/it's here.tar.gz"
    assert "# the comment stays" in params.read_text()  # DVC's round-trip writer keeps comments
    assert change.variants == ["a", "b", "c"]

    # The same overrides again: nothing to change, and the backup still holds the original.
    params_text = params.read_text()
    again = apply_params_overrides(params, ["train.max_steps=3"])
    assert not again.changed and again.backup is None
    assert params.read_text() == params_text and (project / BACKUP_NAME).read_text() == PARAMS


def test_bad_override_fails_before_touching_params(project: Path):
    params = project / "params.yaml"
    with pytest.raises(PipelineError, match="invalid override"):
        apply_params_overrides(params, ["train.no_such_key=1"])
    with pytest.raises(PipelineError, match="invalid override"):
        apply_params_overrides(params, ["train.max_steps"])
    assert params.read_text() == PARAMS
    assert sorted(p.name for p in project.iterdir()) == ["dvc.yaml", "params.yaml"]  # no scratch, no backup


def test_a_variant_name_that_is_not_a_plain_word_is_refused(project: Path):
    params = project / "params.yaml"
    with pytest.raises(PipelineError, match=r"variant name 'x-y' .* must match \^\[A-Za-z0-9_\]\+\$"):
        apply_params_overrides(params, ["++variants.x-y={adversarial:true}"])
    assert params.read_text() == PARAMS
    params.write_text(PARAMS.replace("  c: {adversarial: true}", "  c$(id): {adversarial: true}"))
    with pytest.raises(PipelineError, match=r"variant name 'c\$\(id\)'"):
        apply_params_overrides(params, ["train.max_steps=5"])


def test_variant_selection_is_an_override(project: Path):
    change = apply_params_overrides(project / "params.yaml", [], variants=["c", "a"])
    assert change.overrides == ["~variants.b"]
    assert change.variants == ["c", "a"]  # the caller's order
    assert list(yaml.safe_load((project / "params.yaml").read_text())["variants"]) == ["a", "c"]
    with pytest.raises(PipelineError, match=r"unknown variant\(s\) b"):
        apply_params_overrides(project / "params.yaml", [], variants=["b"])
    with pytest.raises(PipelineError, match="variants is empty"):
        apply_params_overrides(project / "params.yaml", [], variants=[])
    with pytest.raises(PipelineError, match="leave no variant"):
        apply_params_overrides(project / "params.yaml", ["~variants.a", "~variants.c"])


def test_download_retries_with_backoff_and_training_resumes_on_retry():
    download = stage_task("download")
    assert download.retries == flows.DOWNLOAD_RETRIES
    assert download.retry_delay_seconds == [10.0, 20.0, 40.0]
    # Resume is exact: a retried train or judge stage continues from its last checkpoint.
    assert stage_task("train@a-0").retries == stage_task("judge").retries == flows.TRAINING_RETRIES == 2
    assert stage_task("translate@a-0").retries == stage_task("report").retries == 0
    assert stage_task("train@a-0").tags == {"dvc", "gpu"} and stage_task("split").tags == {"dvc"}


# --- the flow with a recording stage runner ------------------------------------------------------------


class RecordingDvc:
    """Stands in for DVC: records each command, writes a dvc.lock entry for split, fails on request."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail: set[str] = set()
        self.envs: list[dict[str, str]] = []

    def __call__(self, args, project_dir: Path, env) -> None:
        self.calls.append(list(args))
        self.envs.append(dict(env))
        stage = args[-1]
        if stage == "split":
            lock = {
                "schema": "2.0",
                "stages": {"split": {"outs": [{"path": "data/split", "md5": "abc.dir"}]}},
            }
            (project_dir / "dvc.lock").write_text(yaml.safe_dump(lock))
        if stage in self.fail:
            raise StageFailed(f"`dvc {' '.join(args)}` exited with 1: error: {stage} is broken")


RECORDER = RecordingDvc()


@flow(name="cyclegan-under-test")
def ablation_with_recorder(variants: list[str] | None, overrides: list[str] | None, project_dir: str):
    # Enough GPU slots that the sequential tasks never wait on each other's slot release.
    return run_ablation(variants, overrides, project_dir, gpu_slots=8, runner=RECORDER)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI")
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.delenv("CYCLEGAN_PARENT_RUN_ID", raising=False)
    RECORDER.__init__()
    return RECORDER


def _task_states(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run.state.type.value for run in runs}


def _parent(uri: str, flow_run_id) -> object:
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("flow-tests")
    runs = client.search_runs([experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    assert len(runs) == 1
    return runs[0]


def test_flow_runs_stages_in_order_and_records_the_parent(project, prefect_api, mlflow_store, recorder):
    state = ablation_with_recorder(["a", "c"], ["train.max_steps=2"], str(project), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["variants"] == {"a-0": "completed", "c-0": "completed"}
    assert recorder.calls == [
        ["repro", "download"], ["repro", "split"], ["repro", "judge"], ["repro", "bounds"],
        ["repro", "train@a-0"], ["repro", "translate@a-0"], ["repro", "evaluate@a-0"],
        ["repro", "train@c-0"], ["repro", "translate@c-0"], ["repro", "evaluate@c-0"],
        ["repro", "report"],
    ]  # fmt: skip
    # Every stage sees the store and the parent run, and this environment's Python first on PATH.
    parent_id = result["mlflow_parent_run_id"]
    for env in recorder.envs:
        assert env["MLFLOW_TRACKING_URI"] == mlflow_store
        assert env["CYCLEGAN_PARENT_RUN_ID"] == parent_id
        assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)

    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["train"]["max_steps"] == 2 and list(params["variants"]) == ["a", "c"]
    assert (project / BACKUP_NAME).read_text() == PARAMS

    parent = _parent(mlflow_store, state.state_details.flow_run_id)
    assert parent.info.run_id == parent_id and parent.info.status == "FINISHED"
    assert parent.data.tags["cyclegan.overrides"] == '["train.max_steps=2", "~variants.b"]'
    assert parent.data.tags["cyclegan.variants"] == "a,c"
    assert parent.info.run_name == f"ablation-{state.state_details.flow_run_id}"
    assert parent.data.tags["dvc.data_hash"] == "abc.dir"
    assert parent.data.tags["cyclegan.role"] == "ablation"

    states = _task_states(state.state_details.flow_run_id)
    assert states["evaluate@c-0"] == "COMPLETED" and states["report"] == "COMPLETED"

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.read_concurrency_limit_by_tag("gpu").concurrency_limit == 8


def test_credentials_in_overrides_reach_neither_mlflow_nor_prefect(
    project, prefect_api, mlflow_store, recorder, tmp_path
):
    import mlflow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    override = "data.source='http://alice:s3cret@example.invalid/c.tar.gz?token=abc'"
    state = ablation_with_recorder(["a"], [override], str(project), return_state=True)
    assert state.is_completed(), state.message
    flow_run_id = state.state_details.flow_run_id
    parent = _parent(mlflow_store, flow_run_id)
    assert "***@example.invalid/c.tar.gz?***" in parent.data.tags["cyclegan.overrides"]
    artifacts = Path(
        mlflow.MlflowClient(mlflow_store).download_artifacts(parent.info.run_id, "params", str(tmp_path))
    )
    recorded = [parent.data.tags["cyclegan.overrides"], *(p.read_text() for p in artifacts.iterdir())]

    APILogWorker.drain_all(timeout=10)  # the run's log lines reach the API in batches
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        notes = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    recorded += [log.message for log in logs] + [str(note.data) for note in notes]
    assert any("***@example.invalid" in text for text in recorded[2:])  # the override was logged...
    assert not [text for text in recorded if "s3cret" in text or "token=abc" in text]  # ...redacted


def test_gpu_limit_is_created_once_and_then_left_to_the_team(prefect_api):
    assert ensure_concurrency_limit("gpu-e", None) == max(1, visible_gpus())  # created
    assert ensure_concurrency_limit("gpu-e", 3) == 3  # explicit: set
    assert ensure_concurrency_limit("gpu-e", None) == 3  # kept
    with pytest.raises(PipelineError, match="gpu_slots"):
        ensure_concurrency_limit("gpu-e", 0)


def test_failing_variant_does_not_stop_the_others(project, prefect_api, mlflow_store, recorder):
    recorder.fail = {"translate@b-0"}
    state = ablation_with_recorder(None, None, str(project), return_state=True)
    assert state.is_failed()
    assert "variant(s) failed: b-0" in state.message and "translate@b-0 is broken" in state.message
    assert "Completed: a-0, c-0" in state.message
    stages = [call[-1] for call in recorder.calls]
    assert stages.index("train@c-0") > stages.index("translate@b-0")  # c ran after b failed
    assert "evaluate@b-0" not in stages
    # The report covers every run of params.yaml or none: b's old files must not stand in for it.
    assert "report" not in stages and state.result(raise_on_failure=False) is not None
    assert (project / "params.yaml").read_text() == PARAMS  # no overrides: untouched
    assert not (project / BACKUP_NAME).exists()

    states = _task_states(state.state_details.flow_run_id)
    assert states["translate@b-0"] == "FAILED"
    assert states["evaluate@a-0"] == "COMPLETED" and states["evaluate@c-0"] == "COMPLETED"
    assert _parent(mlflow_store, state.state_details.flow_run_id).info.status == "FAILED"


def test_failing_shared_stage_stops_the_flow(project, prefect_api, mlflow_store, recorder):
    recorder.fail = {"split"}
    state = ablation_with_recorder(["a"], None, str(project), return_state=True)
    assert state.is_failed() and "split is broken" in state.message
    assert [call[-1] for call in recorder.calls] == ["download", "split"]


def test_bad_overrides_fail_before_any_stage(project, prefect_api, mlflow_store, recorder):
    state = ablation_with_recorder(None, ["train.nope=1"], str(project), return_state=True)
    assert state.is_failed() and "invalid override" in state.message
    assert recorder.calls == [] and (project / "params.yaml").read_text() == PARAMS


def test_cyclegan_deploy_registers_the_flow_on_a_work_pool(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from pipeline.orchestration.cli import main

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="gpu-test", type="process"))
    assert main(["deploy", "--pool", "gpu-test", "--name", "ablation"]) == 0
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("cyclegan/ablation")
    assert deployment.entrypoint == "pipeline.orchestration.flows.cyclegan"
    assert deployment.work_pool_name == "gpu-test"
    assert set(deployment.parameter_openapi_schema["properties"]) >= {"variants", "overrides", "project_dir"}


# --- dvc_command on a real DVC project -----------------------------------------------------------------


def test_dvc_command_runs_a_stage_and_reports_its_error_line(tmp_path: Path):
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    (root / "bad.py").write_text(
        "import sys\nprint('error: the params say no', file=sys.stderr)\nsys.exit(1)\n"
    )
    (root / "dvc.yaml").write_text(
        textwrap.dedent("""\
        stages:
          good:
            cmd: python -c "open('out.txt', 'w').write('ok')"
            outs: [out.txt]
          bad:
            cmd: python bad.py
        """)
    )
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    dvc_command(["repro", "good"], root, env)
    assert (root / "out.txt").read_text() == "ok"
    assert "good" in yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    with pytest.raises(
        StageFailed, match=r"exited with \d+: error: the params say no; ERROR: failed to reproduce .bad."
    ):
        dvc_command(["repro", "bad"], root, env)
