"""The whole pipeline under plain DVC, on a generated archive: what `dvc repro` leaves in MLflow and in
`dvc plots`, seeds as an experiment, and a variant removed from params.yaml.

No servers: DVC runs every stage for real in a throw-away copy of the project, with the project's
default MLflow store (mlflow.db at its root). A few minutes on 2 cores.

Three of the five variants, chosen so that each loss term's plot holds a different set of runs: the
whole ablation runs through the Prefect deployment in `tests/e2e/test_prefect_flow.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from pipeline.core.overrides import apply_params_overrides
from tests.factories import N_TRAIN, N_VAL, TINY_OVERRIDES, copy_project, make_archive, make_pix2pix_tree

pytestmark = pytest.mark.e2e

VARIANTS = ["cycle_only", "gan_backward", "cyclegan"]
FEWER = ["~variants.gan_only", "~variants.gan_forward"]


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CYCLEGAN_PARENT"))}
    env["CYCLEGAN_DATA_SOURCE"] = str(project.parent / "cityscapes.tar.gz")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return result


def commit(project: Path, message: str) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "add", "-A"], cwd=project, check=True, capture_output=True)
    subprocess.run([*git, "commit", "-qm", message], cwd=project, check=True, capture_output=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    make_pix2pix_tree(root / "dataset", n_train=N_TRAIN, n_val=N_VAL)
    make_archive(root / "dataset", root / "cityscapes.tar.gz")
    project = copy_project(root / "project", keep_lock=False, commit=True)
    overrides = [*TINY_OVERRIDES, *FEWER]
    apply_params_overrides(project / "params.yaml", overrides, backup_path=root / "params.before.yaml")
    commit(project, "tiny, three variants")
    dvc(project, "repro")
    return project


def store(project: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def launch_parents(project: Path) -> list:
    client = store(project)
    experiment = client.get_experiment_by_name("cyclegan-ablation")
    runs = client.search_runs([experiment.experiment_id], "tags.`cyclegan.role` = 'ablation'")
    return sorted(runs, key=lambda run: run.info.start_time)


def children(project: Path, parent) -> list:
    return store(project).search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )


def test_every_variant_run_describes_itself_under_one_parent(project):
    (parent,) = launch_parents(project)
    assert parent.info.status == "FINISHED"
    assert parent.info.end_time - parent.info.start_time > 5_000  # spans the launch, not 18 ms
    runs = children(project, parent)
    assert sorted(run.data.tags["cyclegan.variant"] for run in runs) == sorted(VARIANTS)
    for run in runs:
        tags = run.data.tags
        assert len(tags["mlflow.source.git.commit"]) == 40, tags  # MLflow's own context tags
        assert tags["mlflow.source.name"].endswith("stages/train.py") and tags["mlflow.user"]
        (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
        assert dataset.digest.endswith(".dir") and "cityscapes.tar.gz" in dataset.source
        assert tags["cyclegan.profile"] == "default" and tags["cyclegan.seed"] == "0"
        assert "eval/fcn/label2photo/iou/road" in run.data.metrics
    assert "| CycleGAN |" in parent.data.tags["mlflow.note.content"]


def test_dvc_plots_overlay_every_run_per_loss_term(project):
    shown = json.loads(dvc(project, "plots", "show", "--json").stdout)
    assert not shown.get("errors"), shown["errors"]
    expected = {
        "loss_G": set(VARIANTS),
        "loss_D_Y": set(VARIANTS) - {"cycle_only"},
        "loss_cycle_forward": {"cycle_only", "cyclegan"},
    }
    for term, variants in expected.items():
        (plot,) = shown["data"][f"reports/losses/{term}.csv"]
        content = plot["content"]
        assert content["encoding"]["y"]["field"] == term
        points: dict[str, int] = {}
        for row in content["data"]["values"]:
            points[row["run"]] = points.get(row["run"], 0) + 1
        assert set(points) == {f"{v}-0" for v in variants}, term
        assert min(points.values()) > 2, points  # a row every log_every steps, not one per epoch


def test_two_seeds_as_an_experiment_give_intervals_across_seeds(project):
    dvc(project, "exp", "run", "-S", "seeds=[0,1]")
    report = json.loads((project / "reports" / "ablation.json").read_text())
    for variant in VARIANTS:
        entry = report["variants"][variant]
        assert entry["seeds"] == [0, 1]
        for metric in ("fcn/label2photo/pixel_acc", "fcn/photo2label/class_iou"):
            values = entry[metric]
            assert len(values["values"]) == 2 and values["std"] is not None
            assert values["ci95"][0] <= values["mean"] <= values["ci95"][1]
    markdown = (project / "reports" / "ablation.md").read_text()
    assert "Floor: content-free output" in markdown and "The paper's question" in markdown
    runs = children(project, launch_parents(project)[-1])
    assert len(runs) == 2 * len(VARIANTS)  # trained now (seed 1), and reused from the first launch (seed 0)
    dvc(project, "exp", "apply", dvc(project, "exp", "ls", "--name-only").stdout.split()[-1])
    commit(project, "two seeds")


def test_a_removed_variant_leaves_the_report_and_the_parent(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert "gan_backward" in params["variants"]
    apply_params_overrides(
        project / "params.yaml", ["~variants.gan_backward"], backup_path=project.parent / "b"
    )
    dvc(project, "repro")
    report = json.loads((project / "reports" / "ablation.json").read_text())
    assert "gan_backward" not in report["variants"] and "gan_backward" not in report["pairwise"]
    assert "GAN + backward cycle" not in (project / "reports" / "ablation.md").read_text()
    assert not [p for p in (project / "reports" / "metrics").iterdir() if "gan_backward" in p.name]
    parent = launch_parents(project)[-1]
    names = {run.data.tags["cyclegan.variant"] for run in children(project, parent)}
    assert "gan_backward" not in names and len(names) == len(VARIANTS) - 1
    assert "GAN + backward cycle" not in parent.data.tags["mlflow.note.content"]
    assert "gan_backward" not in parent.data.tags["cyclegan.variants"]
    status = dvc(project, "status", "--json")
    assert json.loads(status.stdout or "{}") == {}, status.stdout
