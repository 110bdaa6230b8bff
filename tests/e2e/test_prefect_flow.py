"""End to end: `prefect deployment run cyclegan/ablation --watch` against a real server and `cyclegan serve`.

Slow (minutes) and needs no network: run with ``pytest -m e2e tests/e2e``.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import requests
import yaml

from tests.e2e.harness import (
    TINY_OVERRIDES,
    VARIANTS,
    VENV_BIN,
    Service,
    child_runs,
    dvc,
    http_ok,
    parent_run,
    run_deployment,
    task_run_states,
)
from tests.factories import copy_project

pytestmark = pytest.mark.e2e

FCN_METRICS = {
    f"eval/fcn/{direction}/{score}"
    for direction in ("label2photo", "photo2label")
    for score in ("pixel_acc", "class_acc", "class_iou")
}


def test_deployment_run_completes_and_leaves_dvc_clean(ablation_run, project, env, store_uri, prefect_server):
    run = ablation_run
    assert run.returncode == 0, run.output[-6000:]
    assert run.flow_run["state"]["type"] == "COMPLETED", run.flow_run["state"]

    # Every stage of both variants ran as its own task, and completed.
    states = task_run_states(prefect_server.url, run.flow_run["id"])
    expected = {"download", "split", "judge", "bounds", "report"}
    expected |= {f"{stage}@{name}-0" for stage in ("train", "translate", "evaluate") for name in VARIANTS}
    assert {name: states.get(name) for name in expected} == dict.fromkeys(expected, "COMPLETED")

    # One parent run with the two variant runs nested under it, each holding the same FCN metrics.
    parent = parent_run(store_uri, run.flow_run["id"])
    assert parent.info.status == "FINISHED"
    assert json.loads(parent.data.tags["cyclegan.overrides"]) == TINY_OVERRIDES
    assert parent.data.tags.get("dvc.data_hash", "").endswith(".dir")
    assert parent.data.tags.get("mlflow.source.git.commit")
    children = {child.data.tags["cyclegan.variant"]: child for child in child_runs(store_uri, parent)}
    assert sorted(children) == sorted(VARIANTS)
    assert {child.info.run_name for child in children.values()} == {f"{v}-0" for v in VARIANTS}
    for name, child in children.items():
        assert set(child.data.metrics) >= FCN_METRICS, f"{name}: {sorted(child.data.metrics)}"
    # The compare view lines metrics up by name: every eval metric is shared. Training losses differ by
    # design: a loss term a variant switches off is never computed, so it is not logged as a fake zero.
    eval_names = [{m for m in c.data.metrics if m.startswith("eval/")} for c in children.values()]
    assert all(names == eval_names[0] for names in eval_names)
    train_names = {n: {m for m in c.data.metrics if m.startswith("train/")} for n, c in children.items()}
    assert train_names["cyclegan"] - train_names["gan_only"] == {
        "train/loss_cycle_forward",
        "train/loss_cycle_backward",
    }
    assert train_names["gan_only"] <= train_names["cyclegan"]

    # DVC recorded everything: nothing to do.
    status = dvc(project, env, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout or "{}") == {}, status.stdout

    # params.yaml holds the overrides (so dvc.lock agrees with it); the original is kept beside it.
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["train"]["max_steps"] == 4 and list(params["variants"]) == VARIANTS
    committed = subprocess.run(
        ["git", "show", "HEAD:params.yaml"], cwd=project, capture_output=True, text=True, check=True
    ).stdout
    assert (project / "params.before-overrides.yaml").read_text() == committed


def test_failing_variant_fails_the_flow_and_names_it(ablation_run, prefect_server, project, env, e2e_root):
    # An unknown key in one variant's switches makes only that variant's training raise.
    pair = ["gan_only", "cyclegan"]
    params = {"variants": json.dumps(pair), "overrides": json.dumps(["++variants.gan_only.bogus=1"])}
    run = run_deployment(prefect_server.url, env, project, params, e2e_root / "failing-run.log")
    print(f"e2e failing-variant run: {run.wall_s:.0f} s wall")
    assert run.returncode == 1, run.output[-6000:]
    state = run.flow_run["state"]
    print(f"failed flow run's state message: {state['message']}")
    assert state["type"] == "FAILED"
    assert "variant(s) failed: gan_only" in state["message"], state["message"]
    assert "bogus" in state["message"] and "Completed: cyclegan" in state["message"]

    states = task_run_states(prefect_server.url, run.flow_run["id"])
    assert states["train@gan_only-0"] == "FAILED"
    # Its `error:` line said what is wrong: it failed at once, not after two retries 30 s apart.
    body = {
        "flow_runs": {"id": {"any_": [run.flow_run["id"]]}},
        "task_runs": {"name": {"any_": ["train@gan_only-0"]}},
    }
    (train,) = requests.post(f"{prefect_server.url}/task_runs/filter", json=body, timeout=10).json()
    assert train["run_count"] == 1, train
    assert "translate@gan_only-0" not in states
    assert states["evaluate@cyclegan-0"] == "COMPLETED", states


def test_serve_in_a_second_clone_runs_the_flow_in_that_clone(prefect_server, env, project, e2e_root):
    """`cyclegan serve` started in another clone, with the first clone's virtualenv and no PYTHONPATH,
    acts on the clone it was started in: that clone's dvc.lock and outputs, its `dvc status` clean."""
    clone = copy_project(e2e_root / "second-clone", keep_lock=False, commit=True)
    clone_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    first_lock = (project / "dvc.lock").read_text() if (project / "dvc.lock").is_file() else None
    argv = [str(VENV_BIN / "cyclegan"), "serve", "--name", "second-clone"]
    serve = Service.start("serve (second clone)", argv, clone_env, clone, e2e_root / "serve-second.log")
    try:
        url = f"{prefect_server.url}/deployments/name/cyclegan/second-clone"
        serve.wait_until(lambda: http_ok(url), 120, "deployment cyclegan/second-clone registered")
        fewer = [f"~variants.{name}" for name in VARIANTS if name != "cyclegan"]  # one run is enough
        params = {"overrides": json.dumps([*TINY_OVERRIDES, *fewer])}
        log = e2e_root / "second-clone-run.log"
        run = run_deployment(prefect_server.url, clone_env, clone, params, log, "cyclegan/second-clone")
    finally:
        serve.stop()
    assert run.returncode == 0, run.output[-6000:]
    assert f"for the project at {clone}" in (e2e_root / "serve-second.log").read_text()
    assert (clone / "dvc.lock").is_file() and (clone / "reports" / "ablation.json").is_file()
    status = dvc(clone, clone_env, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout or "{}") == {}, status.stdout
    # The first clone (whose package this virtualenv imports) was not touched.
    now = (project / "dvc.lock").read_text() if (project / "dvc.lock").is_file() else None
    assert now == first_lock
