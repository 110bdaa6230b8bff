import subprocess
import sys

import pytest
import yaml

from pipeline.core.config import PROJECT_ROOT, from_mapping, read_params
from pipeline.core.errors import PipelineError
from pipeline.core.profiles import load_profile, matching_profile, set_params_args
from pipeline.cyclegan.config import TrainConfig, target_steps
from pipeline.data.split import SplitConfig


def test_paper_profile_sets_the_paper_settings():
    profile = load_profile("paper")
    params = read_params(PROJECT_ROOT / "params.yaml")
    for key, value in profile.items():
        section, name = key.split(".", 1)
        params[section][name] = value
    cfg = from_mapping(TrainConfig, params["train"], "train")
    assert (cfg.load_size, cfg.crop_size, cfg.ngf, cfg.ndf, cfg.n_blocks) == (143, 128, 64, 64, 6)
    assert (cfg.epochs_constant, cfg.epochs_decay, cfg.batch_size, cfg.max_images) == (100, 100, 1, None)
    assert (cfg.lr, cfg.beta1, cfg.beta2, cfg.lambda_cycle, cfg.pool_size) == (2e-4, 0.5, 0.999, 10.0, 50)
    # The paper's protocol: all 2975 photos and all 2975 label maps, so 200 epochs are its 595k steps.
    split = from_mapping(SplitConfig, params["split"], "split")
    assert split.protocol == "paper"
    assert target_steps(cfg, steps_per_epoch=max(2975, 2975) // cfg.batch_size) == 595_000
    assert (
        matching_profile(params) == "paper"
        and matching_profile(read_params(PROJECT_ROOT / "params.yaml")) == "default"
    )


def test_profile_becomes_dvc_set_param_arguments(tmp_path):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"train.max_images": None, "train.ngf": 8, "x.s": "8"}))
    assert set_params_args("p", tmp_path) == [
        "-S",
        "train.max_images=null",
        "-S",
        "train.ngf=8",
        "-S",
        "x.s='8'",
    ]


def test_unknown_profile_lists_the_known_ones(tmp_path):
    (tmp_path / "a.yaml").write_text("train.ngf: 8\n")
    with pytest.raises(PipelineError, match="no profile 'b'; available: a"):
        load_profile("b", tmp_path)


def test_command_line_prints_shell_ready_arguments():
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.core.profiles", "paper"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "-S train.crop_size=128" in out and "-S train.max_images=null" in out
