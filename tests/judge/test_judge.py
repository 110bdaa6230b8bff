"""The FCN judge: segmenting, training, resuming, and learning something real on a tiny split."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.core.signals import Interrupted
from pipeline.data.labels import TRAIN_ID_COLOURS, VOID
from pipeline.judge import model as judge_model
from pipeline.judge import train as judge_train
from pipeline.judge.model import FCN8s, FCNConfig
from pipeline.judge.segment import Judge, load_judge
from pipeline.judge.train import JudgeConfig, train_judge
from stages import judge as stage

SIZE = 32
# Two classes that a photo's colour gives away: road (0) and sky (10), split at a random column.
ROAD, SKY = 0, 10


def make_split(root: Path, n_train: int = 6, n_val: int = 3, seed: int = 0) -> Path:
    """A split folder with evaluator and val photo/mask pairs and their manifest rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for subset, count, folder in (("evaluator", n_train, "evaluator"), ("val", n_val, "val")):
        for index in range(count):
            image_id = f"{index + 1}"
            column = rng.integers(8, SIZE - 8)
            mask = np.full((SIZE, SIZE), ROAD, dtype=np.uint8)
            mask[:, column:] = SKY
            mask[:2] = VOID
            photo = TRAIN_ID_COLOURS[mask].astype(np.int16) + rng.integers(-20, 20, size=(SIZE, SIZE, 3))
            for kind, array in (("photo", np.clip(photo, 0, 255).astype(np.uint8)), ("mask", mask)):
                path = Path(folder) / kind / f"{image_id}.png"
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / path)
                rows.append((image_id, subset, kind, str(path), SIZE, SIZE))
    columns = ["image_id", "subset", "kind", "path", "width", "height"]
    pd.DataFrame(rows, columns=columns).to_csv(root / "manifest.csv", index=False)
    return root


def tiny(**overrides) -> JudgeConfig:
    base = dict(device="cpu", image_size=SIZE, epochs=2, batch_size=2, width=4, checkpoint_every=2, lr=0.01)
    return JudgeConfig(**{**base, **overrides})


@pytest.fixture
def split_dir(tmp_path) -> Path:
    return make_split(tmp_path / "split")


def net_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["net"]


def test_segment_takes_uint8_nhwc_and_float_nchw():
    net = FCN8s(FCNConfig(width=4))
    judge_model.init_weights(net, torch.Generator().manual_seed(0))
    judge = Judge(net.eval(), image_size=SIZE, device=torch.device("cpu"), batch_size=2)
    uint8 = torch.randint(0, 256, (5, SIZE, SIZE, 3), dtype=torch.uint8)
    ids = judge.segment(uint8)
    assert ids.shape == (5, SIZE, SIZE) and ids.dtype == torch.int64
    assert ids.min() >= 0 and ids.max() < 19
    as_float = uint8.permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(judge.segment(as_float), ids)
    # Another size is segmented at the judge's scale and returned at the input's size.
    assert judge.segment(torch.zeros((1, 3, 20, 24))).shape == (1, 20, 24)
    with pytest.raises(ValueError, match="NHWC"):
        judge.segment(torch.zeros((1, 3, SIZE, SIZE), dtype=torch.int32))


def test_train_writes_checkpoint_and_scores(split_dir, tmp_path):
    scores = train_judge(split_dir, tmp_path / "fcn", tiny())
    assert scores["n_images"] == 3 and scores["steps"] == 6  # 2 epochs x ceil(6 / 2) steps
    for key in ("fcn/real/pixel_acc", "fcn/real/class_acc", "fcn/real/class_iou"):
        assert 0.0 <= scores[key] <= 1.0
    assert scores["per_class_iou"]["road"] is not None and scores["per_class_iou"]["car"] is None
    judge = load_judge(tmp_path / "fcn" / "checkpoint.pt", "cpu")
    assert judge.segment(torch.zeros((2, SIZE, SIZE, 3), dtype=torch.uint8)).shape == (2, SIZE, SIZE)


@pytest.mark.slow
def test_judge_learns_a_colour_coded_split(split_dir, tmp_path):
    # Road and sky differ by colour: a working judge gets nearly every val pixel right; a broken
    # loss, label handling or flip (photo flipped, mask not) does not.
    scores = train_judge(split_dir, tmp_path / "fcn", tiny(epochs=30, lr=0.02))
    assert scores["fcn/real/pixel_acc"] > 0.9
    assert scores["fcn/real/class_iou"] > 0.8


def test_sigterm_saves_and_rerun_resumes_to_the_same_weights(split_dir, tmp_path, monkeypatch):
    uninterrupted = tmp_path / "a"
    train_judge(split_dir, uninterrupted, tiny())

    real_lr = judge_train.learning_rate

    def lr_then_sigterm(step, total, cfg):
        if step == 2:  # not a checkpoint_every boundary: the checkpoint comes from the signal
            os.kill(os.getpid(), signal.SIGTERM)
        return real_lr(step, total, cfg)

    monkeypatch.setattr(judge_train, "learning_rate", lr_then_sigterm)
    interrupted = tmp_path / "b"
    with pytest.raises(Interrupted, match="SIGTERM at step 3/6"):
        train_judge(split_dir, interrupted, tiny(checkpoint_every=100))
    saved = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 3 and not saved["finished"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored

    monkeypatch.setattr(judge_train, "learning_rate", real_lr)
    train_judge(split_dir, interrupted, tiny(checkpoint_every=100))
    expected, resumed = net_state(uninterrupted / "checkpoint.pt"), net_state(interrupted / "checkpoint.pt")
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)


def test_a_resume_folder_outside_the_output_survives_dvc_removing_it(split_dir, tmp_path, monkeypatch):
    # DVC deletes an output that is not `persist` before rerunning its stage; the resume folder stays.
    uninterrupted = tmp_path / "a"
    train_judge(split_dir, uninterrupted, tiny())
    real_lr = judge_train.learning_rate

    def lr_then_sigterm(step, total, cfg):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_lr(step, total, cfg)

    monkeypatch.setattr(judge_train, "learning_rate", lr_then_sigterm)
    out, resume = tmp_path / "models" / "fcn", tmp_path / "models" / ".resume" / "fcn"
    with pytest.raises(Interrupted):
        train_judge(split_dir, out, tiny(checkpoint_every=100), resume)
    assert not out.exists() and torch.load(resume / "checkpoint.pt", weights_only=True)["step"] == 3

    monkeypatch.setattr(judge_train, "learning_rate", real_lr)
    train_judge(split_dir, out, tiny(checkpoint_every=100), resume)
    expected, resumed = net_state(uninterrupted / "checkpoint.pt"), net_state(out / "checkpoint.pt")
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    assert not (resume / "checkpoint.pt").exists()  # done with: only the output holds the judge


def test_finished_run_is_not_retrained(split_dir, tmp_path, monkeypatch):
    first = train_judge(split_dir, tmp_path / "fcn", tiny())

    def fail(*args, **kwargs):
        raise AssertionError("a finished judge was trained again")

    monkeypatch.setattr(judge_train, "_train", fail)
    # device and checkpoint_every do not change what is learned: still the same judge.
    again = train_judge(split_dir, tmp_path / "fcn", tiny(checkpoint_every=5))
    assert again == first


def test_config_change_restarts_and_says_so(split_dir, tmp_path, caplog):
    train_judge(split_dir, tmp_path / "fcn", tiny())
    with caplog.at_level(logging.WARNING, logger="pipeline.judge.train"):
        scores = train_judge(split_dir, tmp_path / "fcn", tiny(lr=0.005, epochs=1))
    assert "starting over" in caplog.text and "made with other settings" in caplog.text
    assert "config.epochs: checkpoint 2, now 1" in caplog.text and "config.lr: checkpoint 0.01" in caplog.text
    assert scores["steps"] == 3


def test_changed_data_restarts(split_dir, tmp_path, caplog):
    train_judge(split_dir, tmp_path / "fcn", tiny())
    other = make_split(tmp_path / "other", seed=1)
    with caplog.at_level(logging.WARNING, logger="pipeline.judge.train"):
        train_judge(other, tmp_path / "fcn", tiny())
    assert "starting over" in caplog.text and "data: checkpoint '" in caplog.text


def test_unfinished_or_missing_judge_cannot_be_loaded(tmp_path):
    with pytest.raises(PipelineError, match="dvc repro judge"):
        load_judge(tmp_path / "nope.pt")
    torch.save({"format": 1, "variant": "cyclegan"}, tmp_path / "cyclegan.pt")
    with pytest.raises(PipelineError, match="not a format-2 judge checkpoint"):
        load_judge(tmp_path / "cyclegan.pt")


def test_stage_writes_the_metrics_json(split_dir, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("judge: {device: cpu, image_size: 32, epochs: 1, batch_size: 3, width: 4}\n")
    metrics = tmp_path / "metrics" / "fcn.json"
    argv = ["--params", str(params), "--split", str(split_dir), "--out", str(tmp_path / "fcn")]
    assert stage.main([*argv, "--metrics", str(metrics)]) == 0
    written = json.loads(metrics.read_text())
    assert set(written) >= {"fcn/real/pixel_acc", "fcn/real/class_acc", "fcn/real/class_iou", "per_class_iou"}
    assert "pixel acc" in capsys.readouterr().out

    params.write_text("judge: {widht: 4}\n")
    assert stage.main([*argv, "--metrics", str(metrics)]) == 1
    assert "judge.widht" in capsys.readouterr().err


# --- a diverged judge never scores ---------------------------------------------------------------------


def test_a_diverging_judge_stops_naming_step_and_term_and_leaves_no_scores(split_dir, tmp_path, capsys):
    # lr 1e12: the loss is inf or NaN within a few steps, for real.
    params = tmp_path / "params.yaml"
    params.write_text(
        "judge: {device: cpu, image_size: 32, epochs: 4, batch_size: 2, width: 4, lr: 1.0e+12,"
        " checkpoint_every: 1, warmup_fraction: 0.0}\n"
    )
    metrics = tmp_path / "metrics" / "fcn.json"
    argv = ["--params", str(params), "--split", str(split_dir), "--out", str(tmp_path / "fcn")]
    assert stage.main([*argv, "--metrics", str(metrics)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: judge: loss_ce \(cross-entropy\) is (nan|inf) at step \d+ of 12: .*judge\.lr.*", err
    )
    assert not metrics.exists()
    saved = torch.load(tmp_path / "fcn" / "checkpoint.pt", weights_only=True)
    assert not saved["finished"] and all(
        v.isfinite().all() for v in saved["net"].values() if v.is_floating_point()
    )


def test_a_judge_with_nan_weights_is_never_loaded_or_reused(split_dir, tmp_path):
    train_judge(split_dir, tmp_path / "fcn", tiny())
    path = tmp_path / "fcn" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    name = next(k for k, v in state["net"].items() if v.is_floating_point())
    state["net"][name] = torch.full_like(state["net"][name], float("nan"))
    torch.save(state, path)
    with pytest.raises(PipelineError, match=rf"has NaN/inf weights \({re.escape(name)}\): it diverged"):
        load_judge(path)
    with pytest.raises(PipelineError, match="has NaN/inf weights"):
        train_judge(split_dir, tmp_path / "fcn", tiny())  # finished with this config: scoring only
