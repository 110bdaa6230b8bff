"""dvc.yaml's code deps follow the code: each stage depends on exactly its entry point's import closure.

The closure comes from the modules themselves (`tests.dvc_graph`, with `ast`), never from a list kept
by hand, and DVC itself is asked what an edit invalidates.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import dvc_graph
from tests.dvc_graph import ROOT, closure, drift, entry_module, stages
from tests.factories import copy_project


def test_every_stage_depends_on_exactly_its_import_closure():
    problems = drift()
    assert problems == {}, (
        f"dvc.yaml code deps differ from the stages' imports: {json.dumps(problems, indent=2)}\n"
        "Run `.venv/bin/python -m tests.dvc_graph --write` and commit dvc.yaml."
    )


def test_a_deleted_dep_is_caught(tmp_path):
    text = (ROOT / "dvc.yaml").read_text()
    broken = tmp_path / "dvc.yaml"
    # The evaluate stage's line naming the judge's segmenting module.
    start = text.index("\n  evaluate:\n")
    head, tail = text[:start], text[start:]
    broken.write_text(
        head + re.sub(r"^ +- pipeline/judge/segment\.py\n", "", tail, count=1, flags=re.MULTILINE)
    )
    problems = drift(broken)
    print(json.dumps(problems, indent=2))
    assert problems == {"evaluate": {"missing": ["pipeline/judge/segment.py"], "extra": []}}


def test_a_dep_outside_the_closure_is_caught(tmp_path):
    text = (ROOT / "dvc.yaml").read_text()
    broken = tmp_path / "dvc.yaml"
    broken.write_text(
        text.replace("      - stages/download.py\n", "      - stages/download.py\n      - pipeline/report\n")
    )
    assert drift(broken) == {"download": {"missing": [], "extra": ["pipeline/report"]}}


def test_no_stage_depends_on_the_recording_layer_though_entry_points_import_it():
    for name, stage in stages().items():
        recording = {p for p in closure(entry_module(stage)) if "tracking" in p.parts}
        assert not recording, f"{name} depends on the recording layer: {sorted(recording)}"
    # The exclusion is doing the work: train, evaluate and report hand their computing code a recorder.
    for stage in ("train", "evaluate", "report"):
        assert ROOT / "pipeline/tracking/__init__.py" in closure(f"stages.{stage}", recording=True)


def test_only_the_training_stages_run_the_objective():
    losses = ROOT / "pipeline/cyclegan/losses.py"
    assert [name for name, s in stages().items() if losses in closure(entry_module(s))] == ["train"]


def test_lazy_imports_count_and_the_report_never_retrains():
    train = closure(entry_module(stages()["train"]))
    assert ROOT / "pipeline/cyclegan/fast.py" in train  # imported inside make_steps
    report = closure(entry_module(stages()["report"]))
    training = {"trainer.py", "loop.py", "models.py", "steps.py", "fast.py", "losses.py"}
    assert not {p for p in report if "cyclegan" in p.parts and p.name in training}, "report imports training"
    figures = ROOT / "pipeline/report/figures.py"
    assert [name for name, s in stages().items() if figures in closure(entry_module(s))] == ["report"]


def test_write_round_trips_and_keeps_the_other_deps():
    text = (ROOT / "dvc.yaml").read_text()
    wanted = {name: dvc_graph.suggested_deps(closure(entry_module(s))) for name, s in stages().items()}
    assert dvc_graph.rewrite_code_deps(text, wanted) == text


# --- what DVC itself says an edit invalidates ------------------------------------------------------------


def _changed(project: Path) -> dict[str, set[str]]:
    """Stage -> the code deps `dvc status` reports modified."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    changed: dict[str, set[str]] = {}
    for stage, items in json.loads(result.stdout or "{}").items():
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict):
                deps = item.get("changed deps") or {}
                paths = {p for p, how in deps.items() if how == "modified" and dvc_graph.is_code(p)}
                changed.setdefault(stage, set()).update(paths)
    return changed


@pytest.mark.slow
@pytest.mark.parametrize(
    "module", ["pipeline/judge/segment.py", "pipeline/report/figures.py", "pipeline/cyclegan/losses.py"]
)
def test_dvc_status_lists_exactly_the_stages_whose_closure_holds_an_edited_module(tmp_path, module):
    project = copy_project(tmp_path / "project")
    before = _changed(project)
    with (project / module).open("a") as handle:
        handle.write("# an edit that changes nothing but the file's hash\n")
    after = _changed(project)
    listed = {stage for stage, paths in after.items() if paths - before.get(stage, set())}
    owners = {name for name, s in stages().items() if ROOT / module in closure(entry_module(s))}
    expected = {stage for stage in after | before if stage.split("@")[0] in owners}
    print(f"{module}: dvc status lists {sorted(listed)}")
    assert listed, (
        f"dvc status lists no stage for {module}: is dvc.lock older than dvc.yaml (run make repro)?"
    )
    assert listed == expected


def _status(project: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout or "{}")


# Neutral keys (OUTPUT_NEUTRAL_KEYS of each section's config) set to other values.
NEUTRAL_EDITS = {
    "train": {"experiment": "renamed-experiment", "checkpoint_every": 7},
    "judge": {"checkpoint_every": 7},
    "split": {"workers": 1},
    "evaluate": {"log_samples": 9},
    "data": {"retries": 1, "timeout_s": 5},
}


@pytest.mark.slow
def test_editing_the_recording_layer_or_a_neutral_key_makes_no_stage_stale(tmp_path):
    import yaml

    project = copy_project(tmp_path / "project")
    before = _status(project)
    for module in sorted((project / "pipeline" / "tracking").glob("*.py")):
        with module.open("a") as handle:
            handle.write("# an edit that changes nothing but the file's hash\n")
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, edits in NEUTRAL_EDITS.items():
        params[section].update(edits)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    after = _status(project)
    assert after == before, f"dvc status changed: {json.dumps(after, indent=1)[:3000]}"
    # ...and changing a key the outputs do depend on is seen at once.
    params["train"]["lr"] = 1e-3
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _status(project) != before


def test_every_neutral_key_of_the_code_is_exercised_above():
    from pipeline.cyclegan.config import TrainConfig
    from pipeline.data.download import DataConfig
    from pipeline.data.split import SplitConfig
    from pipeline.judge.train import JudgeConfig
    from pipeline.scoring.evaluate import EvaluateConfig

    declared = {
        "train": TrainConfig.OUTPUT_NEUTRAL_KEYS,
        "judge": JudgeConfig.OUTPUT_NEUTRAL_KEYS,
        "split": SplitConfig.OUTPUT_NEUTRAL_KEYS,
        "evaluate": EvaluateConfig.OUTPUT_NEUTRAL_KEYS,
        "data": DataConfig.OUTPUT_NEUTRAL_KEYS - {"backoff_s", "expected_counts", "image_size"},
    }
    assert {s: set(k) for s, k in NEUTRAL_EDITS.items()} == {s: set(k) for s, k in declared.items()}
