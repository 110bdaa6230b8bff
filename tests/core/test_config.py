from dataclasses import dataclass, field
from typing import Literal

import pytest

from pipeline.core.config import from_mapping, load_section, to_flat_dict
from pipeline.core.errors import PipelineError


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
