import dataclasses
import itertools
import json
import signal

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.checkpoints import differences
from pipeline.core.config import from_mapping
from pipeline.core.errors import PipelineError
from pipeline.cyclegan.checkpoint import load_checkpoint
from pipeline.cyclegan.config import TrainConfig, lr_factor
from pipeline.cyclegan.loop import run_fingerprint
from pipeline.cyclegan.losses import LossSwitches
from pipeline.data.domains import UnpairedSampler, load_domain, load_training_domains
from pipeline.data.labels import colorize
from stages.train import main as train_main
from tests.factories import TINY_TRAIN as TINY
from tests.factories import (
    make_split,
    poison_loss,
    run_child,
    run_file_size_limited,
    run_killed_in_save,
    run_script,
    train_run,
    weights,
    write_params,
)

pytestmark = pytest.mark.usefixtures("private_tracking_store")


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    return make_split(tmp_path_factory.mktemp("data") / "split")


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
    result = train_run(split_dir, tmp_path / "m", "cyclegan", LossSwitches(), cfg, curves=plots)
    assert result.step == 8 and not result.resumed
    state = load_checkpoint(tmp_path / "m" / "checkpoint.pt")
    assert state["finished"] and state["step"] == 8 and state["variant"] == "cyclegan"
    assert state["config"]["switches"]["adversarial"] is True and state["config"]["train"]["ngf"] == 4
    assert set(state["nets"]) == {"G", "F", "D_X", "D_Y"}
    table = pd.read_csv(plots)
    # A row every log_every (5) steps and one at the end; 6 steps per epoch.
    assert list(table["step"]) == [5, 8] and list(table["epoch"]) == [0, 1]
    assert {"loss_G", "loss_D_X", "loss_D_Y", "loss_cycle_forward", "loss_cycle_backward"} <= set(
        table.columns
    )
    plots.unlink()  # DVC deletes non-persistent outputs before rerunning a stage

    again = train_run(split_dir, tmp_path / "m", "cyclegan", LossSwitches(), cfg, curves=plots)
    assert again.skipped
    assert "already trained" in capsys.readouterr().err
    assert pd.read_csv(plots).equals(table)


def test_cycle_only_has_no_discriminators_anywhere(split_dir, tmp_path):
    switches = LossSwitches(adversarial=False)
    plots = tmp_path / "c.csv"
    cfg = dataclasses.replace(TINY, max_steps=3)
    train_run(split_dir, tmp_path / "m", "cycle_only", switches, cfg, curves=plots)
    state = load_checkpoint(tmp_path / "m" / "checkpoint.pt")
    assert set(state["nets"]) == {"G", "F"} and set(state["optimizers"]) == {"G"} and state["pools"] == {}
    assert not [c for c in pd.read_csv(plots).columns if "D_" in c or "adv" in c]


def test_changed_settings_start_over_and_say_why(split_dir, tmp_path, capsys):
    out = tmp_path / "m"
    train_run(split_dir, out, "cyclegan", LossSwitches(), dataclasses.replace(TINY, max_steps=3))
    changed = dataclasses.replace(TINY, max_steps=2, lr=1e-4)
    result = train_run(split_dir, out, "cyclegan", LossSwitches(), changed)
    err = capsys.readouterr().err
    assert "starting over" in err and "train.lr: checkpoint 0.0002, now 0.0001" in err
    assert not result.resumed and result.step == 2


def test_keys_of_how_a_run_is_carried_out_do_not_invalidate_a_checkpoint():
    data = {"train_sha256": "abc", "protocol": "disjoint"}
    stored = run_fingerprint("cyclegan", TINY, LossSwitches(), data)
    same = dataclasses.replace(TINY, max_steps=99, log_every=1, checkpoint_every=3, device="auto", fast=True)
    assert differences(stored, run_fingerprint("cyclegan", same, LossSwitches(), data)) == []
    diffs = differences(
        stored, run_fingerprint("cyclegan", TINY, LossSwitches(cycle_backward=False), {"train_sha256": "x"})
    )
    assert [d.split(":")[0] for d in diffs] == ["data.train_sha256", "switches.cycle_backward"]


def test_nan_loss_stops_naming_step_and_term(split_dir, tmp_path, monkeypatch):
    poison_loss(monkeypatch, "loss_cycle_forward", 3, float("nan"))
    with pytest.raises(PipelineError, match=r"loss_cycle_forward is nan at step 3"):
        train_run(
            split_dir, tmp_path / "m", "cyclegan", LossSwitches(), dataclasses.replace(TINY, max_steps=5)
        )


# --- resume: real processes, real signals -----------------------------------------------------------


def assert_same_checkpoint(a: object, b: object, where: str = "checkpoint") -> None:
    """Every entry equal, tensors bit for bit (the recorder's state aside: each run has its own)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            if key != "recorder":
                assert_same_checkpoint(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_checkpoint(x, y, f"{where}[{index}]")
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


STAGE = "import sys, stages.train as stage; sys.exit(stage.main(sys.argv[1:]))"


@pytest.mark.slow
def test_two_identical_runs_give_identical_checkpoints_rng_states_included(split_dir, tmp_path):
    cfg = dataclasses.replace(TINY, max_steps=12)
    params = write_params(tmp_path / "params.yaml", cfg, {"cyclegan": LossSwitches()})
    common = ["--params", str(params), "--variant", "cyclegan", "--split", str(split_dir)]
    for name in ("a", "b"):  # separate processes: each starts torch afresh
        child = run_script(STAGE, [*common, "--out", str(tmp_path / name)])
        assert child.returncode == 0, child.stderr
    first, second = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("a", "b"))
    assert_same_checkpoint(first, second)


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(split_dir, tmp_path):
    cfg = dataclasses.replace(TINY, max_steps=20)
    params = write_params(tmp_path / "params.yaml", cfg, {"cyclegan": LossSwitches()})
    common = ["--params", str(params), "--variant", "cyclegan", "--seed", "0", "--split", str(split_dir)]

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
    # Bit for bit as a file too: its DVC md5 does not tell whether the run was interrupted.
    assert (killed / "checkpoint.pt").read_bytes() == (straight / "checkpoint.pt").read_bytes()
    # ...and so is everything else: optimisers, pools, sampler, the saved RNG states, the history.
    assert_same_checkpoint(
        load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(straight / "checkpoint.pt")
    )
    # The unfinished checkpoint held the run's MLflow run (its recorder's state), which the resumed stage
    # continued and ended; the finished checkpoint, a DVC output, holds no trace of the record.
    run_id = state["recorder"]["mlflow_run_id"]
    assert "recorder" not in load_checkpoint(killed / "checkpoint.pt")
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_a_resume_folder_outside_the_output_survives_dvc_removing_it(split_dir, tmp_path):
    # The output is not `persist` (DVC's run cache can restore it), so DVC deletes it before rerunning
    # the stage; the unfinished checkpoints live in the resume folder, which DVC leaves alone.
    cfg = dataclasses.replace(TINY, max_steps=20)
    params = write_params(tmp_path / "params.yaml", cfg, {"cyclegan": LossSwitches()})
    common = ["--params", str(params), "--variant", "cyclegan", "--seed", "0", "--split", str(split_dir)]
    straight = tmp_path / "straight"
    assert train_main([*common, "--out", str(straight)]) == 0

    out, resume = tmp_path / "models" / "cyclegan-0", tmp_path / "models" / ".resume" / "cyclegan-0"
    args = [*common, "--out", str(out), "--resume-dir", str(resume)]
    child = run_child(13, signal.SIGKILL, args)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert load_checkpoint(resume / "checkpoint.pt")["step"] == 10 and not (out / "checkpoint.pt").exists()

    assert train_main(args) == 0
    assert_same_checkpoint(
        load_checkpoint(out / "checkpoint.pt"), load_checkpoint(straight / "checkpoint.pt")
    )
    assert not (resume / "checkpoint.pt").exists()
    assert train_main(args) == 0  # finished: nothing to do, whichever folder DVC left


@pytest.mark.slow
def test_a_kill_during_torch_save_leaves_nothing_inside_the_output_folder(split_dir, tmp_path):
    cfg = dataclasses.replace(TINY, max_steps=20)
    params = write_params(tmp_path / "params.yaml", cfg, {"cyclegan": LossSwitches()})
    out = tmp_path / "models" / "cyclegan"
    args = ["--params", str(params), "--variant", "cyclegan", "--split", str(split_dir), "--out", str(out)]
    child = run_killed_in_save(2, args)  # the step-10 checkpoint is saved, the final one is not
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert [p.name for p in out.iterdir()] == ["checkpoint.pt"]  # what DVC would cache: no temp file
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 10
    assert len(list((tmp_path / "models").glob(".cyclegan.checkpoint.pt.*.tmp"))) == 1  # the half save

    assert train_main(args) == 0
    assert load_checkpoint(out / "checkpoint.pt")["finished"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["cyclegan"]  # swept
    assert [p.name for p in out.iterdir()] == ["checkpoint.pt"]


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(split_dir, tmp_path):
    params = write_params(
        tmp_path / "params.yaml", dataclasses.replace(TINY, max_steps=10), {"cyclegan": LossSwitches()}
    )
    out = tmp_path / "models" / "cyclegan"
    args = ["--params", str(params), "--variant", "cyclegan", "--split", str(split_dir), "--out", str(out)]
    assert train_main(args) == 0
    previous = (out / "checkpoint.pt").read_bytes()
    # max_steps does not invalidate the checkpoint: the run resumes at step 10, its save at 20 fails.
    write_params(params, dataclasses.replace(TINY, max_steps=20), {"cyclegan": LossSwitches()})
    child = run_file_size_limited(len(previous) // 2, "stages.train", args)
    assert child.returncode == 1, child.stderr
    assert "Traceback" not in child.stderr
    last = child.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: file too large")
        and f"writing {out / 'checkpoint.pt'}: free some space" in last
    )
    assert (out / "checkpoint.pt").read_bytes() == previous  # the previous checkpoint, intact
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "models").rglob("*")) == [
        "models/cyclegan",
        "models/cyclegan/checkpoint.pt",
    ]  # and no temp file anywhere


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_143(split_dir, tmp_path):
    cfg = dataclasses.replace(TINY, max_steps=20)
    params = write_params(tmp_path / "params.yaml", cfg, {"cyclegan": LossSwitches()})
    out = tmp_path / "m"
    args = [
        "--params",
        str(params),
        "--variant",
        "cyclegan",
        "--seed",
        "0",
        "--split",
        str(split_dir),
        "--out",
        str(out),
    ]
    child = run_child(7, signal.SIGTERM, args)
    assert child.returncode == 128 + signal.SIGTERM, child.stderr
    assert "stopped by SIGTERM at step 7" in child.stderr
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 7 and not state["finished"]


def test_stage_rejects_unknown_variant(split_dir, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", TINY, {"cyclegan": LossSwitches()})
    code = train_main(
        ["--params", str(params), "--variant", "nope", "--seed", "0", "--split", str(split_dir), "--out", "x"]
    )
    assert code == 1 and "variant 'nope' is not in" in capsys.readouterr().err


def test_params_are_refused_before_any_data_or_tracking(tmp_path, capsys, monkeypatch):
    # Neither the split nor the store exists: the first complaint must be the params.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    params = tmp_path / "params.yaml"
    args = ["--params", str(params), "--split", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")]
    write_params(params, dataclasses.replace(TINY, beta1=0.5), {"cyclegan": LossSwitches()})
    params.write_text(params.read_text().replace("beta1: 0.5", "beta1: 1.0"))
    assert train_main([*args, "--variant", "cyclegan"]) == 1
    assert capsys.readouterr().err == "error: train.beta1 must be in [0, 1), got 1.0\n"
    write_params(params, TINY, {"cyclegan": LossSwitches(), "gan;rm -rf x": LossSwitches()})
    assert train_main([*args, "--variant", "cyclegan"]) == 1
    assert "variant name 'gan;rm -rf x'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_checkpoint_records_the_resolved_config(split_dir, tmp_path):
    gan_only = LossSwitches(cycle_forward=False, cycle_backward=False)
    cfg = dataclasses.replace(TINY, max_steps=1)
    train_run(split_dir, tmp_path / "m", "gan_only", gan_only, cfg)
    state = load_checkpoint(tmp_path / "m" / "checkpoint.pt")
    assert state["config"]["train"] == cfg.stored()  # all but how the run is recorded and checkpointed
    assert "experiment" not in state["config"]["train"] and "checkpoint_every" not in state["config"]["train"]
    assert LossSwitches(**state["config"]["switches"]) == gan_only
    assert json.dumps(state["data"])  # plain strings / None


def test_bf16_autocast_step_runs_with_pools_and_mixed_dtypes(split_dir, monkeypatch):
    # CUDA is not needed to exercise the autocast code path: the same ops run under CPU bf16 autocast.
    from pipeline.cyclegan.step import Trainer, build_trainer

    monkeypatch.setattr(Trainer, "autocast", lambda self: torch.autocast("cpu", dtype=torch.bfloat16))
    trainer = build_trainer(
        LossSwitches(lambda_identity=0.5), dataclasses.replace(TINY, pool_size=2), torch.device("cpu")
    )
    sampler = UnpairedSampler(load_training_domains(split_dir, 28), 24, 2, torch.Generator().manual_seed(0))
    for _ in range(3):
        losses = trainer.step(*sampler.next_batch())
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    assert trainer.pools["X"].images.dtype == torch.bfloat16 and trainer.pools["X"].count == 2
    assert all(p.dtype == torch.float32 for p in trainer.nets.G.parameters())
