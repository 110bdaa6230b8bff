import json
import math

import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.fileio import atomic_write_text, write_json


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.json"
    write_json(target, {"x": 1})
    write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_a_nan_is_refused_naming_its_key_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_text(target, "old")
    with pytest.raises(
        PipelineError, match=r"a\.json: fid/x \(nan\), rows\[1\]\.iou \(inf\) are not a finite"
    ):
        write_json(target, {"fid/x": math.nan, "ok": 1.0, "rows": [{"iou": 0.5}, {"iou": math.inf}]})
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
