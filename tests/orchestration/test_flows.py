"""The `cyclegan` flow's logic: overrides on params.yaml, choosing runs without editing it, the stage order,
failure handling, the MLflow parent, one run per workspace, the project allow-list.

The flow runs for real against a temporary Prefect server (`prefect_test_harness`) and a temporary
MLflow store; only DVC is replaced, by a recorder passed as the flow's stage runner. `dvc_command`
itself is tested on a two-stage DVC project.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import yaml
from prefect import flow

from pipeline.core.errors import PipelineError
from pipeline.core.overrides import BACKUP_NAME, apply_params_overrides, normalize_overrides
from pipeline.orchestration import tasks
from pipeline.orchestration.dvc_runner import StageFailed, dvc_command
from pipeline.orchestration.flows import run_ablation, select_runs
from pipeline.orchestration.tasks import ensure_concurrency_limit, stage_task, visible_gpus
from tests.orchestration.fakes import PARAMS, RecordingDvc, parent_run

# --- overrides -----------------------------------------------------------------------------------------


pytestmark = pytest.mark.slow  # real Prefect flows against a Prefect test server


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


def test_choosing_runs_picks_variant_seed_pairs_and_says_whether_they_are_all():
    params = {"variants": {"a": {}, "b": {}, "c": {}}, "seeds": [0, 1]}
    assert select_runs(params, None, None) == ([(v, s) for v in "abc" for s in (0, 1)], True)
    assert select_runs(params, ["c", "a"], [1]) == ([("c", 1), ("a", 1)], False)  # the caller's order
    assert select_runs(params, ["c", "a", "b"], [1, 0]) == ([(v, s) for v in "cab" for s in (1, 0)], True)
    assert select_runs(params, [], None) == ([], False)  # the shared stages only
    with pytest.raises(PipelineError, match=r"unknown variant\(s\) d; params.yaml `variants:` has a, b, c"):
        select_runs(params, ["d"], None)
    with pytest.raises(PipelineError, match=r"seeds \[2\] must be a non-empty selection .* \[0, 1\]"):
        select_runs(params, None, [2])
    with pytest.raises(PipelineError, match="non-empty"):
        select_runs(params, None, [])


def test_overrides_that_leave_no_variant_are_refused(project: Path):
    with pytest.raises(PipelineError, match="leave no variant"):
        apply_params_overrides(project / "params.yaml", ["~variants.a", "~variants.b", "~variants.c"])
    assert (project / "params.yaml").read_text() == PARAMS


def test_download_retries_with_backoff_and_training_resumes_on_retry():
    download = stage_task("download")
    assert download.retries == tasks.DOWNLOAD_RETRIES
    assert download.retry_delay_seconds == [10.0, 20.0, 40.0]
    # Resume is exact: a retried train or judge stage continues from its last checkpoint.
    assert stage_task("train@a-0").retries == stage_task("judge").retries == tasks.TRAINING_RETRIES == 2
    assert stage_task("translate@a-0").retries == stage_task("report").retries == 0
    # The GPU limit counts GPU stages on a machine with a GPU; a CPU machine's have nothing to share.
    gpu = {"gpu"} if visible_gpus() else set()
    assert stage_task("train@a-0").tags == {"dvc", *gpu} and stage_task("split").tags == {"dvc"}


# --- the flow with a recording stage runner ------------------------------------------------------------


RECORDER = RecordingDvc()


@flow(name="cyclegan-under-test")
def ablation_with_recorder(
    variants: list[str] | None,
    overrides: list[str] | None,
    project_dir: str | None,
    push: bool = False,
    seeds: list[int] | None = None,
    parent_run_id: str | None = None,
):
    # Enough GPU slots that the sequential tasks never wait on each other's slot release.
    return run_ablation(
        variants,
        overrides,
        project_dir,
        gpu_slots=8,
        push=push,
        runner=RECORDER,
        seeds=seeds,
        parent_run_id=parent_run_id,
    )


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.delenv("CYCLEGAN_PARENT_RUN_ID", raising=False)
    RECORDER.__init__()
    return RECORDER


def _task_states(flow_run_id, names: set[str]) -> dict[str, str]:
    """The final states of the flow run's task runs named `names` (Prefect records task runs from
    events, in batches: wait until each has reached a final state)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            states = {run.name: run.state for run in runs if run.state is not None}
            if all(name in states and states[name].is_final() for name in names):
                return {name: states[name].type.value for name in names}
            assert time.monotonic() < deadline, f"task runs {sorted(names)} never all ended: {states}"
            time.sleep(0.2)


def test_flow_runs_stages_in_order_and_records_the_parent(project, prefect_api, mlflow_store, recorder):
    overrides = ["train.max_steps=2", "~variants.b"]  # removing a variant is an override like any other
    state = ablation_with_recorder(None, overrides, str(project), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["variants"] == {"a-0": "completed", "c-0": "completed"}
    calls = recorder.calls
    assert calls[:4] == [["repro", "download"], ["repro", "split"], ["repro", "judge"], ["repro", "bounds"]]
    # The runs train side by side (in any order), each `dvc repro` checking its own stage only...
    assert sorted(calls[4:6]) == [
        ["repro", "--single-item", "train@a-0"],
        ["repro", "--single-item", "train@c-0"],
    ]
    # ...then each is translated and scored, then the report.
    assert calls[6:] == [
        ["repro", "translate@a-0"], ["repro", "evaluate@a-0"],
        ["repro", "translate@c-0"], ["repro", "evaluate@c-0"],
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

    parent = parent_run(mlflow_store, state.state_details.flow_run_id)
    assert parent.info.run_id == parent_id and parent.info.status == "FINISHED"
    assert parent.data.tags["cyclegan.overrides"] == '["train.max_steps=2", "~variants.b"]'
    assert parent.data.tags["cyclegan.variants"] == "a,c"
    # One name format for every parent: ablation-<key>, the key being the start of the flow run's id.
    assert parent.info.run_name == f"ablation-{str(state.state_details.flow_run_id)[:8]}"
    assert parent.data.tags["dvc.data_hash"] == "abc.dir"
    assert parent.data.tags["cyclegan.role"] == "ablation"

    states = _task_states(state.state_details.flow_run_id, {"evaluate@c-0", "report"})
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
    parent = parent_run(mlflow_store, flow_run_id)
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


def test_choosing_variants_and_seeds_runs_their_stages_and_leaves_params_yaml_alone(
    project, prefect_api, mlflow_store, recorder
):
    state = ablation_with_recorder(["c", "a"], None, str(project), return_state=True)
    assert state.is_completed(), state.message
    stages = [call[-1] for call in recorder.calls]
    assert stages[:4] == ["download", "split", "judge", "bounds"]
    assert sorted(stages[4:6]) == ["train@a-0", "train@c-0"]
    assert stages[6:] == ["translate@c-0", "evaluate@c-0", "translate@a-0", "evaluate@a-0"]  # as chosen
    # The variants it did not choose are still the study's: no report of a part of it, no rewrite.
    assert (project / "params.yaml").read_text() == PARAMS and not (project / BACKUP_NAME).exists()
    assert (
        state.result()["report"] == "not written: this run covers 2 of the 3 (variant, seed)s of params.yaml"
    )
    parent = parent_run(mlflow_store, state.state_details.flow_run_id)
    assert parent.data.tags["cyclegan.variants"] == "a,b,c" and parent.data.tags["cyclegan.overrides"] == "[]"

    recorder.__init__()
    state = ablation_with_recorder([], None, str(project), return_state=True)  # the shared stages only
    assert state.is_completed(), state.message
    assert [call[-1] for call in recorder.calls] == ["download", "split", "judge", "bounds"]


def test_push_uses_the_shared_remote_and_restores_from_it_first(
    project, prefect_api, mlflow_store, recorder, monkeypatch
):
    monkeypatch.setenv("CYCLEGAN_DVC_REMOTE", "/srv/dvc-remote")
    state = ablation_with_recorder(["a"], None, str(project), push=True, return_state=True)
    assert state.is_completed(), state.message
    assert recorder.calls[0] == [
        "remote",
        "add",
        "--local",
        "--force",
        "--default",
        "cyclegan",
        "/srv/dvc-remote",
    ]
    assert recorder.calls[1] == ["repro", "--pull", "download"]
    assert recorder.calls[-1] == ["push", "--run-cache"]


def test_a_second_flow_run_in_the_workspace_refuses_while_the_first_runs(
    project, prefect_api, mlflow_store, recorder
):
    recorder.hold["judge"] = release = threading.Event()
    first: dict = {}
    thread = threading.Thread(
        target=lambda: first.update(state=ablation_with_recorder(None, None, str(project), return_state=True))
    )
    thread.start()
    try:
        assert recorder.reached.setdefault("judge", threading.Event()).wait(60), "the first run never started"
        second = ablation_with_recorder(None, ["train.max_steps=7"], str(project), return_state=True)
        assert second.is_failed()
        assert f"another flow run is working in {project} (" in second.message, second.message
        assert f"pid {os.getpid()}, since " in second.message
        assert "run this one in another clone" in second.message
        assert (project / "params.yaml").read_text() == PARAMS  # not rewritten under the first run
    finally:
        release.set()
        thread.join(60)
    assert first["state"].is_completed(), first["state"].message
    third = ablation_with_recorder(["a"], None, str(project), return_state=True)
    assert third.is_completed(), third.message  # free again once the first one ended


def test_project_dir_is_the_served_project_unless_allowed(
    project, prefect_api, mlflow_store, recorder, monkeypatch
):
    monkeypatch.delenv("CYCLEGAN_ALLOWED_PROJECTS")
    state = ablation_with_recorder(None, None, str(project), return_state=True)
    assert state.is_failed() and recorder.calls == []
    assert f"project_dir {project} refused" in state.message and "CYCLEGAN_ALLOWED_PROJECTS" in state.message
    # A link inside an allowed folder that leads out of it is what it leads to.
    allowed = project.parent / "allowed"
    allowed.mkdir()
    (allowed / "link").symlink_to(project)
    monkeypatch.setenv("CYCLEGAN_ALLOWED_PROJECTS", str(allowed))
    state = ablation_with_recorder(None, None, str(allowed / "link"), return_state=True)
    assert state.is_failed() and "refused" in state.message and recorder.calls == []


def test_the_flow_ends_runs_whose_process_died(project, prefect_api, mlflow_store, recorder):
    from pipeline.tracking import liveness, runs, store

    ghost = runs.start_run("flow-tests", "killed-stage", None, {}, {liveness.PID_TAG: "999999999"})
    state = ablation_with_recorder(["a"], None, str(project), return_state=True)
    assert state.is_completed(), state.message
    assert store.client().get_run(ghost).info.status == "KILLED"


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
    assert stages.index("translate@c-0") > stages.index("translate@b-0")  # c went on after b failed
    assert "evaluate@b-0" not in stages
    # The report covers every run of params.yaml or none: b's old files must not stand in for it.
    assert "report" not in stages and state.result(raise_on_failure=False) is not None
    assert (project / "params.yaml").read_text() == PARAMS  # no overrides: untouched
    assert not (project / BACKUP_NAME).exists()

    states = _task_states(state.state_details.flow_run_id, {"translate@b-0", "evaluate@a-0", "evaluate@c-0"})
    assert states["translate@b-0"] == "FAILED"
    assert states["evaluate@a-0"] == "COMPLETED" and states["evaluate@c-0"] == "COMPLETED"
    assert parent_run(mlflow_store, state.state_details.flow_run_id).info.status == "FAILED"


def test_a_training_stage_that_says_what_is_wrong_fails_at_once_and_a_killed_one_is_retried(
    project, prefect_api, mlflow_store, recorder, monkeypatch
):
    monkeypatch.setattr(tasks, "TRAINING_RETRY_DELAY_S", 0.0)
    recorder.fail = {"train@b-0"}  # a bad param: the stage's own `error:` line, the same on every rerun
    recorder.die = {"train@a-0": 2}  # killed twice (a lost worker, the OOM killer), then it trains on
    state = ablation_with_recorder(["a", "b"], None, str(project), return_state=True)
    assert state.is_failed() and "variant(s) failed: b-0" in state.message, state.message
    trains = [call[-1] for call in recorder.calls if call[-1].startswith("train@")]
    assert trains.count("train@b-0") == 1
    assert trains.count("train@a-0") == 1 + tasks.TRAINING_RETRIES
    states = _task_states(state.state_details.flow_run_id, {"train@a-0", "train@b-0", "evaluate@a-0"})
    assert states == {"train@a-0": "COMPLETED", "train@b-0": "FAILED", "evaluate@a-0": "COMPLETED"}


def test_failing_shared_stage_stops_the_flow(project, prefect_api, mlflow_store, recorder):
    recorder.fail = {"split"}
    state = ablation_with_recorder(["a"], None, str(project), return_state=True)
    assert state.is_failed() and "split is broken" in state.message
    assert [call[-1] for call in recorder.calls] == ["download", "split"]


def test_bad_overrides_fail_before_any_stage(project, prefect_api, mlflow_store, recorder):
    state = ablation_with_recorder(None, ["train.nope=1"], str(project), return_state=True)
    assert state.is_failed() and "invalid override" in state.message
    assert recorder.calls == [] and (project / "params.yaml").read_text() == PARAMS


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
    ) as failed:
        dvc_command(["repro", "bad"], root, env)
    assert failed.value.explained  # the stage said why: the flow does not retry it
    (root / "bad.py").write_text("import os\nos._exit(137)\n")  # dies without a word, as when killed
    with pytest.raises(StageFailed) as died:
        dvc_command(["repro", "bad"], root, env)
    assert not died.value.explained


def test_a_fan_out_child_records_under_the_parent_it_is_handed_and_refuses_an_unknown_one(
    project, prefect_api, mlflow_store, recorder
):
    from pipeline.tracking import runs

    parent_id = runs.start_run("flow-tests", "ablation-handed-down", None, {}, {})
    state = ablation_with_recorder(["a"], None, str(project), parent_run_id=parent_id, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["mlflow_parent_run_id"] == parent_id
    assert all(env["CYCLEGAN_PARENT_RUN_ID"] == parent_id for env in recorder.envs)

    recorder.__init__()
    state = ablation_with_recorder(["a"], None, str(project), parent_run_id="0" * 32, return_state=True)
    assert state.is_failed() and recorder.calls == []
    assert f"the MLflow parent run {'0' * 32} is not in {mlflow_store}" in state.message, state.message
