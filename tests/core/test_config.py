import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Literal

import pytest

from pipeline.core.config import from_mapping, load_section, to_flat_dict
from pipeline.core.errors import PipelineError
from pipeline.core.study import read_variants
from pipeline.cyclegan.config import TrainConfig
from pipeline.cyclegan.losses import LossSwitches
from pipeline.cyclegan.translate import TranslateConfig
from pipeline.data.download import DataConfig
from pipeline.data.split import SplitConfig
from pipeline.judge.train import JudgeConfig
from pipeline.report.build import ReportConfig
from pipeline.scoring.evaluate import EvaluateConfig
from pipeline.scoring.fid import FidConfig


@dataclass
class Inner:
    weight: float = 1.0


@dataclass
class Section:
    size: int = 4
    lr: float = 0.1
    mode: Literal["a", "b"] = "a"
    name: str | None = None
    inner: Inner = field(default_factory=Inner)
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.size <= 0:
            raise ValueError(f"size must be positive, got {self.size}")


def test_values_are_checked_and_coerced():
    cfg = from_mapping(Section, {"size": 8, "lr": "2e-4", "inner": {"weight": 3}, "counts": {"x": 1}}, "s")
    assert cfg.lr == 2e-4 and cfg.inner.weight == 3.0 and cfg.counts == {"x": 1}


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"sise": 3}, r"unknown key\(s\) s\.sise"),
        ({"size": "big"}, r"s\.size must be int"),
        ({"size": True}, r"s\.size must be int"),
        ({"mode": "c"}, r"s\.mode must be one of 'a', 'b'"),
        ({"inner": {"wieght": 1}}, r"s\.inner\.wieght"),
        ({"size": -1}, r"size must be positive"),
        ({"counts": {"x": "one"}}, r"s\.counts\.x must be int"),
    ],
)
def test_bad_values_name_the_key(mapping, message):
    with pytest.raises(PipelineError, match=message):
        from_mapping(Section, mapping, "s")


def test_load_section_and_flatten(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("s:\n  size: 2\n  inner: {weight: 0.5}\n")
    cfg = load_section(params, "s", Section)
    assert to_flat_dict(cfg, "s.")["s.inner.weight"] == 0.5
    with pytest.raises(PipelineError, match="no `t:` section"):
        load_section(params, "t", Section)
    with pytest.raises(PipelineError, match="not found"):
        load_section(tmp_path / "missing.yaml", "s", Section)


# --- every numeric key of every params section is range-checked -------------------------------------

SECTIONS = {
    "data": (DataConfig, {"source": "cityscapes.tar.gz"}),
    "split": (SplitConfig, {}),
    "train": (TrainConfig, {}),
    "variants.cyclegan": (LossSwitches, {}),
    "judge": (JudgeConfig, {}),
    "translate": (TranslateConfig, {}),
    "evaluate": (EvaluateConfig, {}),
    "evaluate.fid": (FidConfig, {}),
    "report": (ReportConfig, {}),
}


def _numeric_keys():
    for section, (cls, required) in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for key in (f.name for f in dataclasses.fields(cls)):
            kinds = set(typing.get_args(hints[key])) or {hints[key]}
            if kinds - {type(None)} <= {int, float} and kinds & {int, float}:
                yield pytest.param(section, cls, required, key, float in kinds, id=f"{section}.{key}")


@pytest.mark.parametrize(("section", "cls", "required", "key", "is_float"), list(_numeric_keys()))
def test_every_numeric_key_refuses_negative_nan_and_inf(section, cls, required, key, is_float):
    bad = [-1, "-1e-4"] + ([".nan", float("nan"), float("inf"), "-inf"] if is_float else [])
    for value in bad:
        with pytest.raises(PipelineError, match=rf"^{re.escape(section)}\.{key} must be"):
            from_mapping(cls, {**required, key: value}, section)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "beta1", 1.0, r"train\.beta1 must be in \[0, 1\), got 1\.0"),
        ("train", "beta2", -0.1, r"train\.beta2 must be in \[0, 1\)"),
        ("train", "lr", 0, r"train\.lr must be > 0, got 0\.0"),
        ("train", "ngf", 0, r"train\.ngf must be >= 1, got 0"),
        ("train", "n_blocks", 0, r"train\.n_blocks must be >= 1"),
        ("train", "seed", -3, r"train\.seed must be >= 0"),
        ("judge", "weight_decay", -0.0001, r"judge\.weight_decay must be >= 0"),
        ("judge", "warmup_fraction", 1.0, r"judge\.warmup_fraction must be in \[0, 1\)"),
        ("judge", "lr", "nan", r"judge\.lr must be a finite number, got nan"),
    ],
)
def test_the_bounds_of_the_issue(section, key, value, message):
    cls, required = SECTIONS[section]
    with pytest.raises(PipelineError, match=message):
        from_mapping(cls, {**required, key: value}, section)


def test_yaml_nan_and_inf_are_refused_as_read_from_a_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  lr: .nan\n")
    with pytest.raises(PipelineError, match=r"train\.lr must be a finite number, got nan"):
        load_section(params, "train", TrainConfig)
    params.write_text("train:\n  lambda_cycle: .inf\n")
    with pytest.raises(PipelineError, match=r"train\.lambda_cycle must be a finite number, got inf"):
        load_section(params, "train", TrainConfig)


@pytest.mark.parametrize("name", ["has space", "semi;colon", "dollar$", "../up", "dash-ed", "dot.ted", ""])
def test_variant_names_must_be_plain_words(name):
    with pytest.raises(PipelineError, match=r"must match \^\[A-Za-z0-9_\]\+\$"):
        read_variants({"variants": {"cyclegan": {}, name: {}}})
    assert list(read_variants({"variants": {"cycle_only": {}, "GAN2": {}}})) == ["cycle_only", "GAN2"]
