import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.data.labels import CLASS_NAMES
from pipeline.report import build as report_module
from pipeline.report import figures
from pipeline.report.build import ReportConfig, build_report
from pipeline.report.paper import PAPER_SCORES
from pipeline.report.tables import load_variant_metrics
from stages import report as report_stage
from tests.factories import make_val_split


def variant_metrics(variant: str, base: float, fid: float | None) -> dict:
    metrics = {"variant": variant, "n_images": 3}
    for i, direction in enumerate(("label2photo", "photo2label")):
        for j, score in enumerate(("pixel_acc", "class_acc", "class_iou")):
            metrics[f"fcn/{direction}/{score}"] = round(base - 0.1 * j - 0.05 * i, 4)
        metrics[f"fid/{direction}"] = fid
    if fid is None:
        metrics["fid_unavailable"] = "FID Inception weights not in the torch hub cache"
    iou = {name: (None if k == 3 else round(base * k / 19, 3)) for k, name in enumerate(CLASS_NAMES)}
    metrics["per_class_iou"] = {"label2photo": iou, "photo2label": iou}
    return metrics


JUDGE = {
    "fcn/real/pixel_acc": 0.6,
    "fcn/real/class_acc": 0.3,
    "fcn/real/class_iou": 0.2,
    "per_class_iou": [0.5] * 19,
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("report_inputs")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    for variant, base, fid in (("cyclegan", 0.5, 80.0), ("gan_only", 0.4, None), ("cycle_only", 0.3, 120.5)):
        (metrics / f"{variant}.json").write_text(json.dumps(variant_metrics(variant, base, fid)))
    (metrics / "fcn.json").write_text(json.dumps(JUDGE))  # the judge's file sits beside the variants'
    split = make_val_split(tmp_path / "split", n=3, size=16)
    translations = tmp_path / "translations"
    for variant in ("cyclegan", "cycle_only"):  # gan_only's translations are missing: a gap on the sheet
        for direction in ("photo2label", "label2photo"):
            (translations / variant / direction).mkdir(parents=True)
            for image_id in ("1", "2", "3"):
                Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(
                    translations / variant / direction / f"{image_id}.png"
                )
    plots = tmp_path / "plots" / "train"
    plots.mkdir(parents=True)
    pd.DataFrame({"epoch": [1, 2], "step": [10, 20], "loss_G": [3.0, 2.0], "loss_D_X": [0.5, 0.4]}).to_csv(
        plots / "cyclegan.csv", index=False
    )
    pd.DataFrame({"epoch": [1, 2], "step": [10, 20], "loss_cycle": [1.0, 0.8]}).to_csv(
        plots / "cycle_only.csv", index=False
    )
    return {
        "metrics": metrics,
        "judge": metrics / "fcn.json",
        "translations": translations,
        "split": split,
        "train_plots": plots,
        "out": tmp_path / "reports",
    }


def _build(inputs: dict, out: Path | None = None, **kwargs):
    return build_report(
        inputs["metrics"],
        inputs["judge"],
        inputs["translations"],
        inputs["split"],
        inputs["train_plots"],
        out or inputs["out"],
        **kwargs,
    )


@pytest.fixture(scope="module")
def built(inputs):
    """The report built once (plotting takes a second or two); tests below only read it."""
    return _build(inputs, track=False)


@pytest.fixture
def fast_plots(monkeypatch):
    """Plots replaced by a 1x1 PNG, for tests about everything but the plots."""

    def tiny(*args):
        Image.new("RGB", (1, 1)).save(args[-1])
        return True

    for name in ("plot_scores", "plot_per_class_iou", "plot_losses", "plot_samples"):
        monkeypatch.setattr(figures, name, tiny)


def test_report_tables_follow_the_paper_layout(built):
    paths = built
    table = pd.read_csv(paths.csv, index_col="variant")
    # paper row order; only the variants with metric files; the judge's ceiling last
    assert list(table.index) == ["cycle_only", "gan_only", "cyclegan", "ground_truth"]
    assert table.loc["cyclegan", "fcn/label2photo/pixel_acc"] == pytest.approx(0.5)
    assert table.loc["cyclegan", "paper/fcn/label2photo/pixel_acc"] == 0.52
    assert table.loc["gan_only", "paper/fcn/photo2label/class_iou"] == 0.07
    assert table.loc["ground_truth", "fcn/label2photo/class_iou"] == pytest.approx(0.2)
    assert table.loc["ground_truth", "paper/fcn/label2photo/pixel_acc"] == 0.80
    # ours over the judge's ceiling: 0.3 / 0.2 for cyclegan's class IoU
    assert table.loc["cyclegan", "vs_ceiling/fcn/label2photo/class_iou"] == pytest.approx(1.5)
    assert np.isnan(table.loc["gan_only", "fid/label2photo"])

    markdown = paths.markdown.read_text()
    table4 = markdown.split("## labels → photo")[1].split("## photo → labels")[0]
    rows = [line for line in table4.splitlines() if line.startswith("| ") and "Loss" not in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| Cycle alone",
        "| GAN alone",
        "| CycleGAN",
        "| Ground truth (judge on real photos)",
    ]
    # ours, FID, paper, then ours ÷ our judge's ceiling beside the paper's ÷ its FCN-8s (0.51 / 0.80)
    assert (
        "| GAN alone | 0.400 | 0.300 | 0.200 | n/a | 0.51 | 0.11 | 0.08 "
        "| 0.67 / 0.64 | 1.00 / 0.42 | 1.00 / 0.38 |" in table4
    )
    assert "FID n/a (GAN alone): FID Inception weights" in markdown
    assert "![samples](plots/samples.png)" in markdown

    document = json.loads(paths.json.read_text())
    assert document["rows"]["gan_only"]["fid/label2photo"] is None
    assert document["rows"]["cyclegan"]["fid/photo2label"] == 80.0


def test_dvc_metric_files_are_one_short_row_each_in_paper_order(built):
    paths = built
    files = sorted(p.name for p in paths.dvc_metrics.iterdir())
    assert files == ["0_cycle_only.json", "1_gan_only.json", "2_cyclegan.json", "3_ground_truth.json"]
    gan_only = json.loads((paths.dvc_metrics / "1_gan_only.json").read_text())
    assert gan_only["l2p"] == {"pixel_acc": 0.4, "class_acc": 0.3, "class_iou": 0.2}  # null FID left out
    truth = json.loads((paths.dvc_metrics / "3_ground_truth.json").read_text())
    assert set(truth) == {"l2p"}


def test_plots_are_valid_pngs(built):
    paths = built
    assert sorted(p.name for p in paths.plots) == [
        "losses.png",
        "per_class_iou.png",
        "samples.png",
        "scores.png",
    ]
    for path in paths.plots:
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"


def test_report_without_judge_training_logs_or_translations(inputs, tmp_path):
    paths = build_report(
        [inputs["metrics"] / "cyclegan.json"],
        None,
        None,
        inputs["split"],
        None,
        tmp_path / "bare",
        ReportConfig(sample_ids=["2"]),
        track=False,
    )
    table = pd.read_csv(paths.csv, index_col="variant")
    assert list(table.index) == ["cyclegan"]
    assert "÷ ceiling" not in paths.markdown.read_text()
    assert sorted(p.name for p in paths.plots) == ["per_class_iou.png", "samples.png", "scores.png"]


def test_missing_or_broken_metrics_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="no variant metrics"):
        load_variant_metrics(tmp_path / "empty")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PipelineError, match="not valid JSON"):
        load_variant_metrics([tmp_path / "bad.json"])
    with pytest.raises(PipelineError, match="not found"):
        load_variant_metrics([tmp_path / "nope.json"])


def test_rebuilding_replaces_the_report_atomically(inputs, fast_plots, tmp_path):
    out = tmp_path / "reports"
    (tmp_path / ".reports-staging-k1lled-old-x" / "plots").mkdir(parents=True)  # a killed run's
    _build(inputs, out, track=False)
    (out / "plots" / "stale.png").write_text("old")
    (out / ".gitignore").write_text("/plots\n")  # DVC's: not the report's to delete
    _build(inputs, out, track=False)
    assert not (out / "plots" / "stale.png").exists()
    assert (out / ".gitignore").read_text() == "/plots\n"
    assert [p.name for p in tmp_path.iterdir()] == ["reports"]  # no temp folder left behind
    assert sorted(p.name for p in out.iterdir()) == [
        ".gitignore",
        "ablation.csv",
        "ablation.json",
        "ablation.md",
        "metrics",
        "plots",
    ]


def test_report_is_attached_to_the_parent_run(inputs, fast_plots, tmp_path, monkeypatch):
    from pipeline.orchestration import tracking

    logged = []
    monkeypatch.setenv("CYCLEGAN_PARENT_RUN_ID", "parent123")
    monkeypatch.setattr(
        tracking,
        "log_artifacts",
        lambda run_id, path, artifact_path=None: logged.append((run_id, Path(path), artifact_path)),
    )
    paths = _build(inputs, tmp_path / "reports")
    assert paths.mlflow_parent_run_id == "parent123"
    assert logged == [("parent123", tmp_path / "reports", "report")]


def test_parent_run_is_found_through_the_variant_runs(monkeypatch):
    from pipeline.orchestration import tracking

    class Client:
        def get_run(self, run_id):
            tags = {"mlflow.parentRunId": "p1"} if run_id != "orphan" else {}
            return type("Run", (), {"data": type("Data", (), {"tags": tags})()})()

    monkeypatch.delenv("CYCLEGAN_PARENT_RUN_ID", raising=False)
    monkeypatch.setattr(tracking, "client", Client)
    assert (
        report_module._parent_run_id({"a": {"mlflow_run_id": "r1"}, "b": {"mlflow_run_id": "orphan"}}) == "p1"
    )
    assert report_module._parent_run_id({"a": {"mlflow_run_id": None}}) is None


def test_an_unreachable_store_only_warns(inputs, fast_plots, tmp_path, monkeypatch):
    monkeypatch.setenv("CYCLEGAN_PARENT_RUN_ID", "parent123")

    def fail(*args, **kwargs):
        raise ConnectionError("store down")

    from pipeline.orchestration import tracking

    monkeypatch.setattr(tracking, "log_artifacts", fail)
    with pytest.warns(UserWarning, match="store down"):
        paths = _build(inputs, tmp_path / "reports")
    assert paths.mlflow_parent_run_id is None and paths.json.is_file()


def test_paper_numbers_are_complete():
    for rows in PAPER_SCORES.values():
        assert {"cycle_only", "gan_only", "gan_forward", "gan_backward", "cyclegan"} <= set(rows)
        assert all(len(scores) == 3 and all(0 <= s <= 1 for s in scores) for scores in rows.values())


def test_stage_runs_from_params(inputs, fast_plots, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CYCLEGAN_PARENT_RUN_ID", raising=False)
    params = tmp_path / "params.yaml"
    params.write_text("report:\n  n_samples: 2\n")
    argv = [
        "--params",
        str(params),
        "--metrics",
        str(inputs["metrics"]),
        "--judge-metrics",
        str(inputs["judge"]),
        "--translations",
        str(inputs["translations"]),
        "--split",
        str(inputs["split"]),
        "--train-plots",
        str(inputs["train_plots"]),
        "--out",
        str(tmp_path / "reports"),
    ]
    assert report_stage.main(argv) == 0
    assert "4 plots" in capsys.readouterr().out
    argv[argv.index("--judge-metrics") + 1] = str(tmp_path / "missing.json")
    assert report_stage.main(argv) == 1
    assert "missing.json not found" in capsys.readouterr().err
