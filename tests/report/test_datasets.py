"""The report follows the dataset: FCN scores only with a judge, SSIM and PSNR only with a paired test
set, FID and KID always; directions by their names; nothing shown that the dataset does not have."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import PipelineError
from pipeline.report.dataset import DatasetInfo, read_split_info
from pipeline.report.markdown import NOT_MEASURED
from pipeline.scoring.bootstrap import percentile_interval, resample_counts
from tests.factories import make_report_inputs
from tests.report.builder import build

FACADES = {"layout": "paired", "domains": {"A": "facade", "B": "label"}, "classes": None, "paired_test": True}
HORSES = {
    "layout": "unpaired",
    "domains": {"A": "horse", "B": "zebra"},
    "classes": None,
    "paired_test": False,
}
TWINS = {"twin": 0.5, "gan_only": 0.4, "cyclegan": 0.5}  # twin's images score exactly as cyclegan's
FCN_WORDS = ("fcn", "pixel_acc", "class_acc", "class_iou", "per_class_iou", "ground_truth", "iou", "table 4")
FIDELITY_WORDS = ("ssim", "psnr")


def _outputs_text(paths) -> dict[str, str]:
    """Every text the report wrote, lower-cased; the markdown without its one line per absent family."""
    markdown = "\n".join(line for line in paths.markdown.read_text().splitlines() if NOT_MEASURED not in line)
    rows = "\n".join(p.read_text() for p in sorted(paths.dvc_metrics.iterdir()))
    texts = {"markdown": markdown, "csv": paths.csv.read_text(), "json": paths.json.read_text(), "dvc": rows}
    texts["plots"] = " ".join(p.name for p in paths.plots)
    return {name: text.lower() for name, text in texts.items()}


def _named(texts: dict[str, str], words) -> dict[str, list[str]]:
    return {name: [w for w in words if re.search(rf"\b{w}\b", text)] for name, text in texts.items()}


def _not_measured(paths) -> list[str]:
    return [line for line in paths.markdown.read_text().splitlines() if NOT_MEASURED in line]


@pytest.fixture(scope="module")
def facades(tmp_path_factory):
    """A paired dataset without class label maps, two seeds, FID known: built once, with real plots."""
    root = tmp_path_factory.mktemp("facades")
    inputs = make_report_inputs(root / "in", TWINS, seeds=[0, 1], fid=50.0, dataset=FACADES)
    return inputs, build(inputs, root / "reports", TWINS, [0, 1])


@pytest.fixture(scope="module")
def horses(tmp_path_factory):
    """An unpaired dataset, one seed, FID missing for one variant: built once, with real plots."""
    root = tmp_path_factory.mktemp("horses")
    fid = {"cycle_only": None, "gan_only": 40.0, "cyclegan": 30.0}
    quality = {"cycle_only": 0.3, "gan_only": 0.4, "cyclegan": 0.5}
    inputs = make_report_inputs(root / "in", quality, seeds=[0], fid=fid, dataset=HORSES)
    return inputs, build(inputs, root / "reports", quality, [0])


# --- the split's dataset block ----------------------------------------------------------------------------


def test_a_split_without_a_dataset_block_is_cityscapes(tmp_path):
    assert read_split_info(tmp_path) == DatasetInfo()  # no summary.json at all
    (tmp_path / "summary.json").write_text(json.dumps({"config": {"protocol": "paper"}}))
    cityscapes = read_split_info(tmp_path)
    assert cityscapes.directions == ("label2photo", "photo2label") and cityscapes.has_judge
    block = {"domains": {"A": "photo", "B": "label"}, "classes": "cityscapes", "paired_test": True}
    (tmp_path / "summary.json").write_text(json.dumps({"dataset": block}))
    assert read_split_info(tmp_path) == cityscapes


def test_the_dataset_says_which_metrics_exist(tmp_path):
    facades = DatasetInfo("facade", "label", classes=None, paired_test=True)
    assert facades.directions == ("label2facade", "facade2label")
    assert facades.fcn_metrics == () and facades.why_no_judge().startswith("the dataset has no class label")
    assert facades.fidelity_metrics == (
        "ssim/label2facade",
        "psnr/label2facade",
        "ssim/facade2label",
        "psnr/facade2label",
    )
    unpaired_cityscapes = DatasetInfo(paired_test=False, layout="unpaired")
    assert unpaired_cityscapes.per_image_metrics == ()
    assert (
        "unpaired" in unpaired_cityscapes.why_no_judge()
        and "unpaired" in unpaired_cityscapes.why_no_fidelity()
    )
    assert unpaired_cityscapes.distribution_metrics == (
        "fid/label2photo",
        "kid/label2photo",
        "fid/photo2label",
        "kid/photo2label",
    )


def test_directions_that_do_not_follow_the_domains_are_refused(tmp_path):
    block = {**FACADES, "directions": ["facade2label", "label2facade"]}
    (tmp_path / "summary.json").write_text(json.dumps({"dataset": block}))
    with pytest.raises(PipelineError, match="do not follow the domains"):
        read_split_info(tmp_path)


def test_a_file_without_what_its_dataset_has_is_stale(tmp_path, fast_plots):
    inputs = make_report_inputs(tmp_path / "in", TWINS, seeds=[0], dataset=FACADES)
    stale = inputs["confusion"] / "twin-0.npz"
    np.savez(stale, image_ids=np.load(stale)["image_ids"])  # what an evaluate stage without SSIM wrote
    with pytest.raises(PipelineError, match=r"twin-0\.npz lacks ssim/label2facade, .*re-run its evaluate"):
        build(inputs, tmp_path / "reports", TWINS, [0])


# --- Cityscapes: every family ---------------------------------------------------------------------------


def test_cityscapes_has_all_three_families_and_its_fid(tmp_path, fast_plots):
    quality = {"gan_only": 0.4, "cyclegan": 0.5}
    inputs = make_report_inputs(tmp_path / "in", quality, seeds=[0], fid=80.0)
    paths = build(inputs, tmp_path / "reports", quality, [0])
    markdown = paths.markdown.read_text()
    for heading in (
        "## labels → photo",
        "## photo → labels",
        "## The paper's question",
        "## Paired fidelity",
        "## Distribution",
    ):
        assert heading in markdown
    assert not _not_measured(paths)
    written = json.loads((inputs["metrics"] / "cyclegan-0.json").read_text())
    entry = json.loads(paths.json.read_text())["variants"]["cyclegan"]
    assert entry["fid/label2photo"]["values"] == [80.0] and entry["kid/photo2label"]["values"] == [0.09]
    assert entry["kid/photo2label"]["subset_std"] == [pytest.approx(written["kid/photo2label/std"])]
    assert entry["ssim/label2photo"]["mean"] == pytest.approx(written["ssim/label2photo"])
    row = json.loads((paths.dvc_metrics / "2_cyclegan.json").read_text())
    assert list(row["l2p"]) == ["pixel_acc", "class_acc", "class_iou", "ssim", "psnr", "fid", "kid"]
    assert row["p2l"]["fid"] == 90.0 and row["p2l"]["kid"] == 0.09
    assert json.loads((paths.dvc_metrics / "0_floor.json").read_text())["l2p"]["fid"] == 300.0
    assert "| CycleGAN | 80.0 | 0.0800 ± 0.0080 | 90.0 | 0.0900 ± 0.0090 |" in markdown
    table = pd.read_csv(paths.csv, index_col="variant")
    assert list(table.index) == ["gan_only", "cyclegan", "floor", "ground_truth"]
    assert table.loc["cyclegan", "kid/label2photo/subset_std"] == pytest.approx(0.008)


# --- a paired dataset without class label maps ------------------------------------------------------------


def test_paired_without_labels_has_fidelity_and_distribution_but_no_fcn(facades):
    _, paths = facades
    markdown = paths.markdown.read_text()
    assert markdown.startswith("# CycleGAN loss ablation: facade ↔ label\n")
    assert "`label2facade` (F: label → facade) and `facade2label` (G: facade → label)" in markdown
    assert _not_measured(paths) == [
        f"- {NOT_MEASURED} FCN scores, because the dataset has no class label maps to score a segmentation "
        "against."
    ]
    assert "## Paired fidelity: SSIM and PSNR" in markdown and "## Distribution: FID and KID" in markdown
    assert "There is no ceiling: a real image against itself is trivially perfect" in markdown
    assert "Ceiling: real images" not in markdown and "The paper's question" not in markdown
    document = json.loads(paths.json.read_text())
    assert {"ceiling", "paper", "source"}.isdisjoint(document)
    assert document["dataset"]["directions"] == ["label2facade", "facade2label"]
    assert set(document["variants"]["twin"]) == {
        "seeds",
        *(f"{m}/{d}" for d in ("label2facade", "facade2label") for m in ("ssim", "psnr", "fid", "kid")),
    }
    assert sorted(p.name for p in paths.plots) == [
        "distribution.png",
        "fidelity.png",
        "losses.png",
        "samples.png",
    ]


def test_nothing_names_a_metric_the_dataset_lacks(facades, horses):
    texts = _outputs_text(facades[1])
    assert _named(texts, FCN_WORDS) == {name: [] for name in texts}
    texts = _outputs_text(horses[1])
    assert _named(texts, FCN_WORDS + FIDELITY_WORDS + ("bootstrap",)) == {name: [] for name in texts}


def test_ssim_and_psnr_have_seed_and_val_image_intervals(facades):
    inputs, paths = facades
    entry = json.loads(paths.json.read_text())["variants"]["gan_only"]["ssim/facade2label"]
    written = [json.loads((inputs["metrics"] / f"gan_only-{s}.json").read_text()) for s in (0, 1)]
    assert entry["values"] == [pytest.approx(w["ssim/facade2label"], abs=1e-6) for w in written]
    assert entry["mean"] == pytest.approx(np.mean(entry["values"]), abs=1e-6)
    assert entry["std"] == pytest.approx(np.std(entry["values"], ddof=1), abs=1e-5)
    half = 12.706 * entry["std"] / np.sqrt(2)  # t(0.975, 1 dof)
    assert entry["ci95"] == [
        pytest.approx(entry["mean"] - half, abs=1e-4),
        pytest.approx(entry["mean"] + half, abs=1e-4),
    ]
    # The same resamples as the FCN scores: counts of every image, the mean over seeds of each resample.
    per_image = [np.load(inputs["confusion"] / f"gan_only-{s}.npz")["ssim/facade2label"] for s in (0, 1)]
    counts = resample_counts(len(per_image[0]), 1000, 0)
    expected = percentile_interval(np.mean([counts @ x / len(x) for x in per_image], axis=0))
    assert entry["bootstrap_ci95"] == [pytest.approx(v, abs=1e-6) for v in expected]
    assert entry["bootstrap_ci95"][0] < entry["mean"] < entry["bootstrap_ci95"][1]


def test_an_identical_variant_differs_by_exactly_zero_in_ssim_and_psnr(facades):
    pairwise = json.loads(facades[1].json.read_text())["pairwise"]
    assert list(pairwise) == ["twin", "gan_only"]
    for metric in ("ssim/label2facade", "psnr/facade2label"):
        twin = pairwise["twin"][metric]
        assert twin["difference"] == 0 and twin["bootstrap_ci95"] == [0, 0] and twin["excludes_zero"] is False
        low, high = twin["seeds_ci95"]  # across seeds, unpaired (Welch): centred on 0, not a point
        assert low == -high < 0
    gan_only = pairwise["gan_only"]["ssim/label2facade"]  # 0.1 below cyclegan on every image
    assert gan_only["difference"] == pytest.approx(-0.1) and gan_only["excludes_zero"] is True
    assert gan_only["bootstrap_ci95"] == [pytest.approx(-0.1)] * 2
    assert "### SSIM and PSNR: each variant against CycleGAN" in facades[1].markdown.read_text()


def test_paired_floor_rows_and_dvc_metrics(facades):
    _, paths = facades
    assert sorted(p.name for p in paths.dvc_metrics.iterdir()) == [
        "0_floor.json",
        "1_twin.json",
        "2_gan_only.json",
        "3_cyclegan.json",
    ]
    floor = json.loads((paths.dvc_metrics / "0_floor.json").read_text())
    assert floor == {
        "l2f": {"ssim": 0.05, "psnr": 8.0, "fid": 300.0, "kid": 0.3},
        "f2l": {"ssim": 0.05, "psnr": 8.0, "fid": 310.0, "kid": 0.31},
    }
    twin = json.loads((paths.dvc_metrics / "1_twin.json").read_text())
    assert list(twin) == ["l2f", "f2l"] and list(twin["l2f"]) == ["ssim", "psnr", "fid", "kid"]
    table = pd.read_csv(paths.csv, index_col="variant")
    assert list(table.index) == ["twin", "gan_only", "cyclegan", "floor"]
    assert not [c for c in table.columns if c.startswith(("fcn/", "paper/"))]
    assert table.loc["floor", "psnr/label2facade"] == 8.0
    assert table.loc["twin", "ssim/label2facade"] == table.loc["cyclegan", "ssim/label2facade"]


# --- an unpaired dataset ----------------------------------------------------------------------------------


def test_unpaired_has_only_fid_and_kid(horses):
    _, paths = horses
    markdown = paths.markdown.read_text()
    assert [line.split(", because ")[1] for line in _not_measured(paths)] == [
        "the dataset has no class label maps to score a segmentation against.",
        "the test set is unpaired, so no translation has a true counterpart to compare with.",
    ]
    sections = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert sections == [
        "## Distribution: FID and KID",
        "## Where these numbers came from, and how far they can move",
        "## How this differs from the paper's protocol",
        "## Plots",
    ]
    assert "bilinearly to 299×299" in markdown and "Parmar et al. 2022" in markdown
    assert "FID and KID, statistics of the whole image set, have no interval with one seed" in markdown
    document = json.loads(paths.json.read_text())
    assert document["pairwise"] == {} and document["dataset"]["paired_test"] is False
    assert sorted(p.name for p in paths.plots) == ["distribution.png", "losses.png", "samples.png"]


def test_a_missing_fid_is_na_with_its_reason_beside_a_known_one(horses):
    _, paths = horses
    markdown = paths.markdown.read_text()
    assert "| Cycle alone | n/a | n/a | n/a | n/a |" in markdown
    assert "| GAN alone | 40.0 | 0.0400 ± 0.0040 | 50.0 | 0.0500 ± 0.0050 |" in markdown
    assert "- FID and KID n/a (cycle_only): FID Inception weights not in the torch hub cache" in markdown
    document = json.loads(paths.json.read_text())
    missing = document["variants"]["cycle_only"]
    assert missing["fid/zebra2horse"] == {"values": [None], "mean": None, "std": None, "ci95": None}
    assert missing["fid_unavailable"] == "FID Inception weights not in the torch hub cache"
    assert document["variants"]["gan_only"]["fid/horse2zebra"]["values"] == [50.0]
    assert "fid_unavailable" not in document["variants"]["gan_only"]
    rows = {p.name: json.loads(p.read_text()) for p in paths.dvc_metrics.iterdir()}
    assert rows["1_cycle_only.json"] == {}  # nothing known: no number written
    assert rows["2_gan_only.json"] == {"z2h": {"fid": 40.0, "kid": 0.04}, "h2z": {"fid": 50.0, "kid": 0.05}}
    table = pd.read_csv(paths.csv, index_col="variant")
    assert (
        np.isnan(table.loc["cycle_only", "fid/zebra2horse"])
        and table.loc["gan_only", "fid/zebra2horse"] == 40.0
    )
