"""The report: exactly the runs of params.yaml, intervals of both kinds, floor and ceiling, pairwise."""

import json
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.judge.metrics import segmentation_scores
from pipeline.report.dataset import DatasetInfo
from pipeline.report.inputs import load_inputs
from pipeline.report.paper import PAPER_SCORES
from pipeline.report.results import summarize
from pipeline.tracking import parent as parents
from pipeline.tracking import runs
from pipeline.tracking.report import ReportRecorder
from stages import report as report_stage
from tests.factories import confusions_with_accuracy, make_report_inputs, run_script
from tests.report.builder import build

QUALITY = {"cycle_only": 0.3, "gan_only": 0.4, "cyclegan": 0.5}
CITYSCAPES = DatasetInfo()  # what a split without a dataset block holds


def _build(inputs: dict, out: Path, variants=tuple(QUALITY), seeds=(0,), **kwargs):
    return build(inputs, out, variants, seeds, **kwargs)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    return make_report_inputs(tmp_path_factory.mktemp("report_inputs"), QUALITY, seeds=[0, 1])


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    """The one-seed report built once with its real plots; tests below only read it."""
    return _build(inputs, tmp_path_factory.mktemp("built") / "reports")


def test_point_values_are_the_evaluate_stages_scores(built, inputs):
    document = json.loads(built.json.read_text())
    for variant in QUALITY:
        written = json.loads((inputs["metrics"] / f"{variant}-0.json").read_text())
        entry = document["variants"][variant]
        assert entry["seeds"] == [0]
        for metric in ("fcn/label2photo/pixel_acc", "fcn/photo2label/class_iou"):
            assert entry[metric]["values"] == [pytest.approx(written[metric], abs=1e-6)]
            assert entry[metric]["mean"] == pytest.approx(written[metric], abs=1e-6)
            # One seed: no spread across seeds, but the val-image bootstrap brackets the mean.
            assert entry[metric]["std"] is None and entry[metric]["ci95"] is None
            low, high = entry[metric]["bootstrap_ci95"]
            assert low < entry[metric]["mean"] < high


def test_two_seeds_give_values_mean_std_and_a_t_interval(inputs, fast_plots, tmp_path):
    paths = _build(inputs, tmp_path / "reports", seeds=(0, 1))
    entry = json.loads(paths.json.read_text())["variants"]["gan_only"]["fcn/label2photo/pixel_acc"]
    a, b = entry["values"]
    written = [json.loads((inputs["metrics"] / f"gan_only-{s}.json").read_text()) for s in (0, 1)]
    assert [a, b] == [pytest.approx(w["fcn/label2photo/pixel_acc"], abs=1e-6) for w in written] and a != b
    assert entry["mean"] == pytest.approx((a + b) / 2, abs=1e-6)
    assert entry["std"] == pytest.approx(abs(b - a) / np.sqrt(2), abs=1e-5)
    half = 12.706 * entry["std"] / np.sqrt(2)  # t(0.975, 1 dof)
    assert entry["ci95"] == [
        pytest.approx(entry["mean"] - half, abs=1e-4),
        pytest.approx(entry["mean"] + half, abs=1e-4),
    ]
    assert "95% Welch interval across seeds" in paths.markdown.read_text()


def test_the_report_reads_exactly_the_variants_and_seeds_it_is_given(inputs, fast_plots, tmp_path):
    # cycle_only's files are still on disk (a variant removed from params.yaml): never read.
    paths = _build(inputs, tmp_path / "reports", variants=("gan_only", "cyclegan"))
    document = json.loads(paths.json.read_text())
    assert list(document["variants"]) == ["gan_only", "cyclegan"]
    assert list(document["pairwise"]) == ["gan_only"]
    assert "Cycle alone" not in paths.markdown.read_text()
    assert "cycle_only" not in pd.read_csv(paths.csv, index_col="variant").index
    assert sorted(p.name for p in paths.dvc_metrics.iterdir()) == [
        "0_floor.json",
        "1_gan_only.json",
        "2_cyclegan.json",
        "3_ground_truth.json",
    ]
    assert "cycle_only-0" not in (paths.losses / "loss_G.csv").read_text()


def test_tables_show_floor_ceiling_share_and_paper_numbers(built):
    markdown = built.markdown.read_text()
    table4 = markdown.split("## labels → photo")[1].split("## photo → labels")[0]
    rows = [
        line.split(" | ")[0] for line in table4.splitlines() if line.startswith("| ") and "Loss" not in line
    ]
    assert rows == [
        "| Floor: content-free output",
        "| Cycle alone",
        "| GAN alone",
        "| CycleGAN",
        "| Ceiling: real images",
    ]
    document = json.loads(built.json.read_text())
    entry = document["variants"]["cyclegan"]["fcn/label2photo/pixel_acc"]
    floor, ceiling = (
        document["floor"]["fcn/label2photo/pixel_acc"],
        document["ceiling"]["fcn/label2photo/pixel_acc"],
    )
    assert floor == pytest.approx(0.1) and ceiling == pytest.approx(0.8)
    assert entry["share_of_ceiling"] == pytest.approx((entry["mean"] - floor) / (ceiling - floor), abs=1e-5)
    table = pd.read_csv(built.csv, index_col="variant")
    assert list(table.index) == ["cycle_only", "gan_only", "cyclegan", "floor", "ground_truth"]
    assert table.loc["cyclegan", "paper/fcn/label2photo/pixel_acc"] == 0.52
    assert "How this differs from the paper's protocol" in markdown and "FCN-8s" in markdown
    assert "One seed: this is one draw" in markdown and "Machine: cpu test" in markdown
    assert "FID and KID n/a (every variant, the floor): FID Inception weights" in markdown


def test_pairwise_differences_are_paired_and_marked(built):
    document = json.loads(built.json.read_text())
    gan_only = document["pairwise"]["gan_only"]["fcn/label2photo/pixel_acc"]
    # gan_only is cyclegan minus 0.1 on every image: a paired resample sees exactly that difference.
    assert gan_only["difference"] == pytest.approx(-0.1, abs=0.01)
    assert gan_only["bootstrap_ci95"] == [pytest.approx(-0.1, abs=0.01)] * 2
    assert gan_only["excludes_zero"] is True and gan_only["seeds_ci95"] is None
    assert "✱" in built.markdown.read_text().split("The paper's question")[1]


def test_an_identical_variant_differs_by_exactly_zero(tmp_path, fast_plots):
    inputs = make_report_inputs(tmp_path, {"twin": 0.5, "cyclegan": 0.5}, seeds=[0])
    summary = summarize(
        load_inputs(
            ["twin", "cyclegan"], [0], inputs["metrics"], inputs["confusion"], inputs["bounds"], CITYSCAPES
        ),
        1000,
        0,
    )
    diff = summary.pairwise["twin"]["fcn/photo2label/class_iou"]
    assert diff["difference"] == 0 and diff["bootstrap_ci95"] == [0, 0] and not diff["excludes_zero"]


def test_the_bootstrap_of_500_images_repeats_from_its_seed(tmp_path):
    inputs = make_report_inputs(tmp_path, QUALITY, seeds=[0], n_images=500)
    loaded = load_inputs(
        list(QUALITY), [0], inputs["metrics"], inputs["confusion"], inputs["bounds"], CITYSCAPES
    )
    start = time.perf_counter()
    first = summarize(loaded, 1000, 7)
    seconds = time.perf_counter() - start
    # A figure, not a test of speed (this machine's load is not the code's): seen here at about 0.3 s.
    print(f"val-image bootstrap: 1000 resamples of 500 images, {len(QUALITY)} variants, {seconds:.2f} s")
    again = summarize(loaded, 1000, 7)
    other = summarize(loaded, 1000, 8)
    key = ("gan_only", "fcn/label2photo/class_iou")
    assert (
        first.variants[key[0]][key[1]]["bootstrap_ci95"] == again.variants[key[0]][key[1]]["bootstrap_ci95"]
    )
    assert (
        first.variants[key[0]][key[1]]["bootstrap_ci95"] != other.variants[key[0]][key[1]]["bootstrap_ci95"]
    )


def test_dvc_metric_rows_and_loss_curves(built):
    files = sorted(p.name for p in built.dvc_metrics.iterdir())
    assert files == [
        "0_floor.json",
        "1_cycle_only.json",
        "2_gan_only.json",
        "3_cyclegan.json",
        "4_ground_truth.json",
    ]
    row = json.loads((built.dvc_metrics / "3_cyclegan.json").read_text())
    # FID and KID are null here (offline): left out, never written as a number.
    assert set(row) == {"l2p", "p2l"}
    assert set(row["l2p"]) == {"pixel_acc", "class_acc", "class_iou", "ssim", "psnr"}
    loss_d = pd.read_csv(built.losses / "loss_D_Y.csv")
    assert list(loss_d.columns) == ["step", "run", "loss_D_Y"]
    assert sorted(set(loss_d["run"])) == ["cyclegan-0", "gan_only-0"]  # cycle_only has no D
    assert sorted(set(pd.read_csv(built.losses / "loss_G.csv")["run"])) == [
        "cycle_only-0",
        "cyclegan-0",
        "gan_only-0",
    ]


def test_plots_are_valid_pngs(built):
    assert sorted(p.name for p in built.plots) == [
        "distribution.png",
        "fcn_scores.png",
        "fidelity.png",
        "losses.png",
        "per_class_iou.png",
        "samples.png",
    ]
    for path in built.plots:
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"


def test_missing_files_are_clear_errors(inputs, tmp_path):
    with pytest.raises(PipelineError, match=r"nope-0\.npz not found: run the stage that writes it"):
        load_inputs(["nope"], [0], inputs["metrics"], inputs["confusion"], inputs["bounds"], CITYSCAPES)
    with pytest.raises(PipelineError, match="no variants or no seeds"):
        load_inputs([], [0], inputs["metrics"], inputs["confusion"], inputs["bounds"], CITYSCAPES)


def test_rebuilding_replaces_the_report_atomically(inputs, fast_plots, tmp_path):
    out = tmp_path / "reports"
    (tmp_path / ".reports-staging-k1lled-old-x" / "plots").mkdir(parents=True)  # a killed run's
    _build(inputs, out)
    (out / "plots" / "stale.png").write_text("old")
    (out / ".gitignore").write_text("/plots\n")  # DVC's: not the report's to delete
    _build(inputs, out)
    assert not (out / "plots" / "stale.png").exists()
    assert (out / ".gitignore").read_text() == "/plots\n"
    assert [p.name for p in tmp_path.iterdir()] == ["reports"]  # no staging folder left behind
    assert sorted(p.name for p in out.iterdir()) == [
        ".gitignore",
        "ablation.csv",
        "ablation.json",
        "ablation.md",
        "losses",
        "metrics",
        "plots",
    ]


@pytest.fixture
def store(monkeypatch, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("CYCLEGAN_PARENT_RUN_ID", raising=False)
    return mlflow.MlflowClient(uri)


class LaunchRecorder(ReportRecorder):
    """The report recorder with its launch's parent given (a plain launch owns it; a flow's does not)."""

    def __init__(self, parent: str, owned: bool = True):
        super().__init__({"variants": {v: {} for v in QUALITY}, "seeds": [0]}, "no-split")
        self.parent, self.owned = parent, owned

    def launch_parent(self) -> tuple[str, bool]:
        return self.parent, self.owned


def test_the_launch_parent_shows_every_run_even_when_training_was_reused(tmp_path, fast_plots, store):
    inputs = make_report_inputs(tmp_path / "in", QUALITY, seeds=[0])
    # The runs were trained under an earlier launch's parent, each tagged with what it trained...
    earlier = parents.open_parent("report-test", "earlier launch")
    for variant in QUALITY:
        digest = f"digest-of-{variant}"
        runs.start_run(
            "report-test",
            f"{variant}-0",
            earlier,
            {"train.lr": 2e-4},
            {"cyclegan.variant": variant, "cyclegan.seed": "0", runs.DIGEST_TAG: digest},
        )
        path = inputs["metrics"] / f"{variant}-0.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "training_digest": digest}))
    # ...and this launch (cycle_only removed) reuses two of them.
    launch = parents.open_parent("report-test", "this launch")
    for _ in range(2):  # a rebuilt report adds nothing twice
        _build(
            inputs, tmp_path / "reports", variants=("gan_only", "cyclegan"), recorder=LaunchRecorder(launch)
        )
    parent = store.get_run(launch)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "ablation-this launch"
    children = store.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(c.info.run_name for c in children) == ["cyclegan-0", "gan_only-0"]
    for child in children:
        assert child.data.tags["cyclegan.trained_in"] in {
            r.info.run_id for r in store.search_runs([parent.info.experiment_id])
        }
        assert child.data.params["train.lr"] == "0.0002"
        assert child.data.metrics["eval/fcn/label2photo/pixel_acc"] > 0
    note = parent.data.tags["mlflow.note.content"]
    assert "GAN alone" in note and "Cycle alone" not in note  # the removed variant is not mentioned
    artifacts = {a.path for a in store.list_artifacts(parent.info.run_id)}
    assert {"ablation_table.json", "report"} <= artifacts


def test_the_flows_parent_is_used_and_left_to_the_flow_to_end(tmp_path, fast_plots, store, monkeypatch):
    inputs = make_report_inputs(tmp_path / "in", QUALITY, seeds=[0])
    parent = parents.open_parent("report-test", "flow launch")
    monkeypatch.setenv("CYCLEGAN_PARENT_RUN_ID", parent)
    recorder = ReportRecorder({"variants": {v: {} for v in QUALITY}, "seeds": [0]}, "no-split")
    _build(inputs, tmp_path / "reports", recorder=recorder)
    assert recorder.parent_id == parent and store.get_run(parent).info.status == "RUNNING"


def test_an_unreachable_store_only_warns(inputs, fast_plots, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("CYCLEGAN_PARENT_RUN_ID", "flow-parent")
    recorder = ReportRecorder({"variants": {v: {} for v in QUALITY}, "seeds": [0]}, "no-split")
    with pytest.warns(UserWarning, match="report not recorded in MLflow"):
        paths = _build(inputs, tmp_path / "reports", recorder=recorder)
    assert recorder.parent_id is None and paths.json.is_file()


def test_paper_numbers_are_complete():
    for rows in PAPER_SCORES.values():
        assert {"cycle_only", "gan_only", "gan_forward", "gan_backward", "cyclegan"} <= set(rows)
        assert all(len(scores) == 3 and all(0 <= s <= 1 for s in scores) for scores in rows.values())


def test_confusion_factory_scores_what_it_says():
    assert segmentation_scores(confusions_with_accuracy([0.25, 0.75]).sum(axis=0))["pixel_acc"] == 0.5


def _stage_argv(params: Path, inputs: dict[str, Path]) -> list[str]:
    """`stages.report`'s arguments for the built inputs, all but `--out`."""
    argv = ["--params", str(params), "--metrics", str(inputs["metrics"])]
    argv += ["--confusion", str(inputs["confusion"]), "--bounds", str(inputs["bounds"])]
    argv += ["--translations", str(inputs["translations"]), "--split", str(inputs["split"])]
    return [*argv, "--train-plots", str(inputs["train_plots"])]


def test_stage_reads_variants_and_seeds_from_params(inputs, fast_plots, tmp_path, capsys, store):
    params = tmp_path / "params.yaml"
    params.write_text("report: {n_samples: 2}\nseeds: [0, 1]\nvariants: {gan_only: {}, cyclegan: {}}\n")
    argv = [*_stage_argv(params, inputs), "--out", str(tmp_path / "reports")]
    assert report_stage.main(argv) == 0
    assert "2 variants x 2 seeds" in capsys.readouterr().out
    params.write_text("report: {}\nseeds: [0]\nvariants: {missing_one: {}}\n")
    assert report_stage.main(argv) == 1
    assert "missing_one-0.npz not found" in capsys.readouterr().err


@pytest.mark.slow
def test_the_report_has_the_same_bytes_in_every_process(inputs, tmp_path, store):
    # Committed to git and never cached, the report is rebuilt in every clone: nothing in it may follow
    # the order of a set of strings, which Python's hash seed changes from one process to the next.
    params = tmp_path / "params.yaml"
    params.write_text(
        "report: {n_samples: 2}\nseeds: [0]\nvariants: {cycle_only: {}, gan_only: {}, cyclegan: {}}\n"
    )
    argv = _stage_argv(params, inputs)
    script = "import sys; from stages.report import main; sys.exit(main(sys.argv[1:]))"
    for seed in ("1", "2"):
        child = run_script(script, [*argv, "--out", str(tmp_path / seed)], env={"PYTHONHASHSEED": seed})
        assert child.returncode == 0, child.stderr
    for name in ("ablation.json", "ablation.csv", "ablation.md"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name
