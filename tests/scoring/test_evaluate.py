import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.cyclegan.checkpoint import load_checkpoint, training_digest
from pipeline.data.labels import CLASS_NAMES, colorize, decode_label_map
from pipeline.scoring import evaluate as evaluate_module
from pipeline.scoring.evaluate import EvaluateConfig, evaluate_variant, run_evaluation
from pipeline.scoring.fid import FidKidResult
from pipeline.tracking import runs
from pipeline.tracking.evaluate import EvaluateRecorder
from pipeline.tracking.evaluate import eval_metrics as tracked_metrics
from stages import evaluate as evaluate_stage
from tests.factories import make_checkpoint, make_val_split, tiny_judge_checkpoint

CFG = EvaluateConfig(batch_size=2, device="cpu")


class ColourJudge:
    """Stands in for the FCN: 'segments' an image by reading it as a colour label map."""

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.stack([decode_label_map(image) for image in images.numpy()])).long()


@pytest.fixture(autouse=True)
def offline_fid(monkeypatch):
    """No Inception weights here: FID answers null at once (never a download attempt in tests)."""
    calls = []

    def fid_kid_between(images_a, images_b, cfg):
        calls.append((list(images_a), list(images_b)))
        return FidKidResult(None, None, None, None, "FID Inception weights not available offline")

    monkeypatch.setattr(evaluate_module, "fid_kid_between", fid_kid_between)
    return calls


@pytest.fixture
def colour_judge(monkeypatch):
    monkeypatch.setattr(evaluate_module, "load_judge", lambda path, device: ColourJudge())


@pytest.fixture
def split_dir(tmp_path: Path) -> Path:
    return make_val_split(tmp_path / "split", n=3, size=16)


def write_translations(root: Path, split_dir: Path, photo2label, label2photo) -> Path:
    """Translations made from each val mask by the given functions (mask -> RGB image)."""
    for direction, make in (("photo2label", photo2label), ("label2photo", label2photo)):
        (root / direction).mkdir(parents=True)
        for mask_path in sorted((split_dir / "val" / "mask").glob("*.png")):
            mask = np.asarray(Image.open(mask_path))
            Image.fromarray(make(mask)).save(root / direction / mask_path.name)
    return root


def test_the_masks_own_colour_maps_score_perfectly(split_dir, tmp_path, colour_judge, offline_fid):
    translations = write_translations(tmp_path / "translations", split_dir, colorize, colorize)
    metrics, _, _ = evaluate_variant("cyclegan", translations, split_dir, "judge.pt", CFG)
    for direction in ("label2photo", "photo2label"):
        for score in ("pixel_acc", "class_acc", "class_iou"):
            assert metrics[f"fcn/{direction}/{score}"] == pytest.approx(1.0)
        present = {
            CLASS_NAMES[i]
            for m in (split_dir / "val" / "mask").glob("*.png")
            for i in np.unique(np.asarray(Image.open(m)))
            if i < 19
        }
        per_class = metrics["per_class_iou"][direction]
        assert list(per_class) == CLASS_NAMES
        assert {name for name, iou in per_class.items() if iou is not None} == present
        assert all(per_class[name] == pytest.approx(1.0) for name in present)
    assert metrics["variant"] == "cyclegan" and metrics["n_images"] == 3
    # offline, FID is asked once (not once more per direction) and reported null for both
    [(fake, real)] = offline_fid
    assert {p.parent.name for p in fake} == {"label2photo"} and {p.parent.name for p in real} == {"photo"}
    assert metrics["fid/label2photo"] is None and metrics["fid/photo2label"] is None
    assert metrics["fid_unavailable"] == "FID Inception weights not available offline"


def test_labels_decoded_to_void_count_as_wrong(split_dir, tmp_path, colour_judge):
    black = lambda mask: np.zeros((*mask.shape, 3), np.uint8)  # noqa: E731 - black decodes to void
    translations = write_translations(tmp_path / "translations", split_dir, black, colorize)
    metrics, _, _ = evaluate_variant("cyclegan", translations, split_dir, "judge.pt", CFG)
    assert metrics["fcn/photo2label/pixel_acc"] == 0.0
    assert metrics["fcn/photo2label/class_iou"] == 0.0
    assert metrics["fcn/label2photo/pixel_acc"] == pytest.approx(1.0)


def test_one_confusion_matrix_over_all_images(split_dir, tmp_path, colour_judge):
    # image 1 all correct, the rest all void: pixel acc is the share of image 1's scored pixels
    def first_only(mask):
        return colorize(mask) if first_only.calls == 0 else np.zeros((*mask.shape, 3), np.uint8)

    def counted(mask):
        out = first_only(mask)
        first_only.calls += 1
        return out

    first_only.calls = 0
    translations = write_translations(tmp_path / "translations", split_dir, counted, colorize)
    masks = [np.asarray(Image.open(p)) for p in sorted((split_dir / "val" / "mask").glob("*.png"))]
    scored = [(m != 255).sum() for m in masks]
    metrics, _, _ = evaluate_variant("cyclegan", translations, split_dir, "judge.pt", CFG)
    assert metrics["fcn/photo2label/pixel_acc"] == pytest.approx(scored[0] / sum(scored))


def test_translations_of_another_size_are_resized_to_the_mask(split_dir, tmp_path, colour_judge):
    def big(mask):
        return np.kron(colorize(mask), np.ones((2, 2, 1), np.uint8))

    translations = write_translations(tmp_path / "translations", split_dir, big, big)
    metrics, _, _ = evaluate_variant("cyclegan", translations, split_dir, "judge.pt", CFG)
    assert metrics["fcn/photo2label/pixel_acc"] == pytest.approx(1.0)


def test_a_missing_translation_names_the_file(split_dir, tmp_path, colour_judge):
    translations = write_translations(tmp_path / "translations", split_dir, colorize, colorize)
    (translations / "label2photo" / "2.png").unlink()
    with pytest.raises(PipelineError, match=r"label2photo/2\.png is missing.*translate"):
        evaluate_variant("cyclegan", translations, split_dir, "judge.pt", CFG)


def test_fid_values_and_unavailability_are_reported(split_dir, tmp_path, colour_judge, monkeypatch):
    translations = write_translations(tmp_path / "translations", split_dir, colorize, colorize)
    results = {
        "label2photo": FidKidResult(12.5, 0.25, 0.05, 3),
        "photo2label": FidKidResult(None, None, None, None, "no weights"),
    }
    real_domain = {"label2photo": "photo", "photo2label": "label"}

    def fid_kid_between(fake, real, cfg):
        direction = Path(fake[0]).parent.name
        assert {Path(p).parent.name for p in real} == {
            real_domain[direction]
        }  # translated vs real, same domain
        return results[direction]

    monkeypatch.setattr(evaluate_module, "fid_kid_between", fid_kid_between)
    metrics, _, _ = evaluate_variant("cyclegan", translations, split_dir, "judge.pt", CFG)
    assert metrics["fid/label2photo"] == 12.5 and metrics["kid/label2photo/mean"] == 0.25
    assert metrics["fid/photo2label"] is None and metrics["kid/photo2label/mean"] is None
    assert metrics["fid_unavailable"] == "photo2label: no weights"
    tracked = tracked_metrics(metrics)
    scores = {
        k: v for k, v in tracked.items() if "/iou/" not in k and not k.startswith(("eval/ssim", "eval/psnr"))
    }
    assert scores == {
        **{
            f"eval/fcn/{d}/{s}": pytest.approx(1.0)
            for d in ("label2photo", "photo2label")
            for s in ("pixel_acc", "class_acc", "class_iou")
        },
        "eval/fid/label2photo": 12.5,
        "eval/kid/label2photo/mean": 0.25,
        "eval/kid/label2photo/std": 0.05,
    }
    # A paired test set: each translation against its true counterpart, both ways.
    assert {"eval/ssim/label2photo", "eval/psnr/photo2label"} <= set(tracked)
    # Per-class IoU of every class present, per direction, under names the compare view lines up.
    assert tracked["eval/fcn/photo2label/iou/traffic_light"] == pytest.approx(1.0)
    assert len([k for k in tracked if k.startswith("eval/fcn/label2photo/iou/")]) == sum(
        v is not None for v in metrics["per_class_iou"]["label2photo"].values()
    )


def test_the_real_judge_scores_translated_photos(split_dir, tmp_path):
    translations = write_translations(tmp_path / "translations", split_dir, colorize, colorize)
    judge = tiny_judge_checkpoint(tmp_path / "judge.pt")
    metrics, _, _ = evaluate_variant("cyclegan", translations, split_dir, judge, CFG)
    assert 0.0 <= metrics["fcn/label2photo/pixel_acc"] <= 1.0
    assert metrics["fcn/photo2label/pixel_acc"] == pytest.approx(1.0)


@pytest.fixture
def logged(monkeypatch):
    """The MLflow calls of the evaluate recorder, caught; its training run is "run42"."""
    calls = {"metrics": [], "artifacts": [], "images": [], "tags": [], "found": []}

    def find(experiment, digest):
        calls["found"].append((experiment, digest))
        return "run42"

    monkeypatch.setattr(runs, "find_training_run", find)
    monkeypatch.setattr(
        runs,
        "log_image",
        lambda run_id, image, key, step: calls["images"].append((run_id, key, step, image.shape)),
    )
    monkeypatch.setattr(runs, "set_tags", lambda run_id, tags: calls["tags"].append((run_id, tags)))
    monkeypatch.setattr(
        runs,
        "log_metrics",
        lambda run_id, metrics, step=None: calls["metrics"].append((run_id, metrics, step)),
    )

    def log_artifacts(run_id, path, artifact_path=None):
        calls["artifacts"].append((run_id, artifact_path, [Path(path).name]))

    monkeypatch.setattr(runs, "log_artifacts", log_artifacts)
    return calls


def test_run_evaluation_writes_json_then_the_recorder_logs_into_the_training_run(
    split_dir, tmp_path, colour_judge, logged
):
    translations = write_translations(tmp_path / "translations", split_dir, colorize, colorize)
    checkpoint = make_checkpoint(tmp_path / "checkpoint.pt")
    out = tmp_path / "metrics" / "cyclegan.json"
    cfg = EvaluateConfig(batch_size=2, device="cpu")
    recorder = EvaluateRecorder("test-eval", log_samples=2)
    run_evaluation(
        "cyclegan", translations, split_dir, "judge.pt", out, cfg, checkpoint=checkpoint, recorder=recorder
    )
    written = json.loads(out.read_text())
    assert written["fcn/photo2label/pixel_acc"] == pytest.approx(1.0)
    assert written["fid/label2photo"] is None and "offline" in written["fid_unavailable"]
    # The training is named by what it trained, never by a run id: the file holds only what inputs decide.
    assert "mlflow_run_id" not in written and written["training_digest"] == training_digest(
        load_checkpoint(checkpoint)
    )
    assert logged["found"] == [("test-eval", written["training_digest"])]
    [(run_id, metrics, step)] = logged["metrics"]
    assert run_id == "run42" and step == 7
    assert {m for m in metrics if m.startswith("eval/fcn") and "/iou/" not in m} == {
        f"eval/fcn/{d}/{s}"
        for d in ("label2photo", "photo2label")
        for s in ("pixel_acc", "class_acc", "class_iou")
    }
    assert {"eval/ssim/label2photo", "eval/psnr/photo2label"} <= set(metrics)  # a paired test set
    assert logged["artifacts"] == [("run42", "eval", ["cyclegan.json"])]
    # Samples as stepped images (one key per val image and direction), and why FID is missing as a tag.
    assert [(key, step) for _, key, step, _ in logged["images"]] == [
        ("eval/label2photo/1", 7),
        ("eval/label2photo/2", 7),
        ("eval/photo2label/1", 7),
        ("eval/photo2label/2", 7),
    ]
    assert logged["tags"] == [("run42", {"cyclegan.fid_unavailable": written["fid_unavailable"]})]
    assert [p.name for p in out.parent.iterdir()] == ["cyclegan.json"]  # no temp file left


def test_without_a_training_run_or_store_the_json_is_still_written(
    split_dir, tmp_path, colour_judge, monkeypatch, private_tracking_store
):
    translations = write_translations(tmp_path / "translations", split_dir, colorize, colorize)
    out = tmp_path / "cyclegan.json"
    checkpoint = make_checkpoint(tmp_path / "a.pt")
    recorder = EvaluateRecorder("test-eval-none")
    with pytest.warns(UserWarning, match="no MLflow run trained these weights"):
        run_evaluation(
            "cyclegan",
            translations,
            split_dir,
            "judge.pt",
            out,
            CFG,
            checkpoint=checkpoint,
            recorder=recorder,
        )
    assert out.is_file()
    out.unlink()

    def unreachable(*args, **kwargs):
        raise ConnectionError("store unreachable")

    monkeypatch.setattr(runs, "find_training_run", unreachable)
    with pytest.warns(UserWarning, match="store unreachable"):
        run_evaluation(
            "cyclegan",
            translations,
            split_dir,
            "judge.pt",
            out,
            CFG,
            checkpoint=checkpoint,
            recorder=recorder,
        )
    assert json.loads(out.read_text())["variant"] == "cyclegan"


def test_a_checkpoint_of_another_variant_is_refused(split_dir, tmp_path, colour_judge):
    checkpoint = make_checkpoint(tmp_path / "checkpoint.pt", variant="gan_only")
    with pytest.raises(PipelineError, match="gan_only"):
        run_evaluation(
            "cyclegan", tmp_path, split_dir, "judge.pt", tmp_path / "m.json", CFG, checkpoint=checkpoint
        )


def test_stage_runs_from_params(split_dir, tmp_path, colour_judge, capsys):
    translations = write_translations(tmp_path / "translations", split_dir, colorize, colorize)
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  batch_size: 2\n  device: cpu\n  fid:\n    required: false\n")
    out = tmp_path / "metrics" / "cyclegan.json"
    argv = [
        "--params",
        str(params),
        "--variant",
        "cyclegan",
        "--translations",
        str(translations),
        "--split",
        str(split_dir),
        "--judge",
        "judge.pt",
        "--out",
        str(out),
    ]
    assert evaluate_stage.main(argv) == 0  # no checkpoint: nothing to find in MLflow, nothing said
    out = capsys.readouterr().out
    assert "label2photo 1.000/1.000/1.000 SSIM" in out and "FID n/a KID n/a" in out
    params.write_text("evaluate:\n  fid:\n    batch_size: 0\n")
    assert evaluate_stage.main(argv) == 1
    assert "batch_size" in capsys.readouterr().err


def test_a_nan_metric_is_an_error_not_a_crash_in_json_writing(
    split_dir, tmp_path, colour_judge, monkeypatch, capsys
):
    translations = write_translations(tmp_path / "translations", split_dir, colorize, colorize)
    monkeypatch.setattr(
        evaluate_module, "fid_kid_between", lambda fake, real, cfg: FidKidResult(float("nan"), 0.0, 0.0, 3)
    )
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  batch_size: 2\n  device: cpu\n")
    out = tmp_path / "metrics" / "cyclegan.json"
    argv = ["--params", str(params), "--variant", "cyclegan", "--translations", str(translations)]
    assert evaluate_stage.main([*argv, "--split", str(split_dir), "--judge", "j.pt", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert (
        last.startswith("error: refusing to write ")
        and "fid/label2photo (nan), fid/photo2label (nan)" in last
    )
    assert "Traceback" not in err and not out.exists()
