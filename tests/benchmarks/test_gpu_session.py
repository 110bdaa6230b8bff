"""The carried pack round-trips bit for bit; the session plans its ablation; the CPU rehearsal runs."""

import json
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.carry import pack, unpack
from benchmarks.gpu_session import plan_ablation
from pipeline.core.config import PROJECT_ROOT
from pipeline.data.domains import load_domain
from pipeline.data.manifest import read_manifest

pytestmark = pytest.mark.slow  # the GPU session's CPU rehearsal


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory):
    from benchmarks.gpu_session import make_tiny_pack

    work = tmp_path_factory.mktemp("session")
    return work, make_tiny_pack(work)


def test_pack_round_trips_the_split_and_the_judge(tiny_pack, tmp_path):
    work, pack_dir = tiny_pack
    source = work / "source" / "split"
    info = json.loads((pack_dir / "pack.json").read_text())
    assert info["counts"] == {
        "train_label/label": 12,
        "train_photo/photo": 12,
        "val/label": 6,
        "val/mask": 6,
        "val/photo": 6,
    }
    paths = unpack(pack_dir, tmp_path / "there")
    split = paths["split"]
    for subset in ("train_photo", "train_label"):
        # The training domains as the trainer would see them with load_size = the pack's train size.
        expected, ids = load_domain(source, subset, info["train_size"])
        got, got_ids = load_domain(split, subset, info["train_size"])
        assert got_ids == ids and torch.equal(got, expected)
    val = read_manifest(split, subset="val")
    assert len(val) == 18 and all(p.endswith(".png") for p in val["path"])
    for relative in val["path"]:
        assert np.array_equal(
            np.asarray(Image.open(split / relative)), np.asarray(Image.open(source / relative))
        )
    judge = torch.load(paths["judge"], weights_only=True)
    original = torch.load(work / "source" / "fcn" / "checkpoint.pt", weights_only=True)
    assert "optimizer" not in judge and judge["finished"]
    for key, value in original["net"].items():
        assert judge["net"][key].dtype == value.dtype
        assert torch.allclose(judge["net"][key].float(), value.float(), rtol=1e-3, atol=1e-6)


def test_pack_refuses_to_outgrow_the_carry_limit(tiny_pack, tmp_path, monkeypatch):
    import benchmarks.carry as carry
    from pipeline.core.errors import PipelineError

    work, _ = tiny_pack
    monkeypatch.setattr(carry, "CARRY_LIMIT_BYTES", 2 * 2**20)  # leaves nothing after the 2 MiB for code
    with pytest.raises(PipelineError, match="must stay under 64 MiB"):
        pack(work / "source" / "split", None, tmp_path / "p", site=False)


def bench_with(*modes):
    return {"modes": [dict(m) for m in modes]}


def test_plan_uses_the_fastest_measured_mode_and_one_epoch_count():
    bench = bench_with(
        {
            "key": "fast_graphs_b1",
            "fast": True,
            "batch": 1,
            "compile": False,
            "graphs": True,
            "pairs_per_s": 200.0,
        },
        {"key": "fast_b1", "fast": True, "batch": 1, "compile": False, "graphs": False, "pairs_per_s": 30.0},
        {
            "key": "fast_compile_graphs_b1",
            "fast": True,
            "batch": 1,
            "compile": True,
            "graphs": True,
            "error": "x",
        },
        {"key": "reference_b1", "fast": False, "batch": 1, "pairs_per_s": 22.0},
    )
    plan = plan_ablation(bench, batch=1, seconds=300, pairs_per_epoch=1488)
    assert plan["mode"] == "fast_graphs_b1" and plan["cuda_graphs"] and not plan["compile"]
    # (300 - 5 x 10 s) x 200 pairs/s x 0.85 / 5 variants = 8500 pairs each = 5 epochs of 1488.
    assert plan["epochs"] == 5 and (plan["epochs_constant"], plan["epochs_decay"]) == (3, 2)
    assert plan["max_steps"] is None


def test_plan_falls_back_to_steps_then_gives_up():
    bench = bench_with(
        {"key": "fast_b1", "fast": True, "batch": 1, "compile": False, "graphs": False, "pairs_per_s": 20.0}
    )
    short = plan_ablation(bench, batch=1, seconds=80, pairs_per_epoch=1488)
    assert (
        short["feasible"] and short["max_steps"] == 102 and short["epochs_constant"] == 1
    )  # 30 s x 20 x 0.85 / 5
    assert not plan_ablation(bench, batch=1, seconds=40, pairs_per_epoch=1488)["feasible"]
    assert not plan_ablation(bench, batch=8, seconds=400, pairs_per_epoch=1488)[
        "feasible"
    ]  # nothing measured at 8


def test_a_phase_past_its_deadline_is_stopped_with_what_it_started(tmp_path):
    from benchmarks.gpu_session import Session

    session = Session(tmp_path, tmp_path / "out", budget_s=60, tiny=True)
    marker = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    assert not session.phase("sleeper", ["-c", code], timeout=5)
    assert "deadline" in session.record["phases"]["sleeper"]["status"]
    grandchild = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # reaped by init shortly after the kill
            os.kill(grandchild, 0)
            __import__("time").sleep(0.1)


@pytest.mark.e2e
def test_tiny_gpu_session_runs_end_to_end_on_the_cpu(tmp_path):
    env = {**os.environ, "TINY": "1", "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work")}
    result = subprocess.run(
        ["bash", "benchmarks/gpu_session.sh"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "ablation.md",
        "cpu-tiny.json",
        "report.tar.gz",
        "session.json",
        "session.log",
    ]
    session = json.loads((out / "session.json").read_text())
    assert all(phase["ok"] for phase in session["phases"].values())
    assert set(session["ablation_seconds"]) == {
        "cyclegan",
        "gan_forward",
        "gan_backward",
        "gan_only",
        "cycle_only",
    }
    assert "CycleGAN" in (out / "ablation.md").read_text()
    bench = json.loads((out / "cpu-tiny.json").read_text())
    assert bench["reference_b1_pairs_per_s"] > 0
    assert set(bench["concurrent_b1"]) == {"a", "b"} and bench["concurrent_b1"]["b"]["2"] > 0
