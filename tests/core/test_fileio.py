import errno
import json
import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch

from pipeline.core.errors import PipelineError
from pipeline.core.fileio import atomic_write_text, publish_entries, save_torch, staging_dir, write_json
from tests.factories import run_script


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


# --- no leftovers --------------------------------------------------------------------------------------


def test_a_temp_file_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    stale = tmp_path / ".a.json.k1ll3d_x.tmp"
    others = [
        tmp_path / ".a.json.bak",
        tmp_path / ".b.json.k1ll3d_x.tmp",
        tmp_path / ".a.json.k1ll3d_x.tmp.keep",
    ]
    for path in [stale, *others]:
        path.write_text("left behind")
    write_json(tmp_path / "a.json", {"x": 1})
    assert not stale.exists() and all(path.exists() for path in others)


def test_save_torch_keeps_its_temp_file_out_of_the_output_folder(tmp_path, monkeypatch):
    out = tmp_path / "models" / "cyclegan"
    during = []
    real_save = torch.save

    def save(obj, handle, *args, **kwargs):
        during.extend(sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")))
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    save_torch(out / "checkpoint.pt", {"w": torch.ones(2)})
    # While it is written, the temp file sits beside the output folder, and nothing inside it.
    assert during[0] == "models" and during[2] == "models/cyclegan" and len(during) == 3
    assert re.fullmatch(r"models/\.cyclegan\.checkpoint\.pt\.\w{8}\.tmp", during[1])
    assert [p.name for p in out.iterdir()] == ["checkpoint.pt"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["cyclegan"]


def test_staging_folders_of_a_killed_run_are_removed_by_the_next_one(tmp_path):
    out = tmp_path / "reports"
    stale = [tmp_path / ".reports-staging-abc123", tmp_path / ".reports-staging-abc123-old-x1"]
    for folder in stale:
        (folder / "sub").mkdir(parents=True)
    (tmp_path / ".other-staging-abc").mkdir()
    with staging_dir(out) as tmp:
        (tmp / "a.md").write_text("new")
        publish_entries(tmp, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other-staging-abc", "reports"]


def _report_like(folder: Path, tag: str) -> None:
    (folder / "plots").mkdir(parents=True)
    for name in ("ablation.md", "ablation.csv", "ablation.json", "plots/scores.png"):
        (folder / name).write_text(tag)


def test_publish_entries_is_all_or_nothing(tmp_path, monkeypatch):
    out = tmp_path / "reports"
    _report_like(out, "old")
    (out / ".gitignore").write_text("/ablation.md\n")
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 6:  # the old four are aside, the first new one is in: then the disk says no
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    with staging_dir(out) as tmp:
        _report_like(tmp, "new")
        monkeypatch.setattr(os, "replace", failing_replace)
        with pytest.raises(OSError, match="Input/output error"):
            publish_entries(tmp, out)
        monkeypatch.setattr(os, "replace", real_replace)
    assert {p.name: p.read_text() for p in out.rglob("*") if p.is_file()} == {
        "ablation.md": "old",
        "ablation.csv": "old",
        "ablation.json": "old",
        "scores.png": "old",
        ".gitignore": "/ablation.md\n",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]


PUBLISH_UNDER_SIGTERM = """
import os, signal, sys
from pathlib import Path
from pipeline.core import fileio

out, tmp = Path(sys.argv[1]), Path(sys.argv[2])
real_replace = os.replace

def replace(src, dst):
    if not getattr(replace, "signalled", False):
        replace.signalled = True
        os.kill(os.getpid(), signal.SIGTERM)  # the stage is cancelled as the publishing starts
    real_replace(src, dst)

os.replace = replace
fileio.publish_entries(tmp, out)
print("published")
"""


def test_a_sigterm_while_publishing_waits_until_all_entries_are_in(tmp_path):
    out, tmp = tmp_path / "reports", tmp_path / ".reports-staging-x"
    _report_like(out, "old")
    _report_like(tmp, "new")
    child = run_script(PUBLISH_UNDER_SIGTERM, [str(out), str(tmp)])
    assert child.returncode == -signal.SIGTERM  # it did die of the signal, after the moves
    assert {p.read_text() for p in out.rglob("*") if p.is_file()} == {"new"}


def test_a_resumed_state_has_the_bytes_of_the_state_never_interrupted(tmp_path):
    # A resumed run's state mixes what loading its checkpoint made (its config, its history) with what
    # torch makes afresh (the optimisers' state); the run that was never interrupted holds only the
    # latter, whose equal strings are one object. Their finished checkpoints are DVC outputs: equal
    # states must have equal bytes.
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.InstanceNorm2d(4, affine=True))
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))
    net(torch.randn(1, 3, 8, 8)).sum().backward()
    optimiser.step()

    def state(config):
        return {
            "config": config,
            "G": net.state_dict(),
            "optim_G": optimiser.state_dict(),
            "size": torch.Size([3]),
        }

    save_torch(tmp_path / "fresh" / "checkpoint.pt", state({"lr": 2e-4, "betas": [0.5, 0.999]}))
    loaded = torch.load(tmp_path / "fresh" / "checkpoint.pt", weights_only=False)
    save_torch(tmp_path / "resumed" / "checkpoint.pt", state(loaded["config"]))
    fresh, resumed = ((tmp_path / name / "checkpoint.pt").read_bytes() for name in ("fresh", "resumed"))
    assert fresh == resumed
    assert loaded["G"]._metadata == net.state_dict()._metadata and isinstance(loaded["size"], torch.Size)
