import pytest
import yaml

from pipeline.core.errors import PipelineError
from pipeline.core.project import dvc_output_md5, dvc_root, stage_output_md5


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
