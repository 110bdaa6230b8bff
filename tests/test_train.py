import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from pipeline.checkpoint import load_checkpoint
from pipeline.config import PROJECT_ROOT, from_mapping
from pipeline.data import UnpairedSampler, load_domain, load_training_domains
from pipeline.errors import PipelineError
from pipeline.labels import colorize
from pipeline.losses import LossSwitches
from pipeline.train import TrainConfig, config_differences, lr_factor, train_variant
from stages.train import main as train_main

TINY = TrainConfig(
    device="cpu",
    num_threads=1,
    load_size=28,
    crop_size=24,
    ngf=4,
    ndf=4,
    n_blocks=1,
    epochs_constant=2,
    epochs_decay=2,
    checkpoint_every=10,
    log_every=5,
    experiment="test-train",
)


def make_split(root: Path, n_photo: int = 6, n_label: int = 5, size: int = 28, seed: int = 0) -> Path:
    """A split folder with only the training domains (layout of data/split), random tiny images."""
    rng = np.random.default_rng(seed)
    rows = []
    domains = (
        ("train_photo", "photo", range(1, n_photo + 1)),
        ("train_label", "label", range(101, 101 + n_label)),
    )
    for subset, kind, ids in domains:
        (root / subset).mkdir(parents=True, exist_ok=True)
        for image_id in ids:
            if kind == "photo":
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            else:
                pixels = colorize(rng.integers(0, 19, (size, size)).astype(np.uint8))
            Image.fromarray(pixels).save(root / subset / f"{image_id}.png")
            rows.append((str(image_id), subset, kind, f"{subset}/{image_id}.png", size, size))
    columns = ["image_id", "subset", "kind", "path", "width", "height"]
    pd.DataFrame(rows, columns=columns).to_csv(root / "manifest.csv", index=False)
    return root


pytestmark = pytest.mark.usefixtures("private_tracking_store")


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    return make_split(tmp_path_factory.mktemp("data") / "split")


def write_params(path: Path, cfg: TrainConfig, variants: dict[str, LossSwitches]) -> Path:
    params = {
        "train": dataclasses.asdict(cfg),
        "variants": {name: dataclasses.asdict(s) for name, s in variants.items()},
    }
    path.write_text(yaml.safe_dump(params))
    return path


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(checkpoint)
    return {f"{net}.{k}": v for net, sd in state["nets"].items() for k, v in sd.items()}


# --- schedule ---------------------------------------------------------------------------------------


def test_lr_constant_then_linear_decay_like_the_reference():
    cfg = TrainConfig(epochs_constant=100, epochs_decay=100)
    assert [lr_factor(e, cfg) for e in (0, 50, 99)] == [1.0, 1.0, 1.0]
    assert lr_factor(100, cfg) == pytest.approx(1 - 1 / 101)
    assert lr_factor(199, cfg) == pytest.approx(1 / 101)  # last epoch; 0 would be the next one
    factors = [lr_factor(e, cfg) for e in range(100, 200)]
    assert all(a > b for a, b in itertools.pairwise(factors))


def test_config_validation_names_the_problem():
    with pytest.raises(PipelineError, match="crop_size 80 exceeds load_size 72"):
        from_mapping(TrainConfig, {"load_size": 72, "crop_size": 80}, "train")
    with pytest.raises(PipelineError, match="unknown key"):
        from_mapping(TrainConfig, {"learning_rate": 1}, "train")


# --- data -------------------------------------------------------------------------------------------


def test_domains_load_sorted_resized_and_limited(split_dir):
    labels, ids = load_domain(split_dir, "train_label", load_size=14, max_images=3)
    assert ids == ["101", "102", "103"] and labels.shape == (3, 3, 14, 14) and labels.dtype == torch.uint8
    # Nearest resizing keeps every label colour a table colour.
    palette = {tuple(c) for c in colorize(np.arange(19, dtype=np.uint8)[None])[0]}
    assert {tuple(p) for p in labels.permute(0, 2, 3, 1).reshape(-1, 3).tolist()} <= palette


def test_sampler_is_unpaired_seeded_and_covers_each_domain_per_epoch(split_dir):
    domains = load_training_domains(split_dir, load_size=28)

    def stream(seed, steps):
        sampler = UnpairedSampler(domains, 24, 1, torch.Generator().manual_seed(seed))
        return sampler, [sampler.next_batch() for _ in range(steps)]

    sampler, batches = stream(0, 6)
    assert sampler.steps_per_epoch == 6  # max(6 photos, 5 label maps)
    assert sorted(sampler.perm_A.tolist()) == list(range(6))
    assert set(sampler.perm_B.tolist()) == set(range(5))  # the smaller domain wraps around
    real_A, real_B = batches[0]
    assert real_A.shape == real_B.shape == (1, 3, 24, 24) and real_A.min() >= -1 and real_A.max() <= 1
    _, again = stream(0, 6)
    _, other = stream(1, 6)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again, strict=True)
    )
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, other, strict=True))


def test_sampler_state_resumes_mid_epoch(split_dir):
    domains = load_training_domains(split_dir, load_size=28)
    first = UnpairedSampler(domains, 24, 2, torch.Generator().manual_seed(3))
    for _ in range(2):
        first.next_batch()
    second = UnpairedSampler(domains, 24, 2, torch.Generator().manual_seed(99))
    second.load_state_dict(first.state_dict())
    for _ in range(5):  # across the epoch boundary
        a, b = first.next_batch(), second.next_batch()
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --- training ---------------------------------------------------------------------------------------


def test_train_writes_checkpoint_and_plots_then_skips_when_finished(split_dir, tmp_path, capsys):
    cfg = dataclasses.replace(TINY, max_steps=8)
    plots = tmp_path / "plots" / "cyclegan.csv"
    result = train_variant(split_dir, tmp_path / "m", "cyclegan", LossSwitches(), cfg, metrics_path=plots)
    assert result.step == 8 and not result.resumed
    state = load_checkpoint(tmp_path / "m" / "checkpoint.pt")
    assert state["finished"] and state["step"] == 8 and state["variant"] == "cyclegan"
    assert state["config"]["switches"]["adversarial"] is True and state["config"]["train"]["ngf"] == 4
    assert set(state["nets"]) == {"G", "F", "D_X", "D_Y"}
    table = pd.read_csv(plots)
    assert list(table["epoch"]) == [0, 1] and list(table["step"]) == [6, 8]  # epoch 1 is partial
    assert {"loss_G", "loss_D_X", "loss_D_Y", "loss_cycle_forward", "loss_cycle_backward"} <= set(
        table.columns
    )
    plots.unlink()  # DVC deletes non-persistent outputs before rerunning a stage

    again = train_variant(split_dir, tmp_path / "m", "cyclegan", LossSwitches(), cfg, metrics_path=plots)
    assert again.skipped and again.mlflow_run_id == result.mlflow_run_id
    assert "already trained" in capsys.readouterr().err
    assert pd.read_csv(plots).equals(table)


def test_cycle_only_has_no_discriminators_anywhere(split_dir, tmp_path):
    switches = LossSwitches(adversarial=False)
    plots = tmp_path / "c.csv"
    cfg = dataclasses.replace(TINY, max_steps=3)
    train_variant(split_dir, tmp_path / "m", "cycle_only", switches, cfg, metrics_path=plots)
    state = load_checkpoint(tmp_path / "m" / "checkpoint.pt")
    assert set(state["nets"]) == {"G", "F"} and set(state["optimizers"]) == {"G"} and state["pools"] == {}
    assert not [c for c in pd.read_csv(plots).columns if "D_" in c or "adv" in c]


def test_changed_settings_start_over_and_say_why(split_dir, tmp_path, capsys):
    out = tmp_path / "m"
    train_variant(split_dir, out, "cyclegan", LossSwitches(), dataclasses.replace(TINY, max_steps=3))
    changed = dataclasses.replace(TINY, max_steps=2, lr=1e-4)
    result = train_variant(split_dir, out, "cyclegan", LossSwitches(), changed)
    err = capsys.readouterr().err
    assert "starting over" in err and "train.lr: checkpoint 0.0002, now 0.0001" in err
    assert not result.resumed and result.step == 2


def test_operational_keys_do_not_invalidate_a_checkpoint(split_dir, tmp_path):
    state = {
        "config": {"train": dataclasses.asdict(TINY), "switches": dataclasses.asdict(LossSwitches())},
        "variant": "cyclegan",
        "data": {"train_sha256": "abc"},
    }
    data = {"train_sha256": "abc"}
    same = dataclasses.replace(TINY, max_steps=99, log_every=1, checkpoint_every=3, device="auto")
    assert config_differences(state, "cyclegan", same, LossSwitches(), data) == []
    diffs = config_differences(
        state, "cyclegan", TINY, LossSwitches(cycle_backward=False), {"train_sha256": "x"}
    )
    assert [d.split(":")[0] for d in diffs] == ["data.train_sha256", "variant.cycle_backward"]


def test_nan_loss_stops_naming_step_and_term(split_dir, tmp_path, monkeypatch):
    import pipeline.train as train_module

    real = train_module.generator_losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        losses, fakes = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            losses["loss_cycle_forward"] = losses["loss_cycle_forward"] * float("nan")
        return losses, fakes

    monkeypatch.setattr(train_module, "generator_losses", poisoned)
    with pytest.raises(PipelineError, match=r"loss_cycle_forward is nan at step 3"):
        train_variant(
            split_dir, tmp_path / "m", "cyclegan", LossSwitches(), dataclasses.replace(TINY, max_steps=5)
        )


# --- resume: real processes, real signals -----------------------------------------------------------

CHILD = """
import os, signal, sys
import stages.train as stage
from pipeline import train

kill_at, signum = int(sys.argv[1]), int(sys.argv[2])

def on_step(step, losses):
    if step == kill_at:
        os.kill(os.getpid(), signum)

real = train.train_variant
stage.train_variant = lambda *a, **k: real(*a, on_step=on_step, **k)
sys.exit(stage.main(sys.argv[3:]))
"""


def run_child(kill_at: int, signum: int, stage_args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(kill_at), str(int(signum)), *stage_args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_resume_after_sigkill_is_bit_identical(split_dir, tmp_path):
    cfg = dataclasses.replace(TINY, max_steps=20)
    params = write_params(tmp_path / "params.yaml", cfg, {"cyclegan": LossSwitches()})
    common = ["--params", str(params), "--variant", "cyclegan", "--split", str(split_dir)]

    straight = tmp_path / "straight"
    assert train_main([*common, "--out", str(straight)]) == 0

    killed = tmp_path / "killed"
    # SIGKILL at step 13: steps 11-13 are lost, the rerun resumes from the step-10 checkpoint.
    child = run_child(13, signal.SIGKILL, [*common, "--out", str(killed)])
    assert child.returncode == -signal.SIGKILL, child.stderr
    state = load_checkpoint(killed / "checkpoint.pt")
    assert state["step"] == 10 and not state["finished"]
    assert not list(killed.glob(".*tmp"))  # no half-written temp file left behind

    assert train_main([*common, "--out", str(killed)]) == 0
    resumed, reference = weights(killed / "checkpoint.pt"), weights(straight / "checkpoint.pt")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert load_checkpoint(killed / "checkpoint.pt")["mlflow_run_id"] == state["mlflow_run_id"]


def test_sigterm_saves_a_checkpoint_and_exits_143(split_dir, tmp_path):
    cfg = dataclasses.replace(TINY, max_steps=20)
    params = write_params(tmp_path / "params.yaml", cfg, {"cyclegan": LossSwitches()})
    out = tmp_path / "m"
    args = ["--params", str(params), "--variant", "cyclegan", "--split", str(split_dir), "--out", str(out)]
    child = run_child(7, signal.SIGTERM, args)
    assert child.returncode == 128 + signal.SIGTERM, child.stderr
    assert "interrupted by SIGTERM at step 7" in child.stderr
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 7 and not state["finished"]


def test_stage_rejects_unknown_variant(split_dir, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", TINY, {"cyclegan": LossSwitches()})
    code = train_main(["--params", str(params), "--variant", "nope", "--split", str(split_dir), "--out", "x"])
    assert code == 1 and "variant 'nope' is not in" in capsys.readouterr().err


def test_checkpoint_records_the_resolved_config(split_dir, tmp_path):
    gan_only = LossSwitches(cycle_forward=False, cycle_backward=False)
    cfg = dataclasses.replace(TINY, max_steps=1)
    train_variant(split_dir, tmp_path / "m", "gan_only", gan_only, cfg)
    state = load_checkpoint(tmp_path / "m" / "checkpoint.pt")
    assert TrainConfig(**state["config"]["train"]) == cfg
    assert LossSwitches(**state["config"]["switches"]) == gan_only
    assert json.dumps(state["data"])  # plain strings / None


def test_bf16_autocast_step_runs_with_pools_and_mixed_dtypes(split_dir, monkeypatch):
    # CUDA is not needed to exercise the autocast code path: the same ops run under CPU bf16 autocast.
    from pipeline.train import Trainer, build_trainer

    monkeypatch.setattr(Trainer, "autocast", lambda self: torch.autocast("cpu", dtype=torch.bfloat16))
    trainer = build_trainer(
        LossSwitches(identity=0.5), dataclasses.replace(TINY, pool_size=2), torch.device("cpu")
    )
    sampler = UnpairedSampler(load_training_domains(split_dir, 28), 24, 2, torch.Generator().manual_seed(0))
    for _ in range(3):
        losses = trainer.step(*sampler.next_batch())
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    assert trainer.pools["X"].images.dtype == torch.bfloat16 and trainer.pools["X"].count == 2
    assert all(p.dtype == torch.float32 for p in trainer.nets.G.parameters())
