import threading

import pytest
import yaml

from pipeline.core.errors import PipelineError
from pipeline.core.project import dvc_output_md5, dvc_root, repo_lock, stage_output_md5


def test_data_version_comes_from_dvc_lock(tmp_path):
    (tmp_path / ".dvc").mkdir()
    split = tmp_path / "data" / "split"
    split.mkdir(parents=True)
    assert dvc_output_md5(split) is None
    lock = {"schema": "2.0", "stages": {"split": {"outs": [{"path": "data/split", "md5": "abc.dir"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert dvc_output_md5(split) == "abc.dir"
    (tmp_path / "dvc.lock").write_text("stages: [unclosed")
    with pytest.raises(PipelineError, match="not valid YAML"):
        dvc_output_md5(split)


def test_the_repo_is_found_upwards_and_a_stage_output_by_name(tmp_path):
    assert dvc_root(tmp_path) is None
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert dvc_root(tmp_path / "a" / "b") == tmp_path
    assert stage_output_md5(tmp_path, "split") is None
    lock = {"schema": "2.0", "stages": {"split": {"outs": [{"path": "data/split", "md5": "abc.dir"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert stage_output_md5(tmp_path, "split") == "abc.dir"


def test_a_dvc_lock_being_rewritten_is_read_only_once_dvc_has_recorded_it(tmp_path):
    """A `dvc repro` recording a stage holds DVC's repo lock while dvc.lock is truncated and rewritten:
    a run starting beside it reads the file after the write, never half of it."""
    (tmp_path / ".dvc").mkdir()
    whole = {"schema": "2.0", "stages": {"split": {"outs": [{"path": "data/split", "md5": "abc.dir"}]}}}
    read: list = []
    with repo_lock(tmp_path):  # as DVC holds it while it writes
        (tmp_path / "dvc.lock").write_text(
            "schema: '2.0'\nstages:\n  split:\n    outs:\n    - path: data/split\n      md"
        )
        reader = threading.Thread(target=lambda: read.append(stage_output_md5(tmp_path, "split")))
        reader.start()
        reader.join(1.0)
        assert reader.is_alive() and not read  # waiting for DVC, not reading the half-written file
        (tmp_path / "dvc.lock").write_text(yaml.safe_dump(whole))
    reader.join(10.0)
    assert read == ["abc.dir"]
