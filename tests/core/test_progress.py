"""Progress bars: lively in a terminal, a refresh at most every ~30 s in a log, one factory for all."""

from __future__ import annotations

import ast
import dataclasses
import io
import os
import subprocess
import sys

import pytest

from pipeline.core.progress import LOG_INTERVAL_S, progress, refresh_interval
from pipeline.cyclegan.losses import LossSwitches
from tests.factories import ROOT, TINY_TRAIN, make_split, write_params


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_interval_follows_the_terminal_and_the_environment(monkeypatch):
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    assert refresh_interval(io.StringIO()) == LOG_INTERVAL_S
    assert refresh_interval(Terminal(), default=1.0) == 1.0
    bar = progress(range(3), file=io.StringIO(), mininterval=1.0)
    assert (bar.mininterval, bar.maxinterval) == (LOG_INTERVAL_S, LOG_INTERVAL_S)
    monkeypatch.setenv("TQDM_MININTERVAL", "15")  # what the Prefect flow sets for its stages
    assert refresh_interval(io.StringIO()) == refresh_interval(Terminal()) == 15.0
    monkeypatch.setenv("TQDM_MININTERVAL", "soon")  # malformed: the policy stands
    assert refresh_interval(io.StringIO()) == LOG_INTERVAL_S


def test_every_bar_in_the_pipeline_comes_from_the_factory():
    offenders = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        if path == ROOT / "pipeline" / "core" / "progress.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                )
                if any(name.split(".")[0] == "tqdm" for name in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], f"tqdm used directly (use pipeline.core.progress.progress): {offenders}"


@pytest.mark.slow
@pytest.mark.usefixtures("private_tracking_store")
def test_a_stage_writing_to_a_log_refreshes_its_bar_rarely(tmp_path):
    split = make_split(tmp_path / "split")
    cfg = dataclasses.replace(TINY_TRAIN, epochs_constant=10, epochs_decay=10, checkpoint_every=1000)
    params = write_params(tmp_path / "params.yaml", cfg, {"cyclegan": LossSwitches()})
    env = {key: value for key, value in os.environ.items() if not key.startswith("TQDM_")}
    result = subprocess.run(
        [
            *(sys.executable, "-m", "stages.train", "--params", str(params), "--variant", "cyclegan"),
            *("--split", str(split), "--out", str(tmp_path / "m")),
        ],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,  # stderr is a pipe, as under DVC or a Prefect worker
        text=True,
        timeout=120,
        check=True,
    )
    refreshes = result.stderr.count("cyclegan:")
    assert refreshes <= 2, result.stderr  # drawn when it starts and when it ends, nothing between
