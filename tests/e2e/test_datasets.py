"""Other datasets than Cityscapes, end to end under plain `dvc repro`: a pix2pix-style paired one
(facades-like A|B images, no class label maps) and a CycleGAN-style unpaired zip (domains of other
sizes, images of other sizes). Each runs to a report whose tables hold the metrics the dataset has:
FID and KID always (null offline, with the reason), SSIM and PSNR for the paired one, never an FCN row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.overrides import apply_params_overrides
from tests.factories import TINY_OVERRIDES, copy_project, make_paired_dataset, make_unpaired_dataset, make_zip

pytestmark = pytest.mark.e2e

# Two variants of the ablation, tiny, with this dataset's names and no class label maps.
OVERRIDES = [
    *(o for o in TINY_OVERRIDES if not o.startswith("++data.expected_counts")),
    "data.expected_counts=null",
    "data.image_size=null",
    "split.classes=null",
    "~variants.cycle_only",
    "~variants.gan_forward",
    "~variants.gan_backward",
]


def repro(project: Path, source: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CYCLEGAN_PARENT"))}
    env.update(CYCLEGAN_DATA_SOURCE=str(source), PYTHONPATH=str(project))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )


def project_for(tmp_path: Path, domains: str) -> Path:
    project = copy_project(tmp_path / "project", keep_lock=False, commit=True)
    apply_params_overrides(project / "params.yaml", [*OVERRIDES, f"split.domains={domains}"])
    return project


def test_a_paired_dataset_without_label_maps_runs_to_a_report_of_its_metrics(tmp_path):
    dataset = make_paired_dataset(tmp_path / "data", "facades", {"train": 6, "val": 3, "test": 2}, (48, 24))
    project = project_for(tmp_path, "{A:facade,B:label}")
    result = repro(project, dataset.parent)  # a user's folder, holding the dataset folder
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    provenance = json.loads((project / "data" / "raw" / "provenance.json").read_text())
    assert provenance["layout"] == "paired" and provenance["dataset"] == "facades"
    summary = json.loads((project / "data" / "split" / "summary.json").read_text())
    assert summary["counts"] == {
        "train_label/label": 3,
        "train_photo/photo": 3,
        "val/label": 3,
        "val/photo": 3,
    }
    assert summary["dataset"]["directions"] == ["label2facade", "facade2label"]
    assert "no class label maps" in json.loads((project / "metrics" / "fcn.json").read_text())["reason"]
    metrics = json.loads((project / "metrics" / "cyclegan-0.json").read_text())
    assert not [key for key in metrics if key.startswith("fcn/")]
    assert 0 <= metrics["ssim/label2facade"] <= 1 and metrics["psnr/facade2label"] > 0
    assert metrics["fid/facade2label"] is None and metrics["fid_unavailable"]  # offline: said, not made up
    report = json.loads((project / "reports" / "ablation.json").read_text())
    names = json.dumps(report)
    assert "fcn/" not in names and "ssim/label2facade" in names and "kid/facade2label" in names
    markdown = (project / "reports" / "ablation.md").read_text()
    assert "SSIM" in markdown and "KID" in markdown and "pytorch-fid" in markdown


def test_an_unpaired_zip_of_uneven_domains_runs_to_a_report_of_fid_and_kid(tmp_path):
    dataset = make_unpaired_dataset(
        tmp_path / "data", "horse2zebra", {"trainA": 5, "trainB": 7, "testA": 3, "testB": 4}
    )
    archive = make_zip(dataset, tmp_path / "horse2zebra.zip")
    project = project_for(tmp_path, "{A:horse,B:zebra}")
    result = repro(project, archive)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    provenance = json.loads((project / "data" / "raw" / "provenance.json").read_text())
    assert provenance["layout"] == "unpaired"
    assert provenance["counts"] == {"testA": 3, "testB": 4, "trainA": 5, "trainB": 7}
    summary = json.loads((project / "data" / "split" / "summary.json").read_text())
    assert summary["counts"] == {
        "train_label/label": 7,
        "train_photo/photo": 5,
        "val/label": 4,
        "val/photo": 3,
    }
    translations = project / "translations" / "cyclegan-0"
    assert len(list((translations / "horse2zebra").glob("*.png"))) == 3
    assert len(list((translations / "zebra2horse").glob("*.png"))) == 4
    metrics = json.loads((project / "metrics" / "gan_only-0.json").read_text())
    assert {"fid/horse2zebra", "kid/zebra2horse/mean"} <= set(metrics)
    assert not [key for key in metrics if key.startswith(("fcn/", "ssim/", "psnr/"))]
    names = json.dumps(json.loads((project / "reports" / "ablation.json").read_text()))
    assert "fcn/" not in names and "ssim/" not in names and "fid/horse2zebra" in names
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=project, capture_output=True, text=True, timeout=300
    )
    assert "Data and pipelines are up to date." in status.stdout, status.stdout
