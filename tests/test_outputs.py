"""A stage's outputs depend on its DVC deps and nothing else: what the DVC graph leaves out is proven
to leave the outputs byte-identical.

Two things are left out of the deps (`tests.dvc_graph`, dvc.yaml's `params:`):

- the recording layer (`pipeline.tracking`): each stage's outputs are the same bytes whether its
  computing code is handed the MLflow recorder or the `Recorder` that records nothing;
- each params section's `OUTPUT_NEUTRAL_KEYS`: changing any one of them, as the code declares them,
  leaves the outputs the same bytes. The keys come from the code, so a key wrongly declared neutral
  (one that does change an output) fails here.

And the same code, params and data give the same bytes twice: no run id, wall time or clock reading is
in any output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.core.recording import NOTHING
from pipeline.cyclegan.config import TrainConfig
from pipeline.cyclegan.loop import TrainingRun, train_variant
from pipeline.cyclegan.losses import LossSwitches
from pipeline.data.download import DataConfig, download
from pipeline.data.split import SplitConfig, split
from pipeline.judge.train import JudgeConfig, train_judge
from pipeline.scoring.evaluate import EvaluateConfig, run_evaluation
from pipeline.tracking.evaluate import EvaluateRecorder
from pipeline.tracking.train import TrainRecorder
from tests.factories import TINY_TRAIN, make_split, make_val_split

pytestmark = pytest.mark.usefixtures("private_tracking_store")


def digests(*paths: Path) -> dict[str, str]:
    """sha256 of every file under `paths` (files or folders), by path relative to its root."""
    found = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            name = path.name if root.is_file() else f"{root.name}/{path.relative_to(root)}"
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def other_value(value: Any) -> Any:
    """A different valid value of a config key, whatever its type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 1.5
    if isinstance(value, str):
        return f"{value}-other"
    if isinstance(value, dict):
        return {key: other_value(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(other_value(item) for item in value)
    raise TypeError(f"no other value for {value!r}")


def changed(cfg, key: str):
    return dataclasses.replace(cfg, **{key: other_value(getattr(cfg, key))})


# --- train -------------------------------------------------------------------------------------------

TRAIN = dataclasses.replace(TINY_TRAIN, max_steps=12, checkpoint_every=4, log_every=3)


@pytest.fixture(scope="module")
def train_split(tmp_path_factory) -> Path:
    return make_split(tmp_path_factory.mktemp("train") / "split")


def train_outputs(split_dir: Path, out: Path, cfg: TrainConfig, recorder=NOTHING) -> dict[str, str]:
    run = TrainingRun("cyclegan", LossSwitches(), cfg, split_dir, out / "model", out / "curves.csv")
    train_variant(run, recorder)
    return digests(out / "model", out / "curves.csv")


@pytest.fixture(scope="module")
def train_reference(train_split, tmp_path_factory) -> dict[str, str]:
    return train_outputs(train_split, tmp_path_factory.mktemp("reference"), TRAIN)


def test_a_training_run_gives_the_same_bytes_twice(train_split, train_reference, tmp_path):
    assert train_outputs(train_split, tmp_path, TRAIN) == train_reference


def test_recording_a_training_run_in_mlflow_changes_no_byte(train_split, train_reference, tmp_path):
    params = {"train": {"experiment": "test-outputs"}, "variants": {"cyclegan": {}}, "seeds": [0]}
    recorder = TrainRecorder(params)
    assert train_outputs(train_split, tmp_path, TRAIN, recorder) == train_reference
    assert recorder.run_id is not None  # it did record: the run exists


@pytest.mark.parametrize("key", sorted(TrainConfig.OUTPUT_NEUTRAL_KEYS))
def test_a_neutral_train_key_changes_no_byte(train_split, train_reference, tmp_path, key):
    assert train_outputs(train_split, tmp_path, changed(TRAIN, key)) == train_reference


# --- judge -------------------------------------------------------------------------------------------

JUDGE = JudgeConfig(device="cpu", image_size=16, epochs=1, batch_size=2, width=2, checkpoint_every=2)


@pytest.fixture(scope="module")
def judge_split(tmp_path_factory) -> Path:
    from tests.judge.test_judge import make_split as make_judge_split

    return make_judge_split(tmp_path_factory.mktemp("judge") / "split")


def judge_outputs(split_dir: Path, out: Path, cfg: JudgeConfig) -> dict[str, str]:
    scores = train_judge(split_dir, out / "fcn", cfg)
    (out / "fcn.json").write_text(json.dumps(scores, sort_keys=True))  # what the stage writes
    return digests(out / "fcn", out / "fcn.json")


@pytest.mark.parametrize("key", sorted(JudgeConfig.OUTPUT_NEUTRAL_KEYS))
def test_a_neutral_judge_key_changes_no_byte(judge_split, tmp_path, key):
    reference = judge_outputs(judge_split, tmp_path / "a", JUDGE)
    assert judge_outputs(judge_split, tmp_path / "b", JUDGE) == reference  # twice: the same bytes
    assert judge_outputs(judge_split, tmp_path / "c", changed(JUDGE, key)) == reference


# --- evaluate ----------------------------------------------------------------------------------------


@pytest.fixture
def scored(tmp_path, monkeypatch):
    """A translated val split, a colour judge and an offline FID: what evaluate needs, in a second."""
    from pipeline.data.labels import colorize
    from pipeline.scoring import evaluate as evaluate_module
    from pipeline.scoring.fid import FidKidResult
    from tests.factories import make_checkpoint
    from tests.scoring.test_evaluate import ColourJudge, write_translations

    monkeypatch.setattr(evaluate_module, "load_judge", lambda path, device: ColourJudge())
    monkeypatch.setattr(
        evaluate_module, "fid_kid_between", lambda *a: FidKidResult(None, None, None, None, "offline")
    )
    split_dir = make_val_split(tmp_path / "split", n=3, size=16)
    translations = write_translations(tmp_path / "translations", split_dir, colorize, colorize)
    return split_dir, translations, make_checkpoint(tmp_path / "checkpoint.pt")


def evaluate_outputs(scored, out: Path, cfg: EvaluateConfig, recorder=NOTHING) -> dict[str, str]:
    split_dir, translations, checkpoint = scored
    out.mkdir(parents=True)
    run_evaluation(
        "cyclegan",
        translations,
        split_dir,
        "judge.pt",
        out / "metrics.json",
        cfg,
        checkpoint=checkpoint,
        confusion_npz=out / "confusion.npz",
        recorder=recorder,
    )
    return digests(out / "metrics.json", out / "confusion.npz")


def test_evaluation_bytes_do_not_depend_on_recording_or_neutral_keys(scored, tmp_path):
    cfg = EvaluateConfig(batch_size=2, device="cpu")
    reference = evaluate_outputs(scored, tmp_path / "a", cfg)
    assert evaluate_outputs(scored, tmp_path / "b", cfg, EvaluateRecorder("test-outputs")) == reference
    for key in sorted(EvaluateConfig.OUTPUT_NEUTRAL_KEYS):
        assert evaluate_outputs(scored, tmp_path / f"c-{key}", changed(cfg, key)) == reference, key


# --- split and download ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(SplitConfig.OUTPUT_NEUTRAL_KEYS))
def test_a_neutral_split_key_changes_no_byte(pix2pix_tree, tmp_path, key):
    cfg = SplitConfig(load_size=40, test_size=32, workers=1)
    split(pix2pix_tree, tmp_path / "a" / "split", cfg)
    split(pix2pix_tree, tmp_path / "b" / "split", changed(cfg, key))
    assert digests(tmp_path / "b" / "split") == digests(tmp_path / "a" / "split")


def test_neutral_data_keys_change_no_byte(pix2pix_archive, tmp_path):
    base = DataConfig(source=str(pix2pix_archive), expected_counts={"train": 12, "val": 4})
    download(base, tmp_path / "a" / "raw")
    reference = digests(tmp_path / "a" / "raw")
    # Validation keys must still describe the archive to pass: keep those, change the rest.
    validation = {"expected_counts": base.expected_counts, "image_size": (512, 256)}
    neutral = {
        key: validation.get(key) or other_value(getattr(base, key)) for key in DataConfig.OUTPUT_NEUTRAL_KEYS
    }
    download(dataclasses.replace(base, **neutral), tmp_path / "b" / "raw")
    assert digests(tmp_path / "b" / "raw") == reference


# --- the params deps in dvc.yaml are the keys the code says outputs depend on ------------------------

SECTIONS = {
    "split": ("split", SplitConfig),
    "judge": ("judge", JudgeConfig),
    "train": ("train", TrainConfig),
    "evaluate": ("evaluate", EvaluateConfig),
}


@pytest.mark.parametrize("stage", sorted(SECTIONS))
def test_dvc_params_deps_are_the_section_less_its_neutral_keys(stage):
    section, cls = SECTIONS[stage]
    definition = yaml.safe_load(Path("dvc.yaml").read_text())["stages"][stage]
    listed = {str(p) for p in definition.get("params") or [] if str(p).startswith(f"{section}.")}
    fields = {f.name for f in dataclasses.fields(cls)} - {"seed" if cls is TrainConfig else ""}
    expected = {f"{section}.{name}" for name in fields - cls.OUTPUT_NEUTRAL_KEYS}
    assert listed == expected
