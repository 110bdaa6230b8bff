"""End to end: the README's scale-out, on this machine. A Prefect server, the process work pool `cyclegan`
with prefect.yaml's two deployments, two GPU-queue workers and one collecting worker, each
`prefect worker start` in its own git clone of the project, one local-folder DVC remote that all clones
share, one MLflow server that owns the artifacts (``--artifacts-destination``). Then one command,
``prefect deployment run cyclegan/fan-out --watch``, and what it must leave behind.

The study in the clones is two variants and one seed (committed), so the fan-out is two runs, one on
each worker at once, plus the shared stages, with tiny overrides: a few minutes on two cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.e2e.harness import (
    EXPERIMENT,
    TINY_OVERRIDES,
    VENV_BIN,
    Service,
    dvc,
    free_port,
    http_ok,
    mlflow_client,
    stop_tree,
)
from tests.factories import N_TRAIN, N_VAL, copy_project, make_archive, make_pix2pix_tree

pytestmark = pytest.mark.e2e

STUDY = {"variants": ["gan_only", "cyclegan"], "seeds": [0]}
RUNS = {f"{v}-{s}" for v in STUDY["variants"] for s in STUDY["seeds"]}
WORKERS = ("worker-a", "worker-b")
KEY = "e2e-fan-out"
WATCH_TIMEOUT_S = 600


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", *args], cwd=cwd, check=True)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fan-out")


@pytest.fixture(scope="module")
def clones(root: Path) -> dict[str, Path]:
    """The study's repository and three clones of it: the collecting one and one per worker."""
    origin = copy_project(root / "origin", keep_lock=False)
    params = yaml.safe_load((origin / "params.yaml").read_text())
    params["variants"] = {name: params["variants"][name] for name in STUDY["variants"]}
    params["seeds"] = STUDY["seeds"]
    (origin / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git("add", "-A", cwd=origin)
    git("commit", "-qm", "the study: two variants, one seed", cwd=origin)
    made = {}
    for name in ("collect", *WORKERS):
        git("clone", "-q", str(origin), str(root / name), cwd=root)
        made[name] = root / name
    return made


@pytest.fixture(scope="module")
def env(root: Path) -> dict[str, str]:
    """Every process's environment: this venv, a private Prefect home, the stand-in archive."""
    make_pix2pix_tree(root / "dataset", n_train=N_TRAIN, n_val=N_VAL)
    archive = make_archive(root / "dataset", root / "cityscapes.tar.gz")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "CYCLEGAN_"))}
    env.update(
        PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
        CYCLEGAN_DATA_SOURCE=str(archive),
        PREFECT_HOME=str(root / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_CLI_PROMPT="false",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def servers(root: Path, env: dict[str, str]):
    """The Prefect server and the MLflow server (SQLite store, artifacts in a folder it serves)."""
    prefect_port, mlflow_port = free_port(), free_port()
    prefect = Service.start(
        "prefect server",
        [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
        env,
        root,
        root / "prefect-server.log",
    )
    argv = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    argv += ["--artifacts-destination", str(root / "mlflow-artifacts"), "--serve-artifacts"]
    argv += ["--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"]
    mlflow = Service.start("mlflow server", argv, env, root, root / "mlflow-server.log")
    prefect.url, mlflow.url = f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"
    try:
        prefect.wait_until(lambda: http_ok(f"{prefect.url}/health"), 120, "/api/health")
        mlflow.wait_until(lambda: http_ok(f"{mlflow.url}/health"), 120, "/health")
        yield {"prefect": prefect, "mlflow": mlflow}
    finally:
        mlflow.stop()
        prefect.stop()


@pytest.fixture(scope="module")
def pool(root, clones, env, servers):
    """The work pool, prefect.yaml deployed from the collecting clone, and the three workers."""
    api, remote = servers["prefect"].url, root / "dvc-remote"
    remote.mkdir()
    cli = {**env, "PREFECT_API_URL": api, "PYTHONPATH": str(clones["collect"])}
    subprocess.run(
        [str(VENV_BIN / "prefect"), "work-pool", "create", "cyclegan", "--type", "process"],
        cwd=clones["collect"], env=cli, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    # The README's deploy: prefect.yaml fills in what each worker needs from the deployer's shell.
    deployer = {**cli, "MLFLOW_TRACKING_URI": servers["mlflow"].url, "CYCLEGAN_DVC_REMOTE": str(remote)}
    deployed = subprocess.run(
        [str(VENV_BIN / "prefect"), "--no-prompt", "deploy", "--all"],
        cwd=clones["collect"], env=deployer, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    workers = {}
    for name, queue in (("collect", "collect"), *((w, "gpu") for w in WORKERS)):
        # Nothing about MLflow or DVC here: prefect.yaml's job variables bring it to every flow run.
        argv = [str(VENV_BIN / "prefect"), "worker", "start", "--pool", "cyclegan", "--work-queue", queue]
        argv += ["--limit", "1", "--name", name]
        worker_env = {**env, "PREFECT_API_URL": api, "PYTHONPATH": str(clones[name])}
        workers[name] = Service.start(name, argv, worker_env, clones[name], root / f"{name}.log")
    try:
        for name, worker in workers.items():
            worker.wait_until(lambda w=worker: "started" in w.log.read_text().lower(), 120, f"{name} up")
        yield {"api": api, "remote": remote, "workers": workers, "cli": cli}
    finally:
        for worker in workers.values():
            stop_tree(worker)


@pytest.fixture(scope="module")
def fan_out(root, clones, pool):
    """`prefect deployment run cyclegan/fan-out --watch`, as the README says; its flow run."""
    argv = [str(VENV_BIN / "prefect"), "deployment", "run", "cyclegan/fan-out", "--watch"]
    argv += ["--watch-timeout", str(WATCH_TIMEOUT_S), "--param", f"ablation_key={KEY}"]
    argv += ["--param", f"overrides={json.dumps(TINY_OVERRIDES)}"]
    started = time.monotonic()
    result = subprocess.run(
        argv,
        cwd=clones["collect"],
        env=pool["cli"],
        capture_output=True,
        text=True,
        timeout=WATCH_TIMEOUT_S + 60,
    )
    wall_s = time.monotonic() - started
    output = result.stdout + result.stderr
    (root / "fan-out-run.log").write_text(output)
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, output[-4000:]
    flow_run = requests.get(f"{pool['api']}/flow_runs/{match[1]}", timeout=10).json()
    print(f"\ne2e fan-out: {wall_s:.0f} s wall, exit {result.returncode}, state {flow_run['state']['type']}")
    if result.returncode != 0 or flow_run["state"]["type"] != "COMPLETED":
        logs = "\n\n".join(f"--- {p.name}\n{p.read_text()[-5000:]}" for p in sorted(root.glob("*.log")))
        pytest.fail(f"fan-out ended {flow_run['state']}:\n{output[-3000:]}\n{logs}")
    return {"flow_run": flow_run, "wall_s": wall_s}


def _trained_in(clone: Path) -> set[str]:
    """The (variant, seed)s whose training ran in `clone`: its dvc.lock and its outputs say so."""
    lock = clone / "dvc.lock"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}
    return {name.split("@", 1)[1] for name in stages if name.startswith("train@")}


def test_every_run_ran_on_one_of_the_two_workers_and_both_were_used(fan_out, clones):
    ran = {worker: _trained_in(clones[worker]) for worker in WORKERS}
    print("which worker ran what:", {worker: sorted(names) for worker, names in ran.items()})
    assert ran["worker-a"] | ran["worker-b"] == RUNS and not ran["worker-a"] & ran["worker-b"], ran
    assert all(ran.values()), f"a worker did nothing: {ran}"


def test_the_collecting_clone_is_up_to_date(fan_out, clones, pool):
    collect = clones["collect"]
    env = {**pool["cli"], "PYTHONPATH": str(collect)}
    status = dvc(collect, env, "status")
    print(f"collecting clone, `dvc status`:\n{status.stdout.strip()}")
    assert status.returncode == 0, status.stderr
    as_json = dvc(collect, env, "status", "--json")
    assert json.loads(as_json.stdout or "{}") == {}, as_json.stdout
    lock_before = (collect / "dvc.lock").read_text()
    repro = dvc(collect, env, "repro")
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    assert "Running stage" not in repro.stdout and "up to date" in repro.stdout, repro.stdout[-3000:]
    assert (collect / "dvc.lock").read_text() == lock_before
    assert json.loads((collect / "reports" / "ablation.json").read_text())["variants"].keys() == set(
        STUDY["variants"]
    )
    assert _trained_in(collect) == RUNS  # recorded here, restored from the run cache, trained elsewhere


def test_one_parent_holds_every_run_and_the_server_holds_their_artifacts(
    fan_out, servers, root, clones, tmp_path
):
    client = mlflow_client(servers["mlflow"].url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location
    parents = client.search_runs([experiment.experiment_id], "tags.`cyclegan.role` = 'ablation'")
    assert len(parents) == 1, [p.info.run_name for p in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["cyclegan.ablation_key"] == KEY
    assert parent.data.tags["prefect.flow_run_id"] == fan_out["flow_run"]["id"]
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    found = {f"{c.data.tags['cyclegan.variant']}-{c.data.tags['cyclegan.seed']}" for c in children}
    assert found == RUNS and len(children) == len(RUNS)
    everyone = client.search_runs([experiment.experiment_id], "")
    assert len(everyone) == 1 + len(RUNS)  # nothing retrained or re-recorded by the collect
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.info.artifact_uri.startswith("mlflow-artifacts:"), child.info.artifact_uri
        # Read back through the server, from here: the metrics JSON the evaluate stage attached.
        local = client.download_artifacts(child.info.run_id, "eval", str(tmp_path / child.info.run_id))
        assert any(Path(local).glob("*.json")), list(Path(local).iterdir())
        assert "eval/fcn/label2photo/class_iou" in child.data.metrics
    # The artifacts are the server's: in its folder, in no clone.
    assert any((root / "mlflow-artifacts").rglob("*.json"))
    for clone in clones.values():
        assert not (clone / "mlartifacts").exists() and not (clone / "mlruns").exists()


def test_no_clone_lost_a_variant(fan_out, clones):
    for name, clone in clones.items():
        params = yaml.safe_load((clone / "params.yaml").read_text())
        assert list(params["variants"]) == STUDY["variants"] and params["seeds"] == STUDY["seeds"], name
        assert params["train"]["max_steps"] == 4  # the overrides are applied, loudly, as ever


def test_the_workers_pushed_outputs_and_run_cache_to_the_shared_remote(fan_out, pool):
    entries = [path for path in (pool["remote"] / "runs").rglob("*") if path.is_file()]
    # One run-cache entry per stage that ran on a worker: the four shared ones and three per run.
    assert len(entries) >= 4 + 3 * len(RUNS), len(entries)
